"""Uni-modal baselines: ``uni-ehr`` (LSTM on the time series) and ``uni-cxr`` (ResNet34).

Their modules are reused by ``late`` (both, trained side by side) and by the ``ehr-uni``
pretraining stage (uni-EHR on every stay of the task).
"""

from __future__ import annotations

import torch
from torch import nn

from fusebench.hookspecs import hookimpl
from fusebench.plugins.encoders import CXREncoder, EHREncoder, init_medfuse_, medfuse_2022_hparams
from fusebench.specs import MethodSpec, ModelConfig

__all__ = ["UNI_EHR_HPARAMS", "UniCXR", "UniEHR", "fusebench_register_methods"]

REFERENCE = "Hayat, Geras, Shamout. MedFuse. MLHC 2022, PMLR 182:479-503"
UNI_EHR_HPARAMS = medfuse_2022_hparams(5.3985e-4, 5.3985e-4)


class UniEHR(nn.Module):
    """EHR encoder + Linear(hidden, C), MedFuse's initialisation on both."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ehr = EHREncoder.from_config(config)
        self.head = nn.Linear(self.ehr.feature_dim, config.num_classes)
        init_medfuse_(self.head)
        self.init_info = {"ehr": "random"}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.ehr(batch["ehr"], batch["ehr_lengths"]))


class UniCXR(nn.Module):
    """ResNet34 (ImageNet weights when ``config.cxr_weights`` is given) + Linear(512, C).

    A stay without a chest X-ray is scored on the zero image the harness supplies.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.cxr = CXREncoder(weights_file=config.cxr_weights)
        self.head = nn.Linear(self.cxr.feature_dim, config.num_classes)
        self.init_info = {"cxr": self.cxr.source}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.cxr(batch["cxr"]))


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """``uni-ehr`` and ``uni-cxr``."""
    return [
        MethodSpec(
            name="uni-ehr",
            description="2-layer LSTM on the EHR time series only (MedFuse's uni-modal EHR).",
            reference=REFERENCE,
            handles_missing_cxr=True,
            default_train_cohort="partial",
            train_cohorts=("partial", "paired"),
            hparams=UNI_EHR_HPARAMS,
            build=UniEHR,
        ),
        MethodSpec(
            name="uni-cxr",
            description="ResNet34 on the chest X-ray only; stays without one get the zero image.",
            reference=REFERENCE,
            handles_missing_cxr=False,
            default_train_cohort="paired",
            hparams=medfuse_2022_hparams(2.951e-5, 1e-4),
            build=UniCXR,
        ),
    ]
