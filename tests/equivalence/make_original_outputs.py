"""Write tests/fixtures/original_outputs.npz: the original MedFuse models' outputs on the cases of
``cases.py``, computed with the weights of the fusebench models built from the same seed.

Not run by CI, and not part of the package. It imports the ORIGINAL code at run time from a
checkout of github.com/nyuad-cai/MedFuse (read at commit 3f8b54e); nothing of it is copied here::

    git clone https://github.com/nyuad-cai/MedFuse /work/side/MedFuse
    .venv/bin/python tests/equivalence/make_original_outputs.py --medfuse /work/side/MedFuse

(or set MEDFUSE_SRC). The original's models need only torch and torchvision, so this project's
environment serves. For each case it builds the original model as the original's trainers do
(``LSTM`` + ``CXRModels`` + ``Fusion``/``FusionMMTM``/``FusionDAFT`` with the options of the
published training script), copies every fusebench tensor into it by name (each rename rule is
listed below, shapes must match), checks that the original's parameters left unset do not
change its outputs (they belong to modules the forward does not use), runs it, and prints the
largest difference from fusebench for each output.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.equivalence.cases import (
    CASES,
    DROPOUT_SEED,
    Case,
    build_fusebench_model,
    eval_batch,
    fusebench_outputs,
    fusebench_registry,
    length_groups,
    recording_steps,
    train_batch,
)
from tests.equivalence.fixture_script import parse_checkout, write_fixture

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "original_outputs.npz"

# fusebench state-dict name -> the original's, first matching rule wins.
_COMMON = [(r"^ehr\.layers\.(\d+)\.", r"ehr_model.layer\1."),
           (r"^cxr\.", "cxr_model.vision_backbone.")]
RENAMES: dict[str, list[tuple[str, str]]] = {
    "lstm": [*_COMMON, (r"^projection\.", "projection."), (r"^fusion\.", "lstm_fusion_layer."),
             (r"^classifier\.", "lstm_fused_cls.0.")],
    "early": [*_COMMON, (r"^projection\.", "projection."), (r"^classifier\.", "fused_cls.0.")],
    "joint": [*_COMMON, (r"^projection\.", "projection."), (r"^classifier\.", "fused_cls.0.")],
    "uni_ehr": [*_COMMON, (r"^head\.", "ehr_model.dense_layer.")],
    "uni_cxr": [*_COMMON, (r"^head\.", "cxr_model.classifier.0.")],
    "mmtm": [*_COMMON, (r"^mmtm\.fc_ehr\.", "mmtm{layer_after}.fc_skeleton."),
             (r"^mmtm\.", "mmtm{layer_after}."), (r"^ehr_head\.", "ehr_model.dense_layer."),
             (r"^cxr_head\.", "cxr_model.classifier.0."), (r"^projection\.", "projection."),
             (r"^joint_head\.", "joint_cls.0.")],
    "daft": [*_COMMON, (r"^daft\.aux\.0\.", "daft_layer_{layer_after}.aux.aux_base."),
             (r"^daft\.aux\.2\.", "daft_layer_{layer_after}.aux.aux_out."),
             (r"^head\.", "ehr_model.dense_layer.")],
}


def _import_original(source: Path):
    sys.path.insert(0, str(source))
    from arguments import args_parser
    from models.cxr_models import CXRModels
    from models.ehr_models import LSTM
    from models.fusion import Fusion
    from models.fusion_daft import FusionDAFT
    from models.fusion_mmtm import FusionMMTM
    return args_parser, LSTM, CXRModels, {"mmtm": FusionMMTM, "daft": FusionDAFT}, Fusion


def original_model(case: Case, fusion_type: str, original) -> tuple[nn.Module, argparse.Namespace]:
    """The original's model for ``case`` as its trainers build it, with the script's options."""
    args_parser, lstm_class, cxr_class, special, fusion_class = original
    options = ["--dim", "256", "--dropout", "0.3", "--layers", "2",
               "--vision-backbone", "resnet34", "--num_classes", str(case.num_classes),
               "--vision_num_classes", str(case.num_classes), "--fusion_type", fusion_type,
               "--task", case.task, "--labels_set",
               "mortality" if case.num_classes == 1 else "pheno"]
    for key, value in case.original_args.items():
        options += [f"--{key}", str(value)]
    args = args_parser().parse_args(options)
    ehr_model = lstm_class(input_dim=76, num_classes=args.num_classes, hidden_dim=args.dim,
                           dropout=args.dropout, layers=args.layers)
    cxr_model = cxr_class(args, "cpu")
    model = special.get(fusion_type, fusion_class)(args, ehr_model, cxr_model)
    # trainers/fusion_trainer.py init_fusion_method: which encoders are frozen
    frozen = {"uni_ehr": [model.cxr_model], "uni_cxr": [model.ehr_model],
              "early": [model.cxr_model, model.ehr_model]}.get(fusion_type, [])
    for module in frozen:
        module.requires_grad_(False)
    return model, args


def copy_weights(source: dict[str, torch.Tensor], target: nn.Module, fusion_type: str,
                 layer_after: int) -> tuple[list[str], dict[str, str]]:
    """Copy ``source`` (fusebench names) into ``target``.

    Returns:
        The target keys left unset, and the fusebench name of each target key set.
    """
    own = target.state_dict()
    unset = set(own)
    fusebench_names = {}
    for name, tensor in source.items():
        for pattern, replacement in RENAMES[fusion_type]:
            if re.match(pattern, name):
                mapped = re.sub(pattern, replacement.format(layer_after=layer_after), name)
                break
        else:
            raise SystemExit(f"{fusion_type}: no rename rule for fusebench tensor {name}")
        if mapped not in own or own[mapped].shape != tensor.shape:
            raise SystemExit(f"{fusion_type}: {name} -> {mapped} does not fit the original "
                             f"({tuple(tensor.shape)} vs {tuple(own[mapped].shape) if mapped in own else 'absent'})")
        own[mapped].copy_(tensor)
        unset.discard(mapped)
        fusebench_names[mapped] = name
    return sorted(unset), fusebench_names


def original_logits(model: nn.Module, fusion_type: str, batch: dict[str, torch.Tensor],
                    per_length_group: bool) -> dict[str, torch.Tensor]:
    """The original's pre-sigmoid outputs on ``batch`` as its collate and trainers pass it."""
    groups = (length_groups(batch["ehr_lengths"]) if per_length_group
              else [torch.arange(len(batch["ehr_lengths"]))])
    parts: list[dict[str, torch.Tensor]] = []
    for rows in groups:
        lengths = batch["ehr_lengths"][rows].tolist()
        x = batch["ehr"][rows, : max(lengths)]
        img = batch["cxr"][rows]
        pairs = batch["has_cxr"][rows].tolist()
        parts.append(_forward(model, fusion_type, x, lengths, img, pairs))
    order = torch.argsort(torch.cat(groups))
    return {key: torch.cat([part[key] for part in parts])[order] for key in parts[0]}


def _forward(model, fusion_type, x, lengths, img, pairs) -> dict[str, torch.Tensor]:
    if fusion_type == "mmtm":
        output = model(x, lengths, img)
        return {"ehr": output["ehr_only_scores"], "cxr": output["cxr_only_scores"],
                "joint": output["joint_scores"]}
    if fusion_type == "daft":
        return {"logits": model(x, lengths, img)["daft_fusion_scores"]}
    head = {"lstm": lambda: model.lstm_fused_cls[0], "early": lambda: model.fused_cls[0],
            "joint": lambda: model.fused_cls[0], "uni_ehr": lambda: model.ehr_model.dense_layer,
            "uni_cxr": lambda: model.cxr_model.classifier[0]}[fusion_type]()
    store: dict[str, torch.Tensor] = {}
    handle = head.register_forward_hook(lambda _m, _i, out: store.__setitem__("logits", out))
    try:
        model(x, lengths, img, pairs)
    finally:
        handle.remove()
    return {"logits": store["logits"]}


def train_step(model: nn.Module, fusion_type: str, args: argparse.Namespace,
               batch: dict[str, torch.Tensor], fusebench_names: dict[str, str]) -> dict:
    """One step of the original's trainer on ``batch`` (BCELoss on sigmoid outputs, Adam with
    betas (0.9, args.beta_1)); MMTM's three steps with the EHR optimizer wired as its paper
    intends (EHR model and the MMTM module in use, not the CNN and the unused mmtm0)."""
    bce = nn.BCELoss()
    y = batch["y"].squeeze(1) if batch["y"].shape[1] == 1 else batch["y"]
    lengths = batch["ehr_lengths"].tolist()
    x, img, pairs = batch["ehr"][:, : max(lengths)], batch["cxr"], batch["has_cxr"].tolist()

    optimizers = []

    def adam(parameters):
        optimizers.append(torch.optim.Adam(parameters, args.lr, betas=(0.9, args.beta_1)))
        return optimizers[-1]

    names = {id(parameter): fusebench_names.get(name, f"original-only:{name}")
             for name, parameter in model.named_parameters()}

    if fusion_type == "mmtm":
        in_use = getattr(model, f"mmtm{args.layer_after}")
        steps = [("ehr_only", adam([{"params": model.ehr_model.parameters()},
                                    {"params": in_use.parameters()}])),
                 ("cxr_only", adam([{"params": model.cxr_model.parameters()},
                                    {"params": in_use.parameters()}])),
                 ("joint", adam(model.parameters()))]
        with recording_steps(optimizers, names) as records:
            for key, optimizer in steps:  # trainers/mmtm_trainer.py train_epoch and step
                loss = bce(model(x, lengths, img)[key].squeeze(), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return records
    optimizer = adam(model.parameters())  # fusion_trainer.py / daft_trainer.py
    with recording_steps(optimizers, names) as records:
        output = model(x, lengths, img) if fusion_type == "daft" else model(x, lengths, img, pairs)
        key = {"daft": "daft_fusion"}.get(fusion_type, fusion_type)
        loss = bce(output[key].squeeze(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return records


def original_outputs(case: Case, original, registry) -> dict[str, torch.Tensor]:
    """Every output of ``case`` computed by the original code."""
    weights = build_fusebench_model(case, registry).state_dict()
    per_group = case.fusion_type in ("mmtm", "daft")
    evaluation = eval_batch(case)
    if case.fusion_type == "late_avg":  # late fusion = the two uni-modal originals, averaged
        outputs = {}
        for part, fusion_type in (("uni_ehr", "uni_ehr"), ("uni_cxr", "uni_cxr")):
            model, _ = original_model(case, fusion_type, original)
            prefix = f"{part}."
            own = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            _load_and_check(model, own, fusion_type, 0, evaluation)
            model.eval()
            with torch.no_grad():
                outputs[part] = original_logits(model, fusion_type, evaluation, False)["logits"]
        present = evaluation["has_cxr"]
        probability = torch.sigmoid(outputs["uni_ehr"])
        probability[present] = (probability[present] + torch.sigmoid(outputs["uni_cxr"][present])) / 2
        return {"eval/ehr": outputs["uni_ehr"], "eval/cxr_present": outputs["uni_cxr"][present],
                "eval/probability": probability}
    model, args = original_model(case, case.fusion_type, original)
    layer_after = int(case.original_args.get("layer_after", 0))
    fusebench_names = _load_and_check(model, weights, case.fusion_type, layer_after, evaluation)
    result = {}
    model.eval()
    with torch.no_grad():
        result.update(_prefixed("eval", original_logits(model, case.fusion_type, evaluation,
                                                        per_group)))
    if case.train:
        batch = train_batch(case)
        model.train()
        torch.manual_seed(DROPOUT_SEED)
        with torch.no_grad():
            result.update(_prefixed("train", original_logits(model, case.fusion_type, batch,
                                                             False)))
        torch.manual_seed(DROPOUT_SEED)
        result.update(train_step(model, case.fusion_type, args, batch, fusebench_names))
        if case.compare_after_step:
            model.eval()
            with torch.no_grad():
                result.update(_prefixed("after_step", original_logits(
                    model, case.fusion_type, evaluation, per_group)))
    return result


def _prefixed(prefix: str, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{key}": value for key, value in outputs.items()}


def _load_and_check(model: nn.Module, weights: dict[str, torch.Tensor], fusion_type: str,
                    layer_after: int, batch: dict[str, torch.Tensor]) -> dict[str, str]:
    """Load ``weights``; fail unless the parameters left unset leave the eval outputs unchanged.

    Returns:
        The fusebench name of each original tensor set.
    """
    unset, fusebench_names = copy_weights(weights, model, fusion_type, layer_after)
    per_group = fusion_type in ("mmtm", "daft")
    model.eval()
    with torch.no_grad():
        before = original_logits(model, fusion_type, batch, per_group)
        state = model.state_dict()
        for key in unset:
            if state[key].is_floating_point():
                state[key].add_(torch.randn_like(state[key]))
        after = original_logits(model, fusion_type, batch, per_group)
    for key, value in before.items():
        if not torch.equal(value, after[key]):
            raise SystemExit(f"{fusion_type}: original tensors left unset change output {key}: "
                             f"{', '.join(unset)}")
    print(f"  {fusion_type}: {len(weights)} tensors copied; {len(unset)} unused original "
          f"tensors left unset ({', '.join(sorted({k.split('.')[0] + '.' + k.split('.')[1] for k in unset}))})")
    return fusebench_names


def main() -> None:
    checkout, out = parse_checkout(__doc__.splitlines()[0], "medfuse", "MEDFUSE_SRC",
                                   "github.com/nyuad-cai/MedFuse", "models/fusion.py", FIXTURE)
    original = _import_original(checkout)
    registry = fusebench_registry()
    arrays: dict[str, np.ndarray] = {}
    for case in CASES:
        print(case.name)
        ours = fusebench_outputs(case, registry)
        arrays[f"{case.name}/weights_fingerprint"] = ours.pop("weights_fingerprint").numpy()
        theirs = original_outputs(case, original, registry)
        for key, value in theirs.items():
            if key.endswith("/names"):
                arrays[f"{case.name}/{key}"] = np.array(value, dtype=str)
                same = "same" if value == ours[key] else f"DIFFERENT from fusebench's {ours[key]}"
                print(f"  {key:<22} {len(value)} parameters stepped, {same}")
                continue
            arrays[f"{case.name}/{key}"] = value.detach().numpy()
            if ours[key].shape != value.shape:
                print(f"  {key:<22} shape {tuple(value.shape)}, fusebench {tuple(ours[key].shape)}")
                continue
            diff = (ours[key] - value).abs().max().item()
            scale = max(1.0, value.abs().max().item())
            print(f"  {key:<22} max |fusebench - original| = {diff:.2e} (max |original| "
                  f"{scale:.2g})")
    write_fixture(out, arrays)


if __name__ == "__main__":
    main()
