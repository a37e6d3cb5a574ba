"""``fusebench data prepare-cxr``: a raw MIMIC-CXR-JPG tree -> ``resized/`` + ``mimic-cxr-ehr-split.csv``.

The two steps of the original (``resize.py``, ``ehr_utils/create_split.py``): every
``files/pNN/pSUBJECT/sSTUDY/DICOM.jpg`` resized to width 512 (aspect kept, Pillow's BICUBIC, as
the original's filter-less ``img.resize``), and the official split realigned to the EHR subjects:
``validate``/``test`` for subjects of the phenotyping val/test listfiles, ``train`` otherwise.
Subject ids are compared as numbers (the original compares the listfile's text ids with the
split's integer column, which never match, so its realignment leaves every image in train).

Resumable: a resized image that exists is skipped, and every file is written under a temporary
name and renamed, so an interrupted run leaves only complete files behind.
"""

from __future__ import annotations

import gzip
import io
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from fusebench.data.images import resize_many
from fusebench.data.layout import CXR_FILES
from fusebench.data.readers import read_csv_checked, read_listfile
from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_bytes
from fusebench.progress import make_progress

__all__ = ["ehr_split", "prepare_cxr"]


def _copy_csv(raw: Path, out: Path, name: str) -> Path:
    """Copy ``name`` (or ``name.gz``) from the raw tree into ``out`` unless already there."""
    target = out / name
    if target.is_file():
        return target
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            data = candidate.read_bytes()
            atomic_write_bytes(target, gzip.decompress(data) if candidate.suffix == ".gz"
                               else data)
            return target
    raise FusebenchError(f"{raw / name}: not found (nor {name}.gz); --raw must be the "
                         "MIMIC-CXR-JPG 2.0.0 folder holding the CSV files and files/")


def ehr_split(split_csv: Path, ehr_root: Path) -> pd.DataFrame:
    """MIMIC-CXR split realigned to the EHR subjects (via the phenotyping val/test listfiles)."""
    splits = read_csv_checked(split_csv, ["dicom_id", "study_id", "subject_id", "split"],
                              "MIMIC-CXR split", dtype={"dicom_id": str})
    val = read_listfile(ehr_root, "phenotyping", "val", ()).subject_ids  # stays only, no labels
    test = read_listfile(ehr_root, "phenotyping", "test", ()).subject_ids
    splits["split"] = "train"
    splits.loc[splits["subject_id"].isin(val), "split"] = "validate"
    splits.loc[splits["subject_id"].isin(test), "split"] = "test"
    return splits


def prepare_cxr(raw: Path, out: Path, ehr_root: Path, *, progress: bool = True) -> dict:
    """Resize every ``files/p1x/p.../s.../*.jpg`` to width 512 and write the EHR-aligned split.

    Returns:
        ``{"images": total, "resized": newly written, "skipped": already there}``.
    """
    if not (raw / "files").is_dir():
        raise FusebenchError(f"{raw / 'files'}: folder not found; --raw must hold the "
                             "MIMIC-CXR-JPG files/ tree")
    resized = out / "resized"
    resized.mkdir(parents=True, exist_ok=True)
    for key in ("metadata", "chexpert", "split"):
        _copy_csv(raw, out, CXR_FILES[key])
    sources = sorted((raw / "files").glob("p*/p*/s*/*.jpg"))
    todo = [(s, resized / s.name) for s in sources if not (resized / s.name).is_file()]
    display = make_progress() if progress else None
    with display or nullcontext():
        bar = display.add_task("resizing CXR images", total=len(sources),
                               completed=len(sources) - len(todo), status="") if display else None
        resize_many(todo, (lambda n: display.update(bar, advance=n)) if display
                    else (lambda n: None))
    buffer = io.StringIO()
    ehr_split(out / CXR_FILES["split"], ehr_root).to_csv(buffer, index=False, lineterminator="\n")
    atomic_write_bytes(out / CXR_FILES["ehr_split"], buffer.getvalue().encode())
    return {"images": len(sources), "resized": len(todo), "skipped": len(sources) - len(todo)}
