"""Each bad input gives a one-line FusebenchError naming file and line, never a half-written cache."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fusebench.data import DataConfig, prepare
from fusebench.errors import FusebenchError
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY

try:  # tests/ may or may not be a package
    from tests.test_data_helpers import episode_text, make_dataset
except ImportError:
    from test_data_helpers import episode_text, make_dataset


IHM = "in-hospital-mortality"


def _prepare(ehr: Path, cxr: Path, tmp_path: Path):
    config = DataConfig(ehr, cxr, image_size=16, cache_dir=tmp_path / "cache")
    return prepare(config, IN_HOSPITAL_MORTALITY, progress=False)


def _expect(ehr: Path, cxr: Path, tmp_path: Path, *fragments: str) -> str:
    with pytest.raises(FusebenchError) as caught:
        _prepare(ehr, cxr, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert not cache.exists() or not list(cache.iterdir())  # no temporary folder left either
    return message


def _edit_csv(path: Path, edit) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)


def test_missing_folder(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _expect(ehr / "nowhere", cxr, tmp_path, "nowhere", "missing folder")


def test_missing_file(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    (cxr / "mimic-cxr-2.0.0-metadata.csv").unlink()
    _expect(ehr, cxr, tmp_path, "mimic-cxr-2.0.0-metadata.csv", "missing file")


def test_renamed_column(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(ehr / IHM / "val_listfile.csv",
              lambda f: setattr(f, "columns", ["label" if c == "y_true" else c for c in f.columns]))
    _expect(ehr, cxr, tmp_path, "val_listfile.csv line 1", "'y_true'")


def test_renamed_episode_column(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    path = ehr / IHM / "train" / "101_episode1_timeseries.csv"
    path.write_text(path.read_text().replace("Heart Rate", "HeartRate", 1))
    _expect(ehr, cxr, tmp_path, "101_episode1_timeseries.csv line 1", "'Heart Rate'")


def test_text_in_continuous_channel(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    path = ehr / IHM / "train" / "102_episode1_timeseries.csv"
    path.write_text(episode_text([{"Hours": 1, "Heart Rate": 80}, {"Hours": 2, "Glucose": "high"}]))
    _expect(ehr, cxr, tmp_path, "102_episode1_timeseries.csv line 3", "Glucose", "'high'")


def test_unknown_categorical_value(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    path = ehr / IHM / "test" / "109_episode1_timeseries.csv"
    path.write_text(episode_text([{"Hours": 1, "Glascow coma scale total": "16"}]))
    _expect(ehr, cxr, tmp_path, "109_episode1_timeseries.csv line 2", "'16'")


def test_corrupt_jpeg(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    image = cxr / "resized" / "d2-0.jpg"
    image.write_bytes(image.read_bytes()[:200])
    _expect(ehr, cxr, tmp_path, "d2-0.jpg", "truncated or corrupt")


def test_listed_episode_file_absent(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    (ehr / IHM / "train" / "107_episode1_timeseries.csv").unlink()  # a val row (in train/)
    _expect(ehr, cxr, tmp_path, "val_listfile.csv line 3", "107_episode1_timeseries.csv")


def test_duplicate_stay_id(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(ehr / IHM / "test_listfile.csv", lambda f: f.loc.__setitem__((1, "stay_id"), "1001"))
    _expect(ehr, cxr, tmp_path, "test_listfile.csv line 3", "duplicate stay_id 1001")


def test_unparseable_study_time(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(cxr / "mimic-cxr-2.0.0-metadata.csv",
              lambda f: f.loc.__setitem__((2, "StudyTime"), "noon"))
    _expect(ehr, cxr, tmp_path, "mimic-cxr-2.0.0-metadata.csv line 4", "StudyTime")


def test_unparseable_study_date(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(cxr / "mimic-cxr-2.0.0-metadata.csv",
              lambda f: f.loc.__setitem__((0, "StudyDate"), "21501399"))
    _expect(ehr, cxr, tmp_path, "mimic-cxr-2.0.0-metadata.csv line 2", "StudyDate")


def test_label_outside_zero_one(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(ehr / IHM / "train_listfile.csv", lambda f: f.loc.__setitem__((3, "y_true"), "2"))
    _expect(ehr, cxr, tmp_path, "train_listfile.csv line 5", "'y_true'", "one of 0, 1")


def test_stay_escaping_the_data_root(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(ehr / IHM / "train_listfile.csv",
              lambda f: f.loc.__setitem__((0, "stay"), "../../root/all_stays.csv"))
    _expect(ehr, cxr, tmp_path, "train_listfile.csv line 2", "outside")


def test_rows_before_admission_are_counted_skips(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    path = ehr / IHM / "train" / "103_episode1_timeseries.csv"
    path.write_text(episode_text([{"Hours": -5, "Heart Rate": 1}, {"Hours": -2, "pH": 7},
                                  {"Hours": 1, "Heart Rate": 80}]))
    data = _prepare(ehr, cxr, tmp_path)
    assert data.skips == [{"file": str(path), "line": 2, "rows": 2,
                           "reason": "Hours before ICU admission (bin < 0): row not discretized"}]
    assert data.info()["skips"]["total"] == 2
