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

from fusebench.data.cohorts import CohortView, PreparedData, prepare
from fusebench.data.discretizer import (
    DiscretizerConfig,
    discretize,
    load_discretizer_config,
    normalize,
    normalizer_statistics,
)
from fusebench.data.layout import CHEXPERT_LABELS, SPLITS, DataConfig
from fusebench.data.pairing import pair_images

__all__ = [
    "CHEXPERT_LABELS",
    "SPLITS",
    "CohortView",
    "DataConfig",
    "DiscretizerConfig",
    "PreparedData",
    "discretize",
    "load_discretizer_config",
    "normalize",
    "normalizer_statistics",
    "pair_images",
    "prepare",
]
