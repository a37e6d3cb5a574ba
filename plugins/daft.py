"""DAFT, inverted as in MedFuse: the image conditions the EHR sequence.

After ResNet layer ``layer_after`` (4 for in-hospital mortality, 3 for phenotyping):
concat[GAP of the CNN map (C_img), time-mean of the EHR layer-0 output over each stay's valid
steps (hidden)] -> Linear(C_img + hidden, int((16 + C_img) / 7), bias=False) -> ReLU ->
Linear(., 2 * hidden, bias=False) -> scale and shift (no activation, the original's "linear");
the EHR sequence becomes ``sequence * scale + shift``, then EHR layers 1.. -> dropout -> head.
CNN stages after ``layer_after`` are neither built nor computed. Stays without a chest X-ray are
conditioned on the zero image the harness supplies.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fusebench.hookspecs import hookimpl
from fusebench.plugins.encoders import (
    CXR_STAGE,
    EHR_STAGE,
    IHM,
    PHENOTYPING,
    CXREncoder,
    EHREncoder,
    init_medfuse_,
    load_encoder_state,
    medfuse_2022_hparams,
)
from fusebench.plugins.mmtm import masked_time_mean
from fusebench.specs import MethodSpec, ModelConfig

__all__ = ["DAFTBlock", "DAFTFusion", "default_layer_after", "fusebench_register_methods"]

REFERENCE = "Poelsterl et al. DAFT (MICCAI 2021), inverted as in MedFuse (Hayat et al. 2022)"
_LAYER_AFTER = {IHM: 4, PHENOTYPING: 3}


def default_layer_after(task: str) -> int:
    """The published insertion point: 4 for in-hospital mortality, 3 for phenotyping and others."""
    return _LAYER_AFTER.get(task, 4)


class DAFTBlock(nn.Module):
    """Affine transform of an EHR sequence (B, T, D) predicted from a CNN map (B, C, h, w)."""

    def __init__(self, image_dim: int, ehr_dim: int) -> None:
        super().__init__()
        bottleneck = int((16 + image_dim) / 7.0)
        self.aux = nn.Sequential(
            nn.Linear(image_dim + ehr_dim, bottleneck, bias=False),
            nn.ReLU(),
            nn.Linear(bottleneck, 2 * ehr_dim, bias=False),
        )

    def forward(
        self, feature_map: torch.Tensor, sequence: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        squeeze = torch.cat([feature_map.mean(dim=(2, 3)), masked_time_mean(sequence, lengths)],
                            dim=1)
        scale, shift = self.aux(squeeze).chunk(2, dim=1)
        return sequence * scale[:, None, :] + shift[:, None, :]


class DAFTFusion(nn.Module):
    """EHR encoder conditioned by the truncated ResNet34; ``hparams["layer_after"]`` 0-4."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layer_after = int(config.hparams.get("layer_after", default_layer_after(config.task)))
        self.ehr = EHREncoder.from_config(config)
        self.cxr = CXREncoder(depth=layer_after, weights_file=config.cxr_weights)
        self.daft = DAFTBlock(self.cxr.feature_dim, self.ehr.feature_dim)
        self.head = nn.Linear(self.ehr.feature_dim, config.num_classes)
        init_medfuse_(self.head)  # it is the original's EHR model's dense layer
        self.init_info = {"ehr": load_encoder_state(self.ehr, config, EHR_STAGE),
                          "cxr": load_encoder_state(self.cxr, config, CXR_STAGE),
                          "layer_after": layer_after}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        lengths = batch["ehr_lengths"]
        sequence = self.ehr.sequence(batch["ehr"], lengths, stop=1)
        sequence = self.daft(self.cxr.feature_map(batch["cxr"]), sequence, lengths)
        return self.head(self.ehr.features_from(sequence, lengths, start=1))


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """``daft``."""
    return [
        MethodSpec(
            name="daft",
            description="Inverted DAFT: the CXR feature map after ResNet layer 4 (IHM) / 3 "
            "(phenotyping) scales and shifts the EHR LSTM sequence; stays without CXR use the "
            "zero image.",
            reference=REFERENCE,
            handles_missing_cxr=False,
            default_train_cohort="paired",
            hparams=medfuse_2022_hparams(
                6.493e-5, 6.493e-5, constant_lr=True,
                **{IHM: {"layer_after": 4}, PHENOTYPING: {"layer_after": 3}},
            ),
            build=DAFTFusion,
            pretraining=(CXR_STAGE, EHR_STAGE),
        ),
    ]
