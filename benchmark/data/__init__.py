"""The data layer: MIMIC-IV / MIMIC-CXR readers, the MedFuse discretizer, cohorts and the cache.

Example:
    >>> from fusebench.data import DataConfig, prepare
    >>> from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY
    >>> data = prepare(DataConfig(Path("mimic/ehr"), Path("mimic/cxr")), IN_HOSPITAL_MORTALITY)
    >>> test = data.cohort("test", "partial")
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
