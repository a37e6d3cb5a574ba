"""Hand-made MIMIC-layout fixtures and a per-row reference discretizer for the data-layer tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fusebench.data.discretizer import EPS, load_discretizer_config
from fusebench.data.layout import CHEXPERT_LABELS
from fusebench.tasks.builtin import PHENOTYPES

CONFIG = load_discretizer_config()
HEADER = ["Hours", *CONFIG.channels]
INTIME = datetime(2150, 1, 1, 8, 0, 0)


def episode_text(rows: list[dict]) -> str:
    """An episode CSV: rows are {column: value}; absent columns are empty cells."""
    lines = [",".join(HEADER)]
    lines += [",".join(str(row.get(c, "")) for c in HEADER) for row in rows]
    return "\n".join(lines) + "\n"


def reference_discretize(rows: list[list[str]], end: float) -> np.ndarray:
    """mimic3-benchmarks Discretizer.transform, row by row, written from the rules (float64)."""
    channels = CONFIG.channels
    begin = CONFIG.begin
    n_bins = int(end / 1.0 + 1.0 - EPS)
    data = np.zeros((n_bins, CONFIG.mask_start))
    mask = np.zeros((n_bins, len(channels)))
    original = [["" for _ in channels] for _ in range(n_bins)]

    def write(bin_id: int, channel: int, value: str) -> None:
        name = channels[channel]
        if CONFIG.is_categorical(name):
            values = CONFIG.possible_values[name]
            data[bin_id, begin[channel]:begin[channel] + len(values)] = 0
            data[bin_id, begin[channel] + values.index(value)] = 1
        else:
            data[bin_id, begin[channel]] = float(value)

    for row in rows:
        t = float(row[0])
        if t > end + EPS:
            continue
        bin_id = int(t / 1.0 - EPS)
        if bin_id < 0:
            continue
        for j in range(1, len(row)):
            if row[j] == "":
                continue
            mask[bin_id, j - 1] = 1
            write(bin_id, j - 1, row[j])
            original[bin_id][j - 1] = row[j]
    previous: list[list[str]] = [[] for _ in channels]
    for bin_id in range(n_bins):
        for channel, name in enumerate(channels):
            if mask[bin_id, channel] == 1:
                previous[channel].append(original[bin_id][channel])
                continue
            value = previous[channel][-1] if previous[channel] else CONFIG.normal_values[name]
            write(bin_id, channel, value)
    return np.hstack([data, mask])


def reference_rows(text: str) -> list[list[str]]:
    """Split an episode CSV as the original reader does (no quoting)."""
    return [line.split(",") for line in text.strip().split("\n")[1:] if line != ""]


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 52)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8), "L").save(path, "JPEG")


def make_dataset(root: Path, splits: tuple[int, int, int] = (6, 2, 2),
                 images: dict[int, list[tuple[float, str]]] | None = None) -> tuple[Path, Path]:
    """A tiny MIMIC-layout dataset: ``splits`` stays per train/val/test for both tasks.

    Stay ``i`` has subject 100+i, stay_id 1000+i, intime INTIME + i days, a 72 h ICU stay and
    IHM label ``i % 2``. ``images`` maps a stay index to (hours after intime, ViewPosition) of
    its images (default: stay i gets one AP image at 10 h when i is even).

    Returns:
        (ehr_root, cxr_root).
    """
    ehr, cxr = root / "ehr", root / "cxr"
    (ehr / "root").mkdir(parents=True)
    (cxr / "resized").mkdir(parents=True)
    total = sum(splits)
    if images is None:
        images = {i: [(10.0, "AP")] for i in range(0, total, 2)}
    stays = pd.DataFrame({
        "subject_id": [100 + i for i in range(total)],
        "hadm_id": [5000 + i for i in range(total)],
        "stay_id": [1000 + i for i in range(total)],
        "intime": [INTIME + timedelta(days=i) for i in range(total)],
        "outtime": [INTIME + timedelta(days=i, hours=72) for i in range(total)],
    })
    stays.to_csv(ehr / "root" / "all_stays.csv", index=False)
    names = ("train", "val", "test")
    split_of = [names[s] for s, n in enumerate(splits) for _ in range(n)]
    for task in ("in-hospital-mortality", "phenotyping"):
        for folder in ("train", "test"):
            (ehr / task / folder).mkdir(parents=True)
        for split in names:
            rows = []
            for i in (i for i in range(total) if split_of[i] == split):
                stay = f"{100 + i}_episode1_timeseries.csv"
                folder = "test" if split == "test" else "train"
                text = episode_text([
                    {"Hours": 0.5, "Heart Rate": 80 + i, "Glascow coma scale total": "15"},
                    {"Hours": 3.0 + i, "Heart Rate": 90, "Glucose": 140 + i},
                    {"Hours": 60.0, "Heart Rate": 100, "Temperature": 37.0},
                ])
                (ehr / task / folder / stay).write_text(text)
                if task == "in-hospital-mortality":
                    rows.append({"stay": stay, "period_length": 0, "stay_id": 1000 + i,
                                 "y_true": i % 2})
                else:
                    labels = {p: int((i + k) % 3 == 0) for k, p in enumerate(PHENOTYPES)}
                    rows.append({"stay": stay, "period_length": 70.0 + i, "stay_id": 1000 + i,
                                 **labels})
            columns = (["stay", "period_length", "stay_id"]
                       + (["y_true"] if task == "in-hospital-mortality" else list(PHENOTYPES)))
            pd.DataFrame(rows, columns=columns).to_csv(ehr / task / f"{split}_listfile.csv",
                                                       index=False)
    metadata, chexpert, split_rows = [], [], []
    for i, shots in images.items():
        for k, (hours, view) in enumerate(shots):
            when = INTIME + timedelta(days=i, hours=hours)
            dicom, study = f"d{i}-{k}", 50000 + 10 * i + k
            metadata.append({"dicom_id": dicom, "subject_id": 100 + i, "study_id": study,
                             "ViewPosition": view, "StudyDate": when.strftime("%Y%m%d"),
                             "StudyTime": float(when.strftime("%H%M%S")) + 0.25})
            chexpert.append({"subject_id": 100 + i, "study_id": study,
                             **{name: [1, 0, -1, ""][(i + j) % 4]
                                for j, name in enumerate(CHEXPERT_LABELS)}})
            ehr_split = {"train": "train", "val": "validate", "test": "test"}[split_of[i]]
            split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": 100 + i,
                               "split": ehr_split})
            _jpeg(cxr / "resized" / f"{dicom}.jpg", seed=i * 10 + k)
    pd.DataFrame(metadata, columns=["dicom_id", "subject_id", "study_id", "ViewPosition",
                                    "StudyDate", "StudyTime"]).to_csv(
        cxr / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame(chexpert, columns=["subject_id", "study_id", *CHEXPERT_LABELS]).to_csv(
        cxr / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    frame = pd.DataFrame(split_rows, columns=["dicom_id", "study_id", "subject_id", "split"])
    frame.assign(split="train").to_csv(cxr / "mimic-cxr-2.0.0-split.csv", index=False)
    frame.to_csv(cxr / "mimic-cxr-ehr-split.csv", index=False)
    return ehr, cxr
