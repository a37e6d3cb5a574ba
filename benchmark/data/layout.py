"""Where things live: the data configuration and the file layout of the MIMIC EHR and CXR roots.

EHR root (MedFuse ``mimic4extract`` output)::

    {ehr_root}/root/all_stays.csv
    {ehr_root}/{task}/{train,val,test}_listfile.csv     (val rows point into {task}/train/)
    {ehr_root}/{task}/{train,test}/{subject}_episode{k}_timeseries.csv

CXR root (MIMIC-CXR-JPG 2.0.0 after MedFuse's resize step)::

    {cxr_root}/mimic-cxr-2.0.0-{metadata,chexpert,split}.csv
    {cxr_root}/mimic-cxr-ehr-split.csv
    {cxr_root}/resized/{dicom_id}.jpg
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fusebench.errors import FusebenchError

__all__ = [
    "CHEXPERT_LABELS",
    "CXR_FILES",
    "SPLITS",
    "DataConfig",
    "episode_path",
    "listfile_path",
    "require_file",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")

# The 14 radiology labels of mimic-cxr-2.0.0-chexpert.csv, in file order.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
)

CXR_FILES = {
    "metadata": "mimic-cxr-2.0.0-metadata.csv",
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv",
    "split": "mimic-cxr-2.0.0-split.csv",
    "ehr_split": "mimic-cxr-ehr-split.csv",
}

_NORMALIZERS = ("train", "medfuse-2022")
_WINDOWS = ("default", "48h", "full-stay")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to preprocess it.

    Attributes:
        ehr_root: folder holding ``root/all_stays.csv`` and one folder per task.
        cxr_root: folder holding the MIMIC-CXR-JPG CSV files and ``resized/``.
        image_size: side of the square crop fed to the model (the paper: 224).
        normalizer: ``"train"`` (statistics of the training split) or ``"medfuse-2022"`` (the
            original MIMIC-III statistics file).
        cxr_window: ``"default"`` (the task's), ``"48h"`` or ``"full-stay"``.
        cache_dir: where preprocessed arrays go; default ``$FUSEBENCH_CACHE``, else
            ``{ehr_root}/../.fusebench-cache``.
        is_demo: True for the synthetic demo dataset (recorded in results).

    Example:
        >>> DataConfig(Path("mimic/ehr"), Path("mimic/cxr"), image_size=128).normalizer
        'train'
    """

    ehr_root: Path
    cxr_root: Path
    image_size: int = 224
    normalizer: str = "train"
    cxr_window: str = "default"
    cache_dir: Path | None = None
    is_demo: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ehr_root", Path(self.ehr_root))
        object.__setattr__(self, "cxr_root", Path(self.cxr_root))
        if self.normalizer not in _NORMALIZERS:
            raise FusebenchError(f"--normalizer {self.normalizer}: choose one of "
                                 f"{', '.join(_NORMALIZERS)}")
        if self.cxr_window not in _WINDOWS:
            raise FusebenchError(f"--cxr-window {self.cxr_window}: choose one of "
                                 f"{', '.join(_WINDOWS)}")
        if not 8 <= int(self.image_size) <= 2048:
            raise FusebenchError(f"--image-size {self.image_size}: use a size from 8 to 2048")

    @property
    def stored_image_size(self) -> int:
        """Side of the cached square image: ``Resize(S)`` + ``CenterCrop(S)``, S = size*256/224."""
        return round(self.image_size * 256 / 224)

    def resolved_cache_dir(self) -> Path:
        """The cache folder: the configured one, ``$FUSEBENCH_CACHE``, or beside the EHR root."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        if os.environ.get("FUSEBENCH_CACHE"):
            return Path(os.environ["FUSEBENCH_CACHE"])
        return self.ehr_root.resolve().parent / ".fusebench-cache"

    def window_for(self, default_window: str) -> str:
        """The CXR pairing window in force for a task whose default is ``default_window``."""
        return default_window if self.cxr_window == "default" else self.cxr_window


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file; a one-line error naming it otherwise."""
    if not path.is_file():
        where = "folder" if not path.parent.is_dir() else "file"
        raise FusebenchError(f"{path}: {what} not found (missing {where}); check --ehr-root / "
                             "--cxr-root or --data-root")
    return path


def listfile_path(ehr_root: Path, task: str, split: str) -> Path:
    """``{ehr_root}/{task}/{split}_listfile.csv``."""
    return ehr_root / task / f"{split}_listfile.csv"


def episode_path(ehr_root: Path, task: str, split: str, stay: str) -> Path:
    """Episode CSV of a listfile row (val rows live in ``train/``); refuses paths escaping it."""
    folder = ehr_root / task / ("test" if split == "test" else "train")
    # A lexical check (no resolve()): cheap for 60,000 stays and blind to symlinks by design.
    parts = Path(stay).parts
    if not parts or Path(stay).is_absolute() or ".." in parts:
        raise ValueError(f"stay {stay!r} points outside {folder}")
    return folder / stay
