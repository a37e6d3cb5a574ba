"""Late fusion: the mean of the uni-EHR and uni-CXR probabilities (uni-EHR alone without a CXR).

Both uni-modal models live in one module and train side by side: each on its own loss (the CXR
one on the stays that have an image only), with disjoint parameters, which amounts to training
them separately. The CNN never sees absent images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits

from fusebench.hookspecs import hookimpl
from fusebench.plugins.encoders import medfuse_2022_hparams
from fusebench.plugins.unimodal import UniCXR, UniEHR
from fusebench.specs import MethodSpec, ModelConfig

__all__ = ["LateFusion", "fusebench_register_methods", "training_step"]

REFERENCE = "Hayat, Geras, Shamout. MedFuse. MLHC 2022, PMLR 182:479-503 (late baseline)"
PROBABILITY_EPS = 1e-6  # logits are the logit of the clamped mean probability


class LateFusion(nn.Module):
    """uni-EHR and uni-CXR side by side; ``forward`` returns the logit of their mean probability."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.uni_ehr = UniEHR(config)
        self.uni_cxr = UniCXR(config)
        self.init_info = {**self.uni_ehr.init_info, **self.uni_cxr.init_info}

    def unimodal_logits(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(ehr_logits (B, C), cxr_logits (P, C) or None, indices of the P present images)``."""
        ehr_logits = self.uni_ehr(batch)
        present = batch["has_cxr"].bool().nonzero().squeeze(1)
        if present.numel() == 0:
            return ehr_logits, None, present
        return ehr_logits, self.uni_cxr({"cxr": batch["cxr"][present]}), present

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ehr_logits, cxr_logits, present = self.unimodal_logits(batch)
        probability = torch.sigmoid(ehr_logits)
        if cxr_logits is not None:
            mean = (probability[present] + torch.sigmoid(cxr_logits)) / 2
            probability = probability.index_copy(0, present, mean)
        return torch.logit(probability, eps=PROBABILITY_EPS)


def training_step(
    model: LateFusion,
    batch: Mapping[str, torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer],
) -> torch.Tensor:
    """Sum of the uni-EHR loss and the uni-CXR loss (present images only)."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    ehr_logits, cxr_logits, present = model.unimodal_logits(batch)
    loss = binary_cross_entropy_with_logits(ehr_logits, batch["y"])
    if cxr_logits is not None:
        loss = loss + binary_cross_entropy_with_logits(cxr_logits, batch["y"][present])
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    return loss.detach()


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """``late``."""
    return [
        MethodSpec(
            name="late",
            description="Mean of uni-EHR and uni-CXR probabilities (uni-EHR alone without CXR); "
            "the two models train side by side on their own losses.",
            reference=REFERENCE,
            handles_missing_cxr=True,
            default_train_cohort="paired",
            hparams=medfuse_2022_hparams(1e-4, 1e-4),
            build=LateFusion,
            training_step=training_step,
        ),
    ]
