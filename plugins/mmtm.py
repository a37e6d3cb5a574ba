"""MMTM: a Multimodal Transfer Module between EHR LSTM layers 0 and 1 and after a ResNet stage.

Squeeze = concat[GAP of the CNN map, time-mean of the EHR sequence over each stay's valid steps]
-> Linear(., int(2 * dim / ratio)) -> ReLU -> two Linear heads -> sigmoid gates rescaling the CNN
channels and the EHR features at every step. Three heads (EHR, CXR, joint); training runs three
steps per batch, one per loss, each with its own optimizer, as in the original trainer:

- EHR loss -> EHR encoder + EHR head + MMTM module (the original wired this optimizer to the
  CNN and MMTM module instead: a defect not copied),
- CXR loss -> CNN + CXR head + MMTM module,
- joint loss -> every trainable parameter.

``forward`` returns the joint head's logits, or with ``hparams["output"] = "late_average"`` the
logit of the mean of the EHR and CXR probabilities. Stays without a chest X-ray are scored on
the zero image the harness supplies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits

from fusebench.errors import FusebenchError
from fusebench.hookspecs import hookimpl
from fusebench.plugins.encoders import (
    CXR_STAGE,
    EHR_STAGE,
    CXREncoder,
    EHREncoder,
    init_medfuse_,
    load_encoder_state,
    medfuse_2022_hparams,
)
from fusebench.specs import MethodSpec, ModelConfig
from fusebench.steps import adam

__all__ = [
    "MMTM",
    "MMTMFusion",
    "configure_optimizers",
    "fusebench_register_methods",
    "masked_time_mean",
    "training_step",
]

REFERENCE = "Joze et al. MMTM: Multimodal Transfer Module for CNN Fusion. CVPR 2020; as in MedFuse"
HEADS = ("ehr", "cxr", "joint")
OUTPUTS = ("joint", "late_average")


def masked_time_mean(sequence: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the first ``lengths[i]`` steps of each padded (B, T, D) sequence."""
    steps = torch.arange(sequence.shape[1], device=sequence.device)
    mask = (steps[None, :] < lengths.to(sequence.device)[:, None]).to(sequence.dtype)
    return (sequence * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)


class MMTM(nn.Module):
    """Squeeze-and-excitation across a CNN map (B, Cv, h, w) and an EHR sequence (B, T, Ce)."""

    def __init__(self, visual_dim: int, ehr_dim: int, ratio: float = 4) -> None:
        super().__init__()
        joint_dim = visual_dim + ehr_dim
        bottleneck = int(2 * joint_dim / ratio)
        self.fc_squeeze = nn.Linear(joint_dim, bottleneck)
        self.fc_visual = nn.Linear(bottleneck, visual_dim)
        self.fc_ehr = nn.Linear(bottleneck, ehr_dim)

    def forward(
        self, visual: torch.Tensor, ehr: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        squeeze = torch.cat([visual.mean(dim=(2, 3)), masked_time_mean(ehr, lengths)], dim=1)
        excitation = torch.relu(self.fc_squeeze(squeeze))
        visual_gate = torch.sigmoid(self.fc_visual(excitation))[:, :, None, None]
        ehr_gate = torch.sigmoid(self.fc_ehr(excitation))[:, None, :]
        return visual * visual_gate, ehr * ehr_gate


class MMTMFusion(nn.Module):
    """EHR encoder and ResNet34 exchanging information through one MMTM after ResNet layer 4.

    Hyper-parameters read from ``config.hparams``: ``mmtm_ratio`` (default 4) and ``output``
    (``"joint"``, the default, or ``"late_average"``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.output = str(config.hparams.get("output", "joint"))
        if self.output not in OUTPUTS:
            raise FusebenchError(f"mmtm: hparam output must be one of {', '.join(OUTPUTS)}, "
                                 f"got {self.output!r}")
        self.ehr = EHREncoder.from_config(config)
        self.cxr = CXREncoder(weights_file=config.cxr_weights)
        self.mmtm = MMTM(self.cxr.feature_dim, self.ehr.feature_dim,
                         float(config.hparams.get("mmtm_ratio", 4)))
        self.ehr_head = nn.Linear(self.ehr.feature_dim, config.num_classes)
        init_medfuse_(self.ehr_head)  # it is the original's EHR model's dense layer
        self.cxr_head = nn.Linear(self.cxr.feature_dim, config.num_classes)
        self.projection = nn.Linear(self.ehr.feature_dim, self.cxr.feature_dim)
        self.joint_head = nn.Linear(2 * self.cxr.feature_dim, config.num_classes)
        self.init_info = {"ehr": load_encoder_state(self.ehr, config, EHR_STAGE),
                          "cxr": load_encoder_state(self.cxr, config, CXR_STAGE)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters stepped after each head's loss: ``ehr``, ``cxr``, ``joint``."""
        modules = {
            "ehr": (self.ehr, self.ehr_head, self.mmtm),
            "cxr": (self.cxr, self.cxr_head, self.mmtm),
            "joint": (self,),
        }
        return {head: [p for module in group for p in module.parameters() if p.requires_grad]
                for head, group in modules.items()}

    def head_logits(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits (B, C) of the ``ehr``, ``cxr`` and ``joint`` heads."""
        lengths = batch["ehr_lengths"]
        sequence = self.ehr.sequence(batch["ehr"], lengths, stop=1)
        visual, sequence = self.mmtm(self.cxr.feature_map(batch["cxr"]), sequence, lengths)
        cxr_feature = visual.mean(dim=(2, 3))
        ehr_feature = self.ehr.features_from(sequence, lengths, start=1)
        joint = torch.cat([self.projection(ehr_feature), cxr_feature], dim=1)
        return {"ehr": self.ehr_head(ehr_feature), "cxr": self.cxr_head(cxr_feature),
                "joint": self.joint_head(joint)}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self.head_logits(batch)
        if self.output == "joint":
            return logits["joint"]
        mean = (torch.sigmoid(logits["ehr"]) + torch.sigmoid(logits["cxr"])) / 2
        return torch.logit(mean, eps=1e-6)


def configure_optimizers(model: MMTMFusion, hparams: Mapping[str, Any]) -> list[torch.optim.Adam]:
    """One Adam per head (EHR, CXR, joint) over its parameter group."""
    groups = model.parameter_groups()
    return [adam(groups[head], hparams) for head in HEADS]


def training_step(
    model: MMTMFusion,
    batch: Mapping[str, torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer],
) -> torch.Tensor:
    """Three steps, as the original: EHR loss, then CXR loss, then joint loss, each followed by
    its own optimizer's step (fresh forward each time). Returns the joint loss."""
    for head, optimizer in zip(HEADS, optimizers, strict=True):
        model.zero_grad(set_to_none=True)
        loss = binary_cross_entropy_with_logits(model.head_logits(batch)[head], batch["y"])
        loss.backward()
        optimizer.step()
    return loss.detach()  # the joint loss: the last of the three


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """``mmtm``."""
    return [
        MethodSpec(
            name="mmtm",
            description="MMTM between EHR LSTM layers and after ResNet layer 4; EHR, CXR and "
            "joint heads trained with three losses per batch; predicts with the joint head; "
            "stays without CXR use the zero image.",
            reference=REFERENCE,
            handles_missing_cxr=False,
            default_train_cohort="paired",
            hparams=medfuse_2022_hparams(4.355e-5, 5.326e-5, constant_lr=True),
            build=MMTMFusion,
            pretraining=(CXR_STAGE, EHR_STAGE),
            configure_optimizers=configure_optimizers,
            training_step=training_step,
        ),
    ]
