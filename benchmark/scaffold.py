"""Scaffold and check fusion-method plugins: ``fusebench plugins new`` and ``plugins check``.

:func:`scaffold_plugin` writes an installable plugin package whose method works out of the box
(an EHR GRU and a small CNN on the present images, concatenated) and whose own test runs the
conformance suite of :mod:`fusebench.testing`, so that right after ``pip install -e DIR`` both
``pytest DIR/tests`` and ``fusebench plugins check NAME`` pass.

Example:
    >>> from pathlib import Path
    >>> root = scaffold_plugin("my-fusion", Path("fusebench-my-fusion"))  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['README.md', 'pyproject.toml', 'src', 'tests']
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from string import Template

from fusebench.errors import FusebenchError

__all__ = [
    "NAME_PATTERN",
    "package_name",
    "scaffold_plugin",
    "validate_plugin_name",
]

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")

_PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "The $name fusion method for fusebench."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["fusebench", "torch"]

# This line is what makes the method known to fusebench: group, entry-point name, module.
[project.entry-points."fusebench.plugins"]
$name = "$package.method"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

_METHOD = Template('''\
"""$name: a fusebench fusion method (scaffolded by `fusebench plugins new`).

EHR: a GRU over each stay's valid hourly bins. CXR: a small CNN run on the stays that have an
image only (absent images are zeros and must not reach the CNN). Fusion: the two features and a
has-image flag are concatenated and a linear layer returns the logits (B, C).

Replace the model with your own and keep the batch contract of fusebench (benchmark/specs.py):
``ehr`` (B, T, 76) float32, ``ehr_lengths`` (B,) int64 on the CPU, ``cxr`` (B, 3, H, W) float32,
``has_cxr`` (B,) bool, ``y`` (B, C) float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fusebench import MethodSpec, ModelConfig, hookimpl

METHOD_NAME = "$name"

# Harness keys (lr, batch_size, epochs, ...) and this model's own (hidden, channels); "*" applies
# to every task, a task name overrides it for that task.
HPARAMS = {"*": {"lr": 1e-3, "batch_size": 32, "epochs": 20, "hidden": 32, "channels": 16}}


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


class $class_name(nn.Module):
    """GRU on the series + small CNN on the present images, concatenated, then a linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = int(config.hparams.get("hidden", 32))
        self.ehr = nn.GRU(config.ehr_input_dim, hidden, batch_first=True)
        self.cxr = SmallCNN(int(config.hparams.get("channels", 16)))
        self.head = nn.Linear(hidden + self.cxr.feature_dim + 1, config.num_classes)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ehr_feature = self.encode_ehr(batch["ehr"], batch["ehr_lengths"])
        cxr_feature = self.encode_present_cxr(batch["cxr"], batch["has_cxr"])
        has_image = batch["has_cxr"].to(ehr_feature.dtype)[:, None]
        return self.head(torch.cat([ehr_feature, cxr_feature, has_image], dim=1))

    def encode_ehr(self, ehr: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Final GRU state after each stay's last valid bin (padding is skipped)."""
        packed = pack_padded_sequence(ehr, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, final_hidden = self.ehr(packed)
        return final_hidden[-1]

    def encode_present_cxr(self, images: torch.Tensor, has_cxr: torch.Tensor) -> torch.Tensor:
        """CNN feature of the stays with an image; zeros for the others (never run on them)."""
        features = images.new_zeros(images.shape[0], self.cxr.feature_dim)
        present = has_cxr.nonzero().squeeze(1)
        if present.numel() == 0:
            return features
        return features.index_copy(0, present, self.cxr(images[present]))


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    """Register the method; fusebench stamps it with this package's name and version."""
    return [
        MethodSpec(
            name=METHOD_NAME,
            description="GRU on the EHR + small CNN on present CXRs, concatenated (scaffold).",
            reference="-",
            handles_missing_cxr=True,
            default_train_cohort="partial",
            train_cohorts=("partial", "paired"),
            hparams=HPARAMS,
            build=$class_name,
        )
    ]
''')

_TEST = Template('''\
"""The fusebench conformance suite on $name (needs the package installed)."""

from fusebench.testing import assert_conforms


def test_${identifier}_conforms_to_the_fusebench_contract():
    assert_conforms("$name")
''')

_README = Template('''\
# $distribution

The `$name` fusion method for [fusebench](https://github.com/): a GRU on the ICU time series and
a small CNN on the chest X-rays that are present, concatenated.

```sh
pip install -e .                       # registers the entry point `$name`
pytest tests                           # the conformance suite on the method
fusebench plugins check $name          # the same, as a pass/fail table
fusebench run --task in-hospital-mortality --method $name --preset quick
```

Edit `src/$package/method.py`: the model class, `HPARAMS`, and the `MethodSpec` fields
(`handles_missing_cxr`, `default_train_cohort`, `description`, `reference`).
''')


def validate_plugin_name(name: str) -> str:
    """Return ``name`` if it can name a method, an entry point and a distribution.

    Raises:
        FusebenchError: not lowercase letters, digits and single dashes, starting with a letter.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise FusebenchError(
            f"plugin name {name!r}: use lowercase letters, digits and single dashes, starting "
            "with a letter (e.g. gated-fusion)"
        )
    return name


def package_name(name: str) -> str:
    """The Python package of the scaffold for ``name``: ``my-fusion`` -> ``fusebench_my_fusion``."""
    return "fusebench_" + name.replace("-", "_")


def _files(name: str) -> dict[str, str]:
    package = package_name(validate_plugin_name(name))
    values = {
        "name": name,
        "package": package,
        "distribution": f"fusebench-{name}",
        "identifier": name.replace("-", "_"),
        "class_name": "".join(part.capitalize() for part in name.split("-")) + "Fusion",
    }
    return {
        "pyproject.toml": _PYPROJECT.substitute(values),
        "README.md": _README.substitute(values),
        f"src/{package}/__init__.py": f'"""The {name} fusion method for fusebench."""\n',
        f"src/{package}/method.py": _METHOD.substitute(values),
        "tests/test_conformance.py": _TEST.substitute(values),
    }


def scaffold_plugin(name: str, directory: Path) -> Path:
    """Write an installable plugin package for a method called ``name`` into ``directory``.

    The package is written into a temporary folder beside ``directory`` and renamed into place,
    so an interrupted call leaves nothing half-written.

    Args:
        name: method and entry-point name (lowercase letters, digits, dashes).
        directory: folder to create; it may exist only if empty.

    Returns:
        ``directory``, holding ``pyproject.toml``, ``README.md``, ``src/fusebench_<name>/``
        and ``tests/test_conformance.py``.

    Raises:
        FusebenchError: an invalid name, or ``directory`` is a file or a non-empty folder.
    """
    files = _files(name)
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FusebenchError(f"{directory}: already exists and is not an empty folder; "
                             "choose a new folder with --dir")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
