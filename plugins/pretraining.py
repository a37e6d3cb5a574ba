"""MedFuse's stage 1 as pretraining stages, shared by every method that lists them.

- ``cxr-radiology``: ResNet34 (ImageNet weights when a local file is given) + Linear(512, 14)
  trained on all chest X-rays of the split with the 14 radiology labels; returns the
  :class:`~fusebench.plugins.encoders.CXREncoder` state dict. It does not depend on the task, so both
  tasks share one run.
- ``ehr-uni``: uni-EHR trained on every stay of the task (cohort ``partial``); returns the
  :class:`~fusebench.plugins.encoders.EHREncoder` state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fusebench.hookspecs import StageContext, hookimpl
from fusebench.plugins.encoders import CXR_STAGE, EHR_STAGE, CXREncoder, medfuse_2022_hparams
from fusebench.plugins.unimodal import UNI_EHR_HPARAMS, UniEHR
from fusebench.specs import PretrainingStage

__all__ = ["RadiologyModel", "fusebench_register_pretraining_stages", "run_cxr_radiology",
           "run_ehr_uni"]

RADIOLOGY_LABELS = 14
# The original's radiology script: 100 epochs, batch 16, the default lr 1e-4.
RADIOLOGY_HPARAMS = {**medfuse_2022_hparams(1e-4, 1e-4)["*"], "epochs": 100}


class RadiologyModel(nn.Module):
    """ResNet34 + Linear(512, 14) on radiology batches."""

    def __init__(self, encoder: CXREncoder) -> None:
        super().__init__()
        self.cxr = encoder
        self.head = nn.Linear(encoder.feature_dim, RADIOLOGY_LABELS)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.cxr(batch["cxr"]))


def run_cxr_radiology(context: StageContext) -> dict[str, Any]:
    """Train the CXR encoder on the radiology cohort; return its state dict."""
    encoder = CXREncoder(weights_file=context.model_config.cxr_weights)
    model = context.fit(RadiologyModel(encoder), cohort="radiology", hparams=RADIOLOGY_HPARAMS)
    return _cpu_state(model.cxr)


def run_ehr_uni(context: StageContext) -> dict[str, Any]:
    """Train uni-EHR on every stay of the task; return its encoder's state dict."""
    hparams = {**UNI_EHR_HPARAMS["*"], **UNI_EHR_HPARAMS.get(context.task.name, {})}
    model = context.fit(UniEHR(context.model_config), cohort="partial", hparams=hparams)
    return _cpu_state(model.ehr)


def _cpu_state(module: nn.Module) -> dict[str, Any]:
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


@hookimpl
def fusebench_register_pretraining_stages() -> list[PretrainingStage]:
    """``cxr-radiology`` and ``ehr-uni``."""
    return [
        PretrainingStage(
            name=CXR_STAGE,
            description="ResNet34 + Linear(512, 14) on every CXR image (14 radiology labels).",
            run=run_cxr_radiology,
            config={"hparams": RADIOLOGY_HPARAMS, "labels": RADIOLOGY_LABELS},
            per_task=False,
        ),
        PretrainingStage(
            name=EHR_STAGE,
            description="uni-EHR on every stay of the task (partial cohort).",
            run=run_ehr_uni,
            config={"hparams": UNI_EHR_HPARAMS, "cohort": "partial"},
        ),
    ]
