"""``gated-fusion``: a gated multimodal unit (GMU) between the EHR and the CXR features.

Arevalo et al., "Gated Multimodal Units for Information Fusion", ICLR workshop 2017. Each stay's
fused feature is a per-dimension convex combination of the two modalities::

    h_ehr = tanh(W_ehr x_ehr)        h_cxr = tanh(W_cxr x_cxr)
    z     = sigmoid(W_gate [x_ehr, x_cxr])
    h     = z * h_ehr + (1 - z) * h_cxr

so the model learns, stay by stay and feature by feature, how much to trust the image. None of
fusebench's built-in methods gates the modalities this way (MedFuse fuses with an LSTM over the
two features, MMTM and DAFT recalibrate the CNN channels, early/joint concatenate).

Missing images: the CNN runs on the stays that have a chest X-ray only, and a stay without one
takes ``z = 1``, i.e. ``h = h_ehr``: the zero image the harness supplies never reaches the CNN.

Encoders are small (a GRU and a two-layer CNN) so the method trains in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fusebench import MethodSpec, ModelConfig, hookimpl

__all__ = ["GatedFusion", "GatedMultimodalUnit", "SmallCNN", "fusebench_register_methods"]

METHOD_NAME = "gated-fusion"
REFERENCE = ("Arevalo, Solorio, Montes-y-Gomez, Gonzalez. Gated Multimodal Units for Information "
             "Fusion. ICLR workshop 2017")

# Harness keys (lr, batch_size, epochs, patience) and the model's own sizes; "*": every task.
HPARAMS = {
    "*": {"lr": 1e-3, "batch_size": 32, "epochs": 20, "patience": 5,
          "ehr_hidden": 32, "cxr_channels": 16, "fusion_dim": 32, "fusion_dropout": 0.1},
}


class SmallCNN(nn.Module):
    """Two strided convolutions and a global average pool: a (B, channels) image feature."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class GatedMultimodalUnit(nn.Module):
    """The GMU: ``z * tanh(W_ehr x_ehr) + (1 - z) * tanh(W_cxr x_cxr)``, ``z`` learned per dim.

    Args:
        ehr_dim: size of the EHR feature.
        cxr_dim: size of the CXR feature.
        fusion_dim: size of the fused feature.
    """

    def __init__(self, ehr_dim: int, cxr_dim: int, fusion_dim: int) -> None:
        super().__init__()
        self.ehr_projection = nn.Linear(ehr_dim, fusion_dim)
        self.cxr_projection = nn.Linear(cxr_dim, fusion_dim)
        self.gate = nn.Linear(ehr_dim + cxr_dim, fusion_dim)

    def ehr_only(self, ehr_feature: torch.Tensor) -> torch.Tensor:
        """The fused feature when there is no image (gate fully open to the EHR)."""
        return torch.tanh(self.ehr_projection(ehr_feature))

    def forward(
        self, ehr_feature: torch.Tensor, cxr_feature: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused feature (P, fusion_dim) and gate ``z`` (P, fusion_dim) for P stays with images."""
        z = torch.sigmoid(self.gate(torch.cat([ehr_feature, cxr_feature], dim=1)))
        fused = z * self.ehr_only(ehr_feature) + (1 - z) * torch.tanh(self.cxr_projection(cxr_feature))
        return fused, z


class GatedFusion(nn.Module):
    """GRU on the series, small CNN on the present images, GMU, dropout, linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hparams = config.hparams
        self.ehr = nn.GRU(config.ehr_input_dim, int(hparams.get("ehr_hidden", 32)),
                          batch_first=True)
        self.cxr = SmallCNN(int(hparams.get("cxr_channels", 16)))
        fusion_dim = int(hparams.get("fusion_dim", 32))
        self.fusion = GatedMultimodalUnit(self.ehr.hidden_size, self.cxr.feature_dim, fusion_dim)
        self.dropout = nn.Dropout(float(hparams.get("fusion_dropout", 0.1)))
        self.head = nn.Linear(fusion_dim, config.num_classes)

    def encode_ehr(self, ehr: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Final GRU state after each stay's last valid bin (the zero padding is skipped)."""
        packed = pack_padded_sequence(ehr, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, final_hidden = self.ehr(packed)
        return final_hidden[-1]

    def fuse(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused features (B, fusion_dim) and gates (B, fusion_dim); the gate is 1 without CXR."""
        ehr_feature = self.encode_ehr(batch["ehr"], batch["ehr_lengths"])
        fused = self.fusion.ehr_only(ehr_feature)
        gates = torch.ones_like(fused)
        present = batch["has_cxr"].nonzero().squeeze(1)
        if present.numel() > 0:
            cxr_feature = self.cxr(batch["cxr"][present])
            fused_present, gates_present = self.fusion(ehr_feature[present], cxr_feature)
            fused = fused.index_copy(0, present, fused_present)
            gates = gates.index_copy(0, present, gates_present)
        return fused, gates

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        fused, _ = self.fuse(batch)
        return self.head(self.dropout(fused))


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """``gated-fusion``."""
    return [
        MethodSpec(
            name=METHOD_NAME,
            description="Gated multimodal unit: per-feature learned gate between EHR (GRU) and "
            "CXR (small CNN) features; EHR alone without a CXR.",
            reference=REFERENCE,
            handles_missing_cxr=True,
            default_train_cohort="partial",
            train_cohorts=("partial", "paired"),
            hparams=HPARAMS,
            build=GatedFusion,
        )
    ]
