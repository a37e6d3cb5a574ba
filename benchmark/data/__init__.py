"""The data layer: MIMIC-IV / MIMIC-CXR readers, the MedFuse discretizer, cohorts and the cache.

Example:
    >>> from benchmark.data import DataConfig, prepare
    >>> from tasks.builtin import IN_HOSPITAL_MORTALITY
    >>> data = prepare(DataConfig(Path("mimic/ehr"), Path("mimic/cxr")), IN_HOSPITAL_MORTALITY)
    >>> test = data.cohort("test", "partial")
"""

from benchmark.data.cohorts import CohortView, PreparedData, prepare
from benchmark.data.discretizer import (
    DiscretizerConfig,
    discretize,
    load_discretizer_config,
    normalize,
    normalizer_statistics,
)
from benchmark.data.layout import CHEXPERT_LABELS, SPLITS, DataConfig
from benchmark.data.pairing import pair_images

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
