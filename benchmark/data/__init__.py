"""The data layer: MIMIC-IV / MIMIC-CXR readers, the MedFuse discretizer, cohorts and the cache.

Example:
    On the tiny synthetic dataset (real data: ``DataConfig(Path("mimic/ehr"), Path("mimic/cxr"))``):

    >>> import tempfile
    >>> from pathlib import Path
    >>> from fusebench.data import DataConfig, prepare
    >>> from fusebench.data.demo import generate_demo
    >>> from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY
    >>> root = generate_demo(Path(tempfile.mkdtemp()) / "demo", "tiny", seed=0, progress=False)
    >>> config = DataConfig(root / "ehr", root / "cxr", cache_dir=root / "cache", image_size=32)
    >>> data = prepare(config, IN_HOSPITAL_MORTALITY, progress=False)
    >>> test = data.cohort("test", "partial")
    >>> len(test) > 0
    True
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> defining module; imported on first use (PEP 562), so `fusebench data demo`, `data
# check` and the CLI's option parsing do not pay for torch and pandas until they need them
_EXPORTS = {
    "CHEXPERT_LABELS": "layout",
    "SPLITS": "layout",
    "CohortView": "cohorts",
    "DataConfig": "layout",
    "DiscretizerConfig": "discretizer",
    "PreparedData": "cohorts",
    "discretize": "discretizer",
    "load_discretizer_config": "discretizer",
    "normalize": "discretizer",
    "normalizer_statistics": "discretizer",
    "pair_images": "pairing",
    "prepare": "cohorts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
