"""The cases on which fusebench's ``drfuse`` and the original DrFuse model must agree.

Shared by ``make_drfuse_outputs.py`` (run by hand with the original code importable; it writes
``tests/fixtures/drfuse_original_outputs.npz``) and ``tests/test_drfuse.py`` (run in CI without
the original): both build the fusebench model from the same seed and feed it the same batches,
so the fixture only needs the original's outputs.

Per task (in-hospital mortality, C = 1; phenotyping, C = 25), what is compared:

- ``eval/*`` on :func:`eval_batch` (eval mode; varied lengths, padding past the longest stay,
  images present and absent): the final logits, the EHR and shared heads' logits, the attention
  weights (B, C, 3) and the EHR features for every stay; the CXR head's logits and the CXR
  features for the stays with an image (the original computes them from the zero placeholder
  for the others and never uses them in a prediction).
- ``eval_loss/*`` on the same batch: the loss terms of the original's trainer
  (``_compute_prediction_losses``, ``_masked_abs_cos_sim``) and its attention ranking term
  (its total less the others). Not the Jensen-Shannon term: the original sums it over the stays
  without an image too, fusebench over those with one (a defect not copied).
- ``paired/*`` on :func:`paired_batch` (every stay with an image, train mode, dropout masks
  from one seed): the final logits, every loss term including the Jensen-Shannon one and the
  total, and a fixed random projection of the total's gradient for every parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from fusebench.plugins.drfuse import DrFuse, drfuse_losses
from fusebench.registry import load_registry
from fusebench.specs import ModelConfig
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY, PHENOTYPING
from tests.equivalence.cases import gradient_projection

__all__ = [
    "DROPOUT_SEED",
    "IMAGE_SIZE",
    "LOSS_TERMS",
    "MODEL_SEED",
    "TASKS",
    "build_model",
    "eval_batch",
    "fusebench_outputs",
    "paired_batch",
]

MODEL_SEED = 19
DROPOUT_SEED = 0  # the original's main.py seeds everything with 0
IMAGE_SIZE = 32  # ResNet-50 trunks still end on a 2x2 map (no max-pool after the stem)
EHR_FEATURES = 76
TASKS = {task.name: task.num_classes for task in (IN_HOSPITAL_MORTALITY, PHENOTYPING)}
EVAL_LENGTHS = (9, 48, 4, 1, 13, 30)
EVAL_HAS_CXR = (True, False, True, True, False, True)
EVAL_STEPS = 50  # padding past the longest stay, as a batch cut from a longer one may have
PAIRED_LENGTHS = (12, 5, 20, 7)
# the original trainer's names of the terms compared (fusebench's drfuse_losses keys)
LOSS_TERMS = ("pred_final", "pred_ehr", "pred_cxr", "pred_shared", "ehr_distinct",
              "cxr_distinct", "attn_ranking")


def build_model(task: str) -> DrFuse:
    """The fusebench model with the method's recipe for ``task``, built from MODEL_SEED."""
    spec = load_registry().method("drfuse")
    torch.manual_seed(MODEL_SEED)
    config = ModelConfig(task=task, num_classes=TASKS[task], image_size=IMAGE_SIZE,
                         hparams=spec.hparams_for(task))
    return spec.build(config)


def _batch(lengths: tuple[int, ...], has_cxr: tuple[bool, ...], steps: int, num_classes: int,
           seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = len(lengths)
    lengths_tensor = torch.tensor(lengths, dtype=torch.long)
    valid = torch.arange(steps)[None, :] < lengths_tensor[:, None]
    present = torch.tensor(has_cxr)
    ehr = torch.randn(size, steps, EHR_FEATURES, generator=generator) * valid[:, :, None]
    cxr = torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return {"ehr": ehr, "ehr_lengths": lengths_tensor,
            "cxr": cxr * present[:, None, None, None], "has_cxr": present,
            "y": torch.randint(0, 2, (size, num_classes), generator=generator).float()}


def eval_batch(task: str) -> dict[str, torch.Tensor]:
    """Varied lengths, padding past the longest stay, images present and absent."""
    return _batch(EVAL_LENGTHS, EVAL_HAS_CXR, EVAL_STEPS, TASKS[task], seed=1)


def paired_batch(task: str) -> dict[str, torch.Tensor]:
    """Every stay with an image (train-mode BatchNorm then sees the same images in both)."""
    return _batch(PAIRED_LENGTHS, (True,) * len(PAIRED_LENGTHS), max(PAIRED_LENGTHS),
                  TASKS[task], seed=2)


def fusebench_outputs(task: str) -> dict[str, torch.Tensor]:
    """Every compared value (see the module docstring) computed by fusebench."""
    model = build_model(task)
    result: dict[str, torch.Tensor] = {}
    batch = eval_batch(task)
    present = batch["has_cxr"]
    model.eval()
    with torch.no_grad():
        outputs = model.outputs(batch)
        losses = drfuse_losses(outputs, batch["y"], model.loss_weights)
    result.update({
        "eval/final": outputs["final"], "eval/ehr": outputs["ehr"],
        "eval/shared": outputs["shared"], "eval/attention": outputs["attention"],
        "eval/cxr_present": outputs["cxr"][present],
        "eval/feat_ehr_shared": outputs["feat_ehr_shared"],
        "eval/feat_ehr_distinct": outputs["feat_ehr_distinct"],
        "eval/feat_cxr_shared_present": outputs["feat_cxr_shared"][present],
        "eval/feat_cxr_distinct_present": outputs["feat_cxr_distinct"][present],
    })
    result.update({f"eval_loss/{term}": losses[term] for term in LOSS_TERMS})

    batch = paired_batch(task)
    model.train()
    torch.manual_seed(DROPOUT_SEED)
    outputs = model.outputs(batch)
    losses = drfuse_losses(outputs, batch["y"], model.loss_weights)
    losses["total"].backward()
    result["paired/final"] = outputs["final"].detach()
    result.update({f"paired_loss/{term}": losses[term].detach()
                   for term in (*LOSS_TERMS, "jsd", "total")})
    result["paired/grad_projection"] = _projections(model)
    return result


def _projections(model: nn.Module) -> torch.Tensor:
    """The gradient projection of every parameter, in ``named_parameters`` order (fusebench
    names; a parameter without a gradient counts 0)."""
    return torch.tensor([0.0 if p.grad is None else gradient_projection(name, p.grad)
                         for name, p in model.named_parameters()], dtype=torch.float64)
