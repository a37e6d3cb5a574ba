"""Named training presets: the paper's recipe, and a quick one for the demo data on a CPU.

A preset sets the image size, replaces some hyper-parameters of every method's own recipe
(``MethodSpec.hparams``) and scales every method's learning rate by one factor, so that a
method fine-tuned from pretrained encoders keeps its smaller rate relative to one trained from
scratch (the quick preset once set lr 1e-3 for all: MedFuse then fine-tuned its pretrained
encoders at 14x its tuned rate and lost them, see CONTRIBUTING.md, "Recipe parity with the
original"). Command-line options override the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fusebench.errors import FusebenchError

__all__ = ["PRESETS", "Preset", "get_preset"]

# The rate fusebench.steps.adam uses when a recipe names none: what a preset scales then.
_ADAM_DEFAULT_LR = 1e-4


@dataclass(frozen=True)
class Preset:
    """A named set of training settings.

    Attributes:
        name: preset name.
        description: one line.
        image_size: side of the square CXR crop.
        overrides: hyper-parameters replacing the methods' own (never ``lr``: see ``lr_scale``).
        lr_scale: factor applied to each method's own learning rate.
    """

    name: str
    description: str
    image_size: int
    overrides: Mapping[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if "lr" in self.overrides:
            raise ValueError(f"preset {self.name!r}: scale learning rates with lr_scale; an "
                             "lr override would erase each method's own rate")

    def apply(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """``hparams`` with this preset's overrides and the learning rate scaled.

        Example:
            >>> get_preset("quick").apply({"lr": 7e-5, "epochs": 50})["lr"]
            0.00014
        """
        merged = {**hparams, **self.overrides}
        if self.lr_scale != 1.0:
            merged["lr"] = float(hparams.get("lr", _ADAM_DEFAULT_LR)) * self.lr_scale
        return merged


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="The original recipes (medfuse-2022) at 224 px: up to 50 epochs, batch 16.",
        image_size=224,
    ),
    "quick": Preset(
        name="quick",
        description="Demo-scale: 48 px images, 3 epochs, batch 32, every method's own learning "
        "rate x2 (the doubled batch).",
        image_size=48,
        overrides={"epochs": 3, "batch_size": 32, "patience": 3, "lr_patience": 2},
        lr_scale=2.0,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``."""
    if name not in PRESETS:
        raise FusebenchError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
