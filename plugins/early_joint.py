"""Early and joint fusion: concat[EHR feature, Linear(512, hidden)(CXR feature)] -> Linear(., C).

``joint`` trains everything from the stage-1 encoders. ``early`` freezes both encoders (no
gradient, and kept in eval mode so BatchNorm statistics and dropout do not change either); only
the projection and the classifier train. Stays without a chest X-ray are scored on the zero
image the harness supplies, as in the original.
"""

from __future__ import annotations

import torch
from torch import nn

from fusebench.hookspecs import hookimpl
from fusebench.plugins.encoders import (
    CXR_STAGE,
    EHR_STAGE,
    CXREncoder,
    EHREncoder,
    load_encoder_state,
    medfuse_2022_hparams,
)
from fusebench.specs import MethodSpec, ModelConfig

__all__ = ["ConcatFusion", "fusebench_register_methods"]

REFERENCE = "Hayat, Geras, Shamout. MedFuse. MLHC 2022, PMLR 182:479-503"


class ConcatFusion(nn.Module):
    """Concatenation fusion of the two encoders' features.

    Args:
        config: model configuration (stage weights loaded from ``config.pretrained``).
        freeze_encoders: True for ``early``.
    """

    def __init__(self, config: ModelConfig, *, freeze_encoders: bool = False) -> None:
        super().__init__()
        self.ehr = EHREncoder.from_config(config)
        self.cxr = CXREncoder(weights_file=config.cxr_weights)
        self.projection = nn.Linear(self.cxr.feature_dim, self.ehr.feature_dim)
        self.classifier = nn.Linear(2 * self.ehr.feature_dim, config.num_classes)
        self.init_info = {"ehr": load_encoder_state(self.ehr, config, EHR_STAGE),
                          "cxr": load_encoder_state(self.cxr, config, CXR_STAGE)}
        self.freeze_encoders = freeze_encoders
        if freeze_encoders:
            for encoder in (self.ehr, self.cxr):
                encoder.requires_grad_(False)
                encoder.eval()

    def train(self, mode: bool = True) -> ConcatFusion:
        """Switch mode, keeping frozen encoders in eval mode."""
        super().train(mode)
        if self.freeze_encoders:
            self.ehr.eval()
            self.cxr.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ehr_feature = self.ehr(batch["ehr"], batch["ehr_lengths"])
        cxr_feature = self.projection(self.cxr(batch["cxr"]))
        return self.classifier(torch.cat([ehr_feature, cxr_feature], dim=1))


def _early(config: ModelConfig) -> ConcatFusion:
    return ConcatFusion(config, freeze_encoders=True)


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """``early`` and ``joint``."""
    return [
        MethodSpec(
            name="early",
            description="Concatenated features of the frozen stage-1 encoders -> linear "
            "classifier; stays without CXR use the zero image.",
            reference=REFERENCE,
            handles_missing_cxr=False,
            default_train_cohort="paired",
            hparams=medfuse_2022_hparams(9.515e-5, 3.833e-5),
            build=_early,
            pretraining=(CXR_STAGE, EHR_STAGE),
        ),
        MethodSpec(
            name="joint",
            description="Concatenated EHR and projected CXR features -> linear classifier, "
            "trained end to end from the stage-1 encoders; stays without CXR use the zero image.",
            reference=REFERENCE,
            handles_missing_cxr=False,
            default_train_cohort="paired",
            hparams=medfuse_2022_hparams(4.032e-5, 5.652e-5),
            build=ConcatFusion,
            pretraining=(CXR_STAGE, EHR_STAGE),
        ),
    ]
