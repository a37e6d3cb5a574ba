"""MedFuse: an LSTM fuses the EHR feature and the projected CXR feature as a token sequence.

The sequence is ``[ehr]`` for a stay without a chest X-ray and ``[ehr, cxr]`` otherwise (packed,
so the missing token is never fed). Unlike the original, absent images are never pushed through
the CNN: only the present ones are encoded, so zero images cannot shift BatchNorm statistics.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

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

__all__ = ["MedFuse", "fusebench_register_methods"]

REFERENCE = "Hayat, Geras, Shamout. MedFuse. MLHC 2022, PMLR 182:479-503"


class MedFuse(nn.Module):
    """EHR encoder, ResNet34, Linear(512, hidden) projection, LSTM(hidden, 512), Linear(512, C).

    Args:
        config: model configuration; ``config.pretrained`` stage weights are loaded when
            ``use_pretrained`` is True.
        use_pretrained: False for the random-init variant (no stage weights, no ImageNet file).
    """

    def __init__(self, config: ModelConfig, *, use_pretrained: bool = True) -> None:
        super().__init__()
        self.ehr = EHREncoder.from_config(config)
        self.cxr = CXREncoder(weights_file=config.cxr_weights if use_pretrained else None)
        self.projection = nn.Linear(self.cxr.feature_dim, self.ehr.feature_dim)
        self.fusion = nn.LSTM(self.ehr.feature_dim, self.cxr.feature_dim, batch_first=True)
        self.classifier = nn.Linear(self.cxr.feature_dim, config.num_classes)
        self.init_info = {"ehr": "random", "cxr": self.cxr.source}
        if use_pretrained:
            self.init_info = {"ehr": load_encoder_state(self.ehr, config, EHR_STAGE),
                              "cxr": load_encoder_state(self.cxr, config, CXR_STAGE)}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ehr_token = self.ehr(batch["ehr"], batch["ehr_lengths"])
        has_cxr = batch["has_cxr"].bool()
        cxr_token = torch.zeros_like(ehr_token)
        if has_cxr.any():
            present = has_cxr.nonzero().squeeze(1)
            encoded = self.projection(self.cxr(batch["cxr"][present]))
            cxr_token = cxr_token.index_copy(0, present, encoded)
        tokens = torch.stack([ehr_token, cxr_token], dim=1)
        lengths = 1 + has_cxr.long().cpu()
        packed = pack_padded_sequence(tokens, lengths, batch_first=True, enforce_sorted=False)
        _, (final_hidden, _) = self.fusion(packed)
        return self.classifier(final_hidden[-1])


def _medfuse_random_init(config: ModelConfig) -> MedFuse:
    return MedFuse(config, use_pretrained=False)


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """``medfuse`` (stage-1 pretrained encoders) and ``medfuse-ri`` (random init)."""
    # The original's scripts: medFuse.sh 1e-4 (its default) for IHM, 7e-5 for phenotyping;
    # medFuse_rand.sh 9.382e-5 for IHM, and no phenotyping run (MedFuse's rate is kept).
    hparams = medfuse_2022_hparams(1e-4, 7e-5)
    random_init_hparams = medfuse_2022_hparams(9.382e-5, 7e-5)
    return [
        MethodSpec(
            name="medfuse",
            description="LSTM over [EHR, CXR] feature tokens (length 1 without CXR); encoders "
            "from the cxr-radiology and ehr-uni stages; fine-tuned end to end.",
            reference=REFERENCE,
            handles_missing_cxr=True,
            default_train_cohort="partial",
            hparams=hparams,
            build=MedFuse,
            pretraining=(CXR_STAGE, EHR_STAGE),
        ),
        MethodSpec(
            name="medfuse-ri",
            description="MedFuse with randomly initialised encoders (no pretraining, no "
            "ImageNet weights).",
            reference=REFERENCE,
            handles_missing_cxr=True,
            default_train_cohort="partial",
            hparams=random_init_hparams,
            build=_medfuse_random_init,
        ),
    ]
