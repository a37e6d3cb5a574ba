"""Pairing chest X-rays with ICU stays (MedFuse section 2.3) and the radiology image table.

A stay's image is the LATEST AP image taken between ICU admission and the window end (admission
+ 48 h, or discharge for the full stay). Of images with equal study times the one that comes last
in the metadata file wins, as in the original (``datasets/fusion.py``: a sort on StudyDateTime of
rows in metadata order, then ``tail(1)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.data.layout import CHEXPERT_LABELS, CXR_FILES
from fusebench.data.readers import numeric_column, parse_study_datetime, read_csv_checked
from fusebench.errors import FusebenchError

__all__ = ["pair_images", "radiology_table", "read_cxr_metadata"]

_SPLIT_NAMES = {"train": "train", "val": "validate", "test": "test"}


def dicom_ids(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """The ``dicom_id`` column; an id that is not a plain file name is an error with its line.

    Ids name the files ``resized/{dicom_id}.jpg``: one with a separator or ``..`` would read an
    image from outside the data root.
    """
    ids = frame["dicom_id"].astype(str)
    bad = ~ids.str.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*").to_numpy(bool)
    ids = ids.to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FusebenchError(f"{path} line {row + 2}: dicom_id {ids[row]!r} is not a plain file "
                             "name (it would point outside resized/); fix or remove that row")
    return ids


def read_cxr_metadata(cxr_root: Path) -> pd.DataFrame:
    """dicom_id, subject_id, study_id, ViewPosition and the parsed StudyDateTime of every image."""
    path = cxr_root / CXR_FILES["metadata"]
    frame = read_csv_checked(path, ["dicom_id", "subject_id", "study_id", "ViewPosition",
                                    "StudyDate", "StudyTime"], "CXR metadata",
                             dtype={"dicom_id": str, "subject_id": str, "study_id": str,
                                    "ViewPosition": str, "StudyDate": str})
    return pd.DataFrame({
        "dicom_id": dicom_ids(frame, path),
        "subject_id": numeric_column(frame, "subject_id", path, integer=True),
        "study_id": numeric_column(frame, "study_id", path, integer=True),
        "ViewPosition": frame["ViewPosition"].fillna("").astype(str).to_numpy(),
        "StudyDateTime": parse_study_datetime(frame, path).to_numpy(),
    })


def pair_images(metadata: pd.DataFrame, all_stays: pd.DataFrame, window: str) -> pd.DataFrame:
    """The latest AP image of each stay inside the window.

    Args:
        metadata: :func:`read_cxr_metadata`.
        all_stays: :func:`fusebench.data.readers.read_all_stays`.
        window: ``"48h"`` (intime to intime + 48 h) or ``"full-stay"`` (intime to outtime).

    Returns:
        A frame with one row per paired stay: stay_id, dicom_id, StudyDateTime.
    """
    metadata = metadata.assign(file_row=np.arange(len(metadata)))
    merged = metadata.merge(all_stays[["subject_id", "stay_id", "intime", "outtime"]],
                            on="subject_id", how="inner")
    end = merged["intime"] + pd.Timedelta(hours=48) if window == "48h" else merged["outtime"]
    inside = (merged["StudyDateTime"] >= merged["intime"]) & (merged["StudyDateTime"] <= end)
    chosen = merged.loc[inside & (merged["ViewPosition"] == "AP")]
    chosen = chosen.sort_values(["stay_id", "StudyDateTime", "file_row"], kind="stable")
    latest = chosen.drop_duplicates("stay_id", keep="last")
    return latest[["stay_id", "dicom_id", "StudyDateTime"]].reset_index(drop=True)


def radiology_table(cxr_root: Path, split: str) -> tuple[pd.DataFrame, list[dict]]:
    """Images of ``split`` (from mimic-cxr-ehr-split.csv) with their 14 CheXpert labels.

    Uncertain (-1) and empty labels become 0. Images whose study has no CheXpert row are dropped,
    as in the original, and returned as counted skips.

    Returns:
        ``(table, skips)``: table with dicom_id and the 14 label columns (float32), file order.
    """
    split_path = cxr_root / CXR_FILES["ehr_split"]
    splits = read_csv_checked(split_path, ["dicom_id", "study_id", "split"], "CXR-EHR split "
                              "(create it with `fusebench data prepare-cxr`)",
                              dtype={"dicom_id": str, "split": str})
    numeric_column(splits, "study_id", split_path, integer=True)
    dicom_ids(splits, split_path)
    known = {"train", "validate", "test"}
    unknown = ~splits["split"].isin(known).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise FusebenchError(f"{split_path} line {row + 2}: split {splits['split'].iloc[row]!r} "
                             "is not train, validate or test")
    chexpert_path = cxr_root / CXR_FILES["chexpert"]
    labels = read_csv_checked(chexpert_path, ["study_id", *CHEXPERT_LABELS], "CheXpert labels")
    for name in CHEXPERT_LABELS:
        labels[name] = numeric_column(labels.fillna({name: 0}), name, chexpert_path,
                                      allowed=(-1.0, 0.0, 1.0))
    labels[list(CHEXPERT_LABELS)] = labels[list(CHEXPERT_LABELS)].replace(-1.0, 0.0)
    labels["study_id"] = numeric_column(labels, "study_id", chexpert_path, integer=True)
    labels = labels.drop_duplicates("study_id", keep="first")
    wanted = splits.loc[splits["split"] == _SPLIT_NAMES[split]].copy()
    wanted["study_id"] = wanted["study_id"].astype(np.int64)
    wanted["line"] = np.flatnonzero(splits["split"].to_numpy() == _SPLIT_NAMES[split]) + 2
    table = wanted.merge(labels[["study_id", *CHEXPERT_LABELS]], on="study_id", how="left")
    unlabelled = table[CHEXPERT_LABELS[0]].isna().to_numpy()
    skips = [{"file": str(split_path), "line": int(line), "reason": "study has no CheXpert labels"}
             for line in table.loc[unlabelled, "line"].tolist()]
    table = table.loc[~unlabelled].reset_index(drop=True)
    table[list(CHEXPERT_LABELS)] = table[list(CHEXPERT_LABELS)].astype(np.float32)
    return table[["dicom_id", *CHEXPERT_LABELS]], skips
