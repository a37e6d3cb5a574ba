"""Write tests/fixtures/drfuse_original_outputs.npz: the original DrFuse model's outputs on the
cases of ``drfuse_cases.py``, computed with the weights of the fusebench model built from the
same seed.

Not run by CI, and not part of the package. It imports the ORIGINAL code at run time from a
checkout of github.com/dorothy-yao/drfuse (read at commit a148979); nothing of it is copied
here. Its trainer imports ``lightning`` and ``torchmetrics``, which fusebench does not need, so
run it from a side environment that has them, outside the repository, e.g.::

    git clone https://github.com/dorothy-yao/drfuse /work/side/drfuse
    python -m venv /work/side/drfuse/venv     # with torch, torchvision as in .venv, plus
    /work/side/drfuse/venv/bin/pip install lightning torchmetrics
    /work/side/drfuse/venv/bin/python -m tests.equivalence.make_drfuse_outputs \\
        --drfuse /work/side/drfuse                  # from the repository root

(or set DRFUSE_SRC). For each task it builds ``DrFuseModel`` and ``DrFuseTrainer`` with the
defaults of the original's ``main.py``, copies every fusebench tensor into the model by name
(the rename rules are below; shapes must match), checks that the original's tensors left unset
(its unused ``domain_classifier``) do not change its outputs, runs it, and prints the largest
difference from fusebench for each output.

One change to the original is needed to run it at all: its CXR trunks (``cxr_model_shared``,
``cxr_model_spec``) are ``nn.Sequential(layer1..layer4)`` with an ``fc`` Linear appended, which
is applied to the 4-d feature map and raises a shape error; a forward pre-hook on each ``fc``
averages the map over its spatial dimensions first (ResNet's own global average pool), leaving
the original's modules and weights as they are.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.equivalence.drfuse_cases import (
    DROPOUT_SEED,
    LOSS_TERMS,
    TASKS,
    build_model,
    eval_batch,
    fusebench_outputs,
    paired_batch,
)
from tests.equivalence.fixture_script import parse_checkout, write_fixture

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "drfuse_original_outputs.npz"

# fusebench state-dict name -> the original's, first matching rule wins.
RENAMES = [
    (r"^ehr\.embedding\.", "ehr_model.emb."),
    (r"^ehr\.positions$", "ehr_model.pos_encoder.pe"),
    (r"^ehr\.trunk\.", "ehr_model.model_feat."),
    (r"^ehr\.branches\.shared\.", "ehr_model.model_shared."),
    (r"^ehr\.branches\.distinct\.", "ehr_model.model_distinct."),
    (r"^ehr_head\.", "ehr_model.fc_distinct."),
    (r"^cxr_stem\.", "cxr_model_feat."),
    (r"^cxr_shared\.layers\.", "cxr_model_shared."),
    (r"^cxr_shared\.fc\.", "cxr_model_shared.fc."),
    (r"^cxr_distinct\.layers\.", "cxr_model_spec."),
    (r"^cxr_distinct\.fc\.", "cxr_model_spec.fc."),
    (r"^shared_projection\.", "shared_project."),
    (r"^cxr_head\.", "cxr_model_linear."),
    (r"^shared_head\.", "fuse_model_shared."),
    (r"^attention\.", "attn_proj."),
    (r"^final_head\.", "final_pred_fc."),
]

# main.py's argparse defaults (the published recipe); the model and loss read these.
MAIN_DEFAULTS = {
    "hidden_size": 256, "dropout": 0.3, "ehr_n_head": 4, "ehr_n_layers": 1, "lr": 1e-4,
    "wd": 0.0, "batch_size": 16, "lambda_disentangle_shared": 1.0,
    "lambda_disentangle_ehr": 1.0, "lambda_disentangle_cxr": 1.0, "lambda_pred_ehr": 1.0,
    "lambda_pred_cxr": 1.0, "lambda_pred_shared": 1.0, "lambda_attn_aux": 1.0,
    "aug_missing_ratio": 0.0, "data_pair": "paired",
}


def _import_original(source: Path):
    sys.path.insert(0, str(source))
    from models.drfuse_trainer import DrFuseTrainer
    return DrFuseTrainer


def _pool_before_fc(model: nn.Module) -> None:
    """The one change (module docstring): global average pool before each CXR trunk's ``fc``."""
    for trunk in (model.cxr_model_shared, model.cxr_model_spec):
        trunk.fc.register_forward_pre_hook(lambda _module, args: (args[0].mean(dim=(2, 3)),))


def original_trainer(trainer_class, num_classes: int):
    """The original's trainer (and model) with main.py's defaults."""
    labels = [f"label{i}" for i in range(num_classes)]
    trainer = trainer_class(argparse.Namespace(**MAIN_DEFAULTS), labels)
    _pool_before_fc(trainer.model)
    return trainer


def copy_weights(source: dict[str, torch.Tensor], target: nn.Module) -> tuple[list[str], dict]:
    """Copy ``source`` (fusebench names) into ``target``.

    Returns:
        The target keys left unset, and the fusebench name of each target key set.
    """
    own = target.state_dict()
    unset, fusebench_names = set(own), {}
    for name, tensor in source.items():
        for pattern, replacement in RENAMES:
            if re.match(pattern, name):
                mapped = re.sub(pattern, replacement, name)
                break
        else:
            raise SystemExit(f"no rename rule for fusebench tensor {name}")
        if mapped not in own or own[mapped].shape != tensor.shape:
            raise SystemExit(f"{name} -> {mapped} does not fit the original "
                             f"({tuple(tensor.shape)} vs "
                             f"{tuple(own[mapped].shape) if mapped in own else 'absent'})")
        own[mapped].copy_(tensor)
        unset.discard(mapped)
        fusebench_names[mapped] = name
    return sorted(unset), fusebench_names


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The original's outputs as its collate passes a batch, and its heads' pre-sigmoid logits."""
    lengths = batch["ehr_lengths"].tolist()
    x = batch["ehr"][:, : max(lengths)]
    pairs = batch["has_cxr"].float()
    logits: dict[str, torch.Tensor] = {}
    heads = {"ehr": model.ehr_model.fc_distinct, "cxr": model.cxr_model_linear,
             "shared": model.fuse_model_shared, "final": model.final_pred_fc}
    handles = [module.register_forward_hook(
        lambda _m, _i, output, key=key: logits.__setitem__(key, output))
        for key, module in heads.items()]
    try:
        outputs = model(x, batch["cxr"], lengths, pairs, 1.0)
    finally:
        for handle in handles:
            handle.remove()
    logits["final"] = torch.diagonal(logits["final"], dim1=1, dim2=2)  # as its forward does
    return outputs, logits


def _loss_terms(trainer, outputs: dict, batch: dict[str, torch.Tensor]) -> dict:
    """The original trainer's loss terms (its own functions) under fusebench's names."""
    y, pairs = batch["y"], batch["has_cxr"].float()
    final, ehr, cxr, shared = trainer._compute_prediction_losses(outputs, y, pairs, log=False)
    terms = {"pred_final": final, "pred_ehr": ehr, "pred_cxr": cxr, "pred_shared": shared,
             "ehr_distinct": trainer._masked_abs_cos_sim(
                 outputs["feat_ehr_shared"], outputs["feat_ehr_distinct"],
                 torch.ones_like(pairs)),
             "cxr_distinct": trainer._masked_abs_cos_sim(
                 outputs["feat_cxr_shared"], outputs["feat_cxr_distinct"], pairs),
             "jsd": trainer.jsd(outputs["feat_ehr_shared"].sigmoid(),
                                outputs["feat_cxr_shared"].sigmoid(), pairs),
             "total": trainer._compute_and_log_loss(outputs, y, pairs, log=False)}
    weights = trainer.hparams
    others = (terms["pred_final"] + weights.lambda_pred_shared * shared
              + weights.lambda_pred_ehr * ehr + weights.lambda_pred_cxr * cxr
              + weights.lambda_disentangle_shared * terms["jsd"]
              + weights.lambda_disentangle_ehr * terms["ehr_distinct"]
              + weights.lambda_disentangle_cxr * terms["cxr_distinct"])
    terms["attn_ranking"] = (terms["total"] - others) / weights.lambda_attn_aux
    return terms


def original_outputs(task: str, trainer_class) -> dict[str, torch.Tensor]:
    """Every compared value of ``task`` (see drfuse_cases.py) computed by the original code."""
    from tests.equivalence.cases import gradient_projection

    ours = build_model(task)
    trainer = original_trainer(trainer_class, TASKS[task])
    model = trainer.model
    unset, fusebench_names = copy_weights(ours.state_dict(), model)
    batch = eval_batch(task)
    present = batch["has_cxr"]
    model.eval()
    with torch.no_grad():
        outputs, logits = _forward(model, batch)
        for key in unset:  # the tensors left unset must not matter
            model.state_dict()[key].add_(torch.randn_like(model.state_dict()[key]))
        _, again = _forward(model, batch)
        if any(not torch.equal(logits[k], again[k]) for k in logits):
            raise SystemExit(f"original tensors left unset change its outputs: {unset}")
        terms = _loss_terms(trainer, outputs, batch)
    print(f"  {len(fusebench_names)} tensors copied; left unset: {', '.join(unset)}")
    result = {
        "eval/final": logits["final"], "eval/ehr": logits["ehr"], "eval/shared": logits["shared"],
        "eval/attention": outputs["attn_weights"], "eval/cxr_present": logits["cxr"][present],
        "eval/feat_ehr_shared": outputs["feat_ehr_shared"],
        "eval/feat_ehr_distinct": outputs["feat_ehr_distinct"],
        "eval/feat_cxr_shared_present": outputs["feat_cxr_shared"][present],
        "eval/feat_cxr_distinct_present": outputs["feat_cxr_distinct"][present],
    }
    result.update({f"eval_loss/{term}": terms[term] for term in LOSS_TERMS})

    batch = paired_batch(task)
    model.train()
    torch.manual_seed(DROPOUT_SEED)
    outputs, logits = _forward(model, batch)
    terms = _loss_terms(trainer, outputs, batch)
    model.zero_grad(set_to_none=True)
    terms["total"].backward()
    result["paired/final"] = logits["final"].detach()
    result.update({f"paired_loss/{term}": terms[term].detach()
                   for term in (*LOSS_TERMS, "jsd", "total")})
    original_parameters = dict(model.named_parameters())
    by_fusebench_name = {name: original_parameters[original]
                         for original, name in fusebench_names.items()
                         if original in original_parameters}
    result["paired/grad_projection"] = torch.tensor(
        [0.0 if by_fusebench_name[name].grad is None
         else gradient_projection(name, by_fusebench_name[name].grad)
         for name, _ in ours.named_parameters()], dtype=torch.float64)
    return result


def main() -> None:
    checkout, out = parse_checkout(__doc__.splitlines()[0], "drfuse", "DRFUSE_SRC",
                                   "github.com/dorothy-yao/drfuse", "models/drfuse.py", FIXTURE)
    trainer_class = _import_original(checkout)
    arrays: dict[str, np.ndarray] = {}
    for task in TASKS:
        print(task)
        ours = fusebench_outputs(task)
        theirs = original_outputs(task, trainer_class)
        for key, value in theirs.items():
            arrays[f"{task}/{key}"] = value.detach().double().numpy()
            diff = (ours[key].double() - value.detach().double()).abs().max().item()
            scale = value.detach().abs().max().item()
            print(f"  {key:<34} max |fusebench - original| = {diff:.2e} (max |original| "
                  f"{scale:.3g})")
    write_fixture(out, arrays)


if __name__ == "__main__":
    main()
