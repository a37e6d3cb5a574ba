"""The cases on which fusebench's built-in methods and the original MedFuse models must agree.

Shared by ``make_original_outputs.py`` (run by hand with the original code importable; it
writes ``tests/fixtures/original_outputs.npz``) and ``tests/test_equivalence.py`` (run in CI
without the original): both build each fusebench model from the same seed and feed it the same
batches, so the fixture only needs the original's outputs.

What is compared, per case:

- ``eval``: logits (B, C) in eval mode on :func:`eval_batch`: varied lengths, padding past the
  longest stay, images present and absent (absent ones are zero images, as the harness and the
  original supply them).
- ``train``: logits of one train-mode forward (dropout masks drawn from the same seed); then one
  training step of the method's recipe on :func:`train_batch`, recorded at every
  ``optimizer.step()``: the parameters the optimizer steps (those with a gradient), a fixed
  random projection of each one's gradient, and the optimizer's lr, betas, eps and weight
  decay (the original's values are those of its published scripts); then eval logits on
  :func:`eval_batch` after the step, except for MMTM: after its CXR-loss step many ResNet
  weights whose gradient is at rounding level move by +-lr in one implementation and -+lr in
  the other (Adam's first step is lr * g / (|g| + eps); 2 x 5.3e-5 on conv weights, measured),
  so its outputs after the three steps, and the gradients of its third (joint) step, agree to
  1e-4-1e-2 only, varying with the thread count; its first two steps' gradients, every step's
  parameters and settings, and its train-mode heads are compared.

Cases left out on purpose (fusebench differs from the original by design; CONTRIBUTING.md,
"Recipe parity with the original"): train mode with absent images (the original feeds them to
the CNN, so they shift BatchNorm's batch statistics); ``early`` in train mode (fusebench keeps
the frozen encoders in eval mode); MMTM's and DAFT's time mean in a batch of varied lengths
(the original averages over the padding of the batch's longest stay, so a stay's prediction
depends on its batch-mates: the original is run on groups of equal length instead);
``late`` as committed (the original cannot run it: its forward returns no ``late_avg``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fusebench.registry import Registry, load_registry
from fusebench.specs import ModelConfig
from fusebench.steps import build_optimizers, training_step
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY, PHENOTYPING

__all__ = [
    "CASES",
    "IMAGE_SIZE",
    "MODEL_SEED",
    "Case",
    "build_fusebench_model",
    "eval_batch",
    "fusebench_outputs",
    "fusebench_registry",
    "gradient_projection",
    "length_groups",
    "recording_steps",
    "train_batch",
    "weights_fingerprint",
]

MODEL_SEED = 18
DROPOUT_SEED = 1002  # the seed of the original's fusion_main.py; any fixed value would do
IMAGE_SIZE = 32  # ResNet34 still ends on a 1x1 map; keeps the CI test within seconds
EHR_FEATURES = 76
# Pairs of equal length: MMTM's and DAFT's original time mean is defined per group of equal
# length (see the module docstring); every other original runs the whole batch at once.
EVAL_LENGTHS = (9, 9, 4, 4, 13, 13)
EVAL_HAS_CXR = (True, False, True, True, False, True)
EVAL_STEPS = 15  # padding past the longest stay, as a batch cut from a longer one may have
TRAIN_LENGTHS = (11, 3, 7, 7, 1, 9)
FIXED_LENGTH = 8  # MMTM and DAFT train on fixed-length series (the original's defined case)


@dataclass(frozen=True)
class Case:
    """One comparison.

    Attributes:
        name: key in the fixture, e.g. ``"daft-phenotyping"``.
        method: fusebench method name.
        task: fusebench task name.
        fusion_type: the original's ``--fusion_type``.
        original_args: further options of the original's published training script.
        train: whether the ``train`` comparison applies (see the module docstring).
        fixed_length_training: train on series of one length (MMTM, DAFT).
        compare_after_step: compare eval logits after the training step (see the module
            docstring for MMTM).
        gradient_steps: how many leading optimizer steps have their gradients compared.
    """

    name: str
    method: str
    task: str
    fusion_type: str
    original_args: Mapping[str, Any] = field(default_factory=dict)
    train: bool = True
    fixed_length_training: bool = False
    compare_after_step: bool = True
    gradient_steps: int = 1

    @property
    def num_classes(self) -> int:
        return {IN_HOSPITAL_MORTALITY.name: 1, PHENOTYPING.name: 25}[self.task]


IHM, PHENO = IN_HOSPITAL_MORTALITY.name, PHENOTYPING.name
# Learning rates are those of the original's scripts/{mortality,phenotyping}/train/*.sh; the
# test trains with fusebench's registered recipe, so a recipe that drifts fails it too.
CASES: tuple[Case, ...] = (
    Case("medfuse-phenotyping", "medfuse", PHENO, "lstm", {"lr": 7e-5}),
    Case("medfuse-ri-in-hospital-mortality", "medfuse-ri", IHM, "lstm", {"lr": 9.382e-5}),
    Case("early-in-hospital-mortality", "early", IHM, "early", {"lr": 9.515e-5}, train=False),
    Case("joint-phenotyping", "joint", PHENO, "joint", {"lr": 5.652e-5}),
    Case("late-phenotyping", "late", PHENO, "late_avg", {"lr": 1e-4}, train=False),
    Case("mmtm-phenotyping", "mmtm", PHENO, "mmtm", {"lr": 5.326e-5, "layer_after": 4},
         fixed_length_training=True, compare_after_step=False, gradient_steps=2),
    Case("daft-in-hospital-mortality", "daft", IHM, "daft", {"lr": 6.493e-5, "layer_after": 4},
         fixed_length_training=True),
    Case("daft-phenotyping", "daft", PHENO, "daft", {"lr": 6.493e-5, "layer_after": 3},
         fixed_length_training=True),
    Case("uni-ehr-phenotyping", "uni-ehr", PHENO, "uni_ehr", {"lr": 5.3985e-4}),
    Case("uni-cxr-in-hospital-mortality", "uni-cxr", IHM, "uni_cxr", {"lr": 2.951e-5}),
)


def fusebench_registry() -> Registry:
    """The installed plugins (a broken plugin of another kind, e.g. an executor, is skipped)."""
    return load_registry(strict=False)


def build_fusebench_model(case: Case, registry: Registry) -> nn.Module:
    """The case's fusebench model from :data:`MODEL_SEED`, with non-trivial BatchNorm statistics
    (drawn from the same seed) so that eval-mode normalisation is exercised too."""
    spec = registry.method(case.method)
    config = ModelConfig(task=case.task, num_classes=case.num_classes, image_size=IMAGE_SIZE,
                         hparams=spec.hparams_for(case.task))
    torch.manual_seed(MODEL_SEED)
    model = spec.build(config)
    generator = torch.Generator().manual_seed(MODEL_SEED)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
    return model


def _batch(lengths: tuple[int, ...], has_cxr: tuple[bool, ...], steps: int, num_classes: int,
           seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths_tensor = torch.tensor(lengths, dtype=torch.long)
    valid = torch.arange(steps)[None, :] < lengths_tensor[:, None]
    present = torch.tensor(has_cxr)
    ehr = torch.randn(len(lengths), steps, EHR_FEATURES, generator=generator) * valid[:, :, None]
    images = torch.randn(len(lengths), 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, 2, (len(lengths), num_classes), generator=generator).float()
    return {"ehr": ehr, "ehr_lengths": lengths_tensor, "cxr": images * present[:, None, None, None],
            "has_cxr": present, "y": labels}


def eval_batch(case: Case) -> dict[str, torch.Tensor]:
    """Six stays of lengths 4-13 padded to 15 steps, two without an image (zero images)."""
    return _batch(EVAL_LENGTHS, EVAL_HAS_CXR, EVAL_STEPS, case.num_classes, seed=1)


def train_batch(case: Case) -> dict[str, torch.Tensor]:
    """Six stays, all with an image; varied lengths unless the case trains on fixed ones."""
    lengths = (FIXED_LENGTH,) * 6 if case.fixed_length_training else TRAIN_LENGTHS
    return _batch(lengths, (True,) * 6, max(lengths), case.num_classes, seed=2)


def length_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each group of equal length, in order of first appearance."""
    return [torch.nonzero(lengths == value).squeeze(1)
            for value in dict.fromkeys(lengths.tolist())]


def weights_fingerprint(model: nn.Module) -> float:
    """Sum of |x| over the state dict: tells a changed seed stream from a changed computation."""
    return float(sum(t.double().abs().sum() for t in model.state_dict().values()
                     if t.is_floating_point()))


def fusebench_outputs(case: Case, registry: Registry) -> dict[str, torch.Tensor]:
    """The fusebench side of every comparison of ``case`` (keys as in the fixture)."""
    model = build_fusebench_model(case, registry)
    outputs = {"weights_fingerprint": torch.tensor(weights_fingerprint(model), dtype=torch.float64)}
    evaluation = eval_batch(case)
    model.eval()
    with torch.no_grad():
        outputs.update(_logits(case, model, evaluation, prefix="eval"))
    if not case.train:
        return outputs
    batch = train_batch(case)
    model.train()
    torch.manual_seed(DROPOUT_SEED)
    with torch.no_grad():
        outputs.update(_logits(case, model, batch, prefix="train"))
    spec = registry.method(case.method)
    optimizers = build_optimizers(registry, spec, model, spec.hparams_for(case.task))
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    torch.manual_seed(DROPOUT_SEED)
    with recording_steps(optimizers, names) as records:
        training_step(registry, spec, model, batch, optimizers)
    outputs.update(records)
    if case.compare_after_step:
        model.eval()
        with torch.no_grad():
            outputs.update(_logits(case, model, evaluation, prefix="after_step"))
    return outputs


def gradient_projection(name: str, gradient: torch.Tensor) -> float:
    """<gradient, R> for a fixed standard-normal R drawn from the parameter's (fusebench) name:
    one number that any change of the gradient moves, robust to rounding (a sum, not a sign)."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    direction = torch.randn(gradient.shape, generator=generator, dtype=torch.float64)
    return float((gradient.double() * direction).sum())


@contextmanager
def recording_steps(optimizers: Sequence[torch.optim.Optimizer],
                    names: Mapping[int, str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record, at each ``optimizer.step()`` in order, ``step<k>/names`` (fusebench names of the
    parameters stepped: those with a gradient, sorted), ``step<k>/grad_projection`` and
    ``step<k>/hparams`` (lr, beta1, beta2, eps, weight decay of every parameter group)."""
    records: dict[str, torch.Tensor] = {}

    def record(optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        step = sum(key.endswith("/names") for key in records)
        stepped = sorted(names[id(p)] for group in optimizer.param_groups
                         for p in group["params"] if p.grad is not None)
        by_name = {names[id(p)]: p for group in optimizer.param_groups for p in group["params"]}
        records[f"step{step}/names"] = stepped
        records[f"step{step}/grad_projection"] = torch.tensor(
            [gradient_projection(name, by_name[name].grad) for name in stepped],
            dtype=torch.float64)
        records[f"step{step}/hparams"] = torch.tensor(
            sorted({(g["lr"], *g["betas"], g["eps"], g["weight_decay"])
                    for g in optimizer.param_groups}), dtype=torch.float64)

    handles = [optimizer.register_step_pre_hook(record) for optimizer in optimizers]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _logits(case: Case, model: nn.Module, batch: Mapping[str, torch.Tensor],
            prefix: str) -> dict[str, torch.Tensor]:
    """Logits of the prediction head; MMTM adds its EHR and CXR heads, late its two models."""
    if case.method == "mmtm":
        heads = model.head_logits(batch)
        return {f"{prefix}/{head}": logits for head, logits in heads.items()}
    if case.method == "late":
        ehr_logits, cxr_logits, present = model.unimodal_logits(batch)
        return {f"{prefix}/ehr": ehr_logits, f"{prefix}/cxr_present": cxr_logits,
                f"{prefix}/probability": torch.sigmoid(model(batch))}
    return {f"{prefix}/logits": model(batch)}
