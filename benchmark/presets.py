"""Named training presets: the paper's recipe, and a quick one for the demo data on a CPU.

A preset sets the image size and overrides hyper-parameters of every method's own recipe
(``MethodSpec.hparams``); command-line options override the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fusebench.errors import FusebenchError

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """A named set of training settings.

    Attributes:
        name: preset name.
        description: one line.
        image_size: side of the square CXR crop.
        overrides: hyper-parameters replacing the methods' own.
    """

    name: str
    description: str
    image_size: int
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """``hparams`` with this preset's overrides."""
        return {**hparams, **self.overrides}


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="The original recipes (medfuse-2022) at 224 px: up to 50 epochs, batch 16.",
        image_size=224,
    ),
    "quick": Preset(
        name="quick",
        description="Demo-scale: 48 px images, 3 epochs, batch 32, lr 1e-3 (few epochs need "
        "a larger step than the tuned rates).",
        image_size=48,
        overrides={"epochs": 3, "batch_size": 32, "lr": 1e-3, "patience": 3, "lr_patience": 2},
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``."""
    if name not in PRESETS:
        raise FusebenchError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
