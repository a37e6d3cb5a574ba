"""Each bad input gives a one-line FusebenchError naming file and line, never a half-written cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusebench.data import DataConfig, prepare
from fusebench.data.cache import _HOST
from fusebench.data.demo import ensure_demo
from fusebench.data.images import decode_image, resize_to_width
from fusebench.errors import FusebenchError
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY

try:  # tests/ may or may not be a package
    from tests.test_data_helpers import CONFIG, episode_text, make_dataset
except ImportError:
    from test_data_helpers import CONFIG, episode_text, make_dataset


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
    # No entry and no temporary folder (both are folders; files such as digest memos may stay).
    assert not cache.exists() or not [p for p in cache.iterdir() if p.is_dir()]
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


def _episode(ehr: Path, name: str = "102", folder: str = "train") -> Path:
    return ehr / IHM / folder / f"{name}_episode1_timeseries.csv"


@pytest.mark.parametrize("cell", ["1e400", "-1e400", "-1e30", "5000"])
def test_absurd_value_is_a_counted_skip_never_nan(tmp_path: Path, cell: str) -> None:
    # Before: one 1e400 (inf) made the normalizer's mean and std of Heart Rate NaN, so the
    # channel was NaN for every stay; -1e30 was accepted and swamped the statistics.
    ehr, cxr = make_dataset(tmp_path)
    path = _episode(ehr)
    path.write_text(episode_text([{"Hours": 1, "Heart Rate": 80},
                                  {"Hours": 2, "Heart Rate": cell, "Glucose": 120}]))
    data = _prepare(ehr, cxr, tmp_path)
    assert np.isfinite(data._arrays["ehr"]).all()
    assert [(s["file"], s["line"], s["rows"]) for s in data.skips] == [(str(path), 3, 1)]
    assert data.skips[0]["reason"].startswith("Heart Rate outside [0, 1000]")
    # The cell counts as empty: Heart Rate's mask is 0 in hour 2, Glucose's mask is 1.
    view = data.cohort("train", "partial")
    row = int(np.flatnonzero(view.stay_ids == 1002)[0])
    ehr_bins = next(view.batches(len(view), shuffle=False))["ehr"][row]
    channels = list(CONFIG.channels)
    assert ehr_bins[1, CONFIG.mask_start + channels.index("Heart Rate")] == 0
    assert ehr_bins[1, CONFIG.mask_start + channels.index("Glucose")] == 1


def test_value_ranges_are_configurable_and_part_of_the_fingerprint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ehr, cxr = make_dataset(tmp_path)
    default = _prepare(ehr, cxr, tmp_path)
    assert default.skips == []
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({"Heart Rate": [0, 85], "Glucose": [None, None]}))
    monkeypatch.setenv("FUSEBENCH_VALUE_RANGES", str(ranges))
    narrow = _prepare(ehr, cxr, tmp_path)
    assert narrow.fingerprint != default.fingerprint
    assert {s["reason"].split(":")[0] for s in narrow.skips} == {"Heart Rate outside [0, 85]"}
    ranges.write_text(json.dumps({"Heart rate": [0, 85]}))
    _expect_error(lambda: _prepare(ehr, cxr, tmp_path), "ranges.json", "'Heart rate'",
                  "Heart Rate")
    ranges.write_text(json.dumps({"Heart Rate": [90, 10]}))
    _expect_error(lambda: _prepare(ehr, cxr, tmp_path), "ranges.json", "low <= high")


def _expect_error(call, *fragments: str) -> str:
    with pytest.raises(FusebenchError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("hours", ["inf", "-inf"])
def test_non_finite_hours_named_as_such(tmp_path: Path, hours: str) -> None:
    # Before: Hours "inf" was reported as a row "before ICU admission" (its bin wrapped).
    ehr, cxr = make_dataset(tmp_path)
    _episode(ehr).write_text(episode_text([{"Hours": 1, "Heart Rate": 80},
                                           {"Hours": hours, "Heart Rate": 90}]))
    message = _expect(ehr, cxr, tmp_path, "102_episode1_timeseries.csv line 3", "not a finite")
    assert "before ICU admission" not in message


def test_huge_hours_is_after_the_window_not_before_admission(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _episode(ehr).write_text(episode_text([{"Hours": 1, "Heart Rate": 80},
                                           {"Hours": "1e30", "Heart Rate": 90}]))
    assert _prepare(ehr, cxr, tmp_path).skips == []  # past the window: dropped as the original


@pytest.mark.parametrize("where", ["numeric", "categorical", "last byte"])
def test_non_utf8_byte_in_episode_names_file_and_line(tmp_path: Path, where: str) -> None:
    ehr, cxr = make_dataset(tmp_path)
    path = _episode(ehr, "104")
    text = episode_text([{"Hours": 1, "Heart Rate": 80},
                         {"Hours": 2, "Heart Rate": 81, "Glascow coma scale total": "15"}])
    raw = text.encode()
    if where == "numeric":
        raw = raw.replace(b"81", b"8\xff1")
    elif where == "categorical":
        raw = raw.replace(b",15,", b",1\xe95,")
    else:
        raw = raw[:-1] + b"\xe9\n"
    path.write_bytes(raw)
    _expect(ehr, cxr, tmp_path, "104_episode1_timeseries.csv line 3", "not UTF-8")


def test_non_utf8_byte_in_listfile_names_line(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    path = ehr / IHM / "test_listfile.csv"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"_episode1", b"_\xe9pisode1")
    path.write_bytes(b"\n".join(lines))
    _expect(ehr, cxr, tmp_path, "test_listfile.csv line 3", "byte 0xe9", "not UTF-8")


@pytest.mark.parametrize("stay_id", ["3.6e7", "12345678901234567890", "1001.5", "inf"])
def test_stay_id_that_is_not_plain_digits_is_refused(tmp_path: Path, stay_id: str) -> None:
    # Before: 3.6e7 became 36000000 and 20 digits wrapped to -9223372036854775808.
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(ehr / IHM / "train_listfile.csv",
              lambda f: f.loc.__setitem__((2, "stay_id"), stay_id))
    _expect(ehr, cxr, tmp_path, "train_listfile.csv line 4", "'stay_id'", repr(stay_id),
            "expected an integer")


def test_stay_id_in_icu_stay_table_is_checked_as_text(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(ehr / "root" / "all_stays.csv", lambda f: f.loc.__setitem__((1, "stay_id"), "1e3"))
    _expect(ehr, cxr, tmp_path, "all_stays.csv line 3", "'1e3'")


def test_header_only_episode_is_reported(tmp_path: Path) -> None:
    ehr, cxr = make_dataset(tmp_path)
    path = _episode(ehr, "105")
    path.write_text(episode_text([]))
    data = _prepare(ehr, cxr, tmp_path)
    assert data.skips == [{"file": str(path), "line": 1, "reason": "episode file has a header "
                           "only: stay kept, every hour imputed with normal values"}]
    assert data.info()["skips"]["total"] == 1


def test_no_paired_stay_at_all_names_the_metadata_file(tmp_path: Path) -> None:
    # Before: ViewPosition blank everywhere ended in IndexError while building a cohort.
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(cxr / "mimic-cxr-2.0.0-metadata.csv",
              lambda f: f.__setitem__("ViewPosition", ""))
    data = _prepare(ehr, cxr, tmp_path)
    assert data.info()["splits"]["train"]["paired"]["stays"] == 0  # diagnosis still works
    for cohort in ("paired", "partial"):
        _expect_error(lambda c=cohort: data.cohort("train", c), "mimic-cxr-2.0.0-metadata.csv",
                      "no image pairs", "ViewPosition")


def _png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


def test_16_bit_image_decodes_like_its_8_bit_original(tmp_path: Path) -> None:
    # Before: Pillow's convert("L") clipped 16-bit values at 255: 98% white.
    grey = np.random.default_rng(0).integers(0, 256, (52, 40)).astype(np.uint8)
    _png(tmp_path / "eight.png", grey)
    _png(tmp_path / "sixteen.png", grey.astype(np.uint16) * 257)
    eight = decode_image(tmp_path / "eight.png", 16)
    sixteen = decode_image(tmp_path / "sixteen.png", 16)
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    np.testing.assert_array_equal(sixteen, eight)
    assert (sixteen == 255).mean() < 0.1


def test_16_bit_image_is_resized_for_prepare_cxr(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).integers(0, 256, (40, 30)).astype(np.uint8)
    _png(tmp_path / "sixteen.png", grey.astype(np.uint16) * 257)
    resize_to_width(tmp_path / "sixteen.png", tmp_path / "out.jpg", width=30)
    written = np.asarray(Image.open(tmp_path / "out.jpg").convert("L"), dtype=np.float64)
    assert abs(written.mean() - grey.mean()) < 3


def test_float_image_is_refused_naming_file_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((20, 20), 0.5, np.float32)).save(path)
    _expect_error(lambda: decode_image(path, 16), "float.tif", "mode F")


def test_orphaned_build_folders_are_removed_by_the_next_build(tmp_path: Path) -> None:
    # Before: a killed cache build left its hidden .tmp folder (120 MB) forever.
    ehr, cxr = make_dataset(tmp_path)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = int(finished.stdout)  # a process that has ended
    cache = tmp_path / "cache"
    cache.mkdir()
    orphans = [cache / f".in-hospital-mortality-0123.{_HOST}-{dead}.tmp",
               cache / f".radiology-4567.{dead}.tmp"]  # the naming before hosts were added
    elsewhere = cache / f".in-hospital-mortality-0123.other-node-{dead}.tmp"
    alive = cache / f".in-hospital-mortality-0123.{_HOST}-{os.getppid()}.tmp"
    for folder in [*orphans, elsewhere, alive]:
        folder.mkdir()
        (folder / "ehr.npy").write_bytes(b"\0" * 1000)
    _prepare(ehr, cxr, tmp_path)
    assert not any(folder.exists() for folder in orphans)
    assert elsewhere.exists() and alive.exists()  # maybe a live build on another node / here


def test_unwritable_home_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: NotADirectoryError from mkdir, an internal error naming no file.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FUSEBENCH_HOME", str(blocker / "home"))
    _expect_error(lambda: ensure_demo("tiny", progress=False), str(blocker / "home"),
                  "cannot write", "FUSEBENCH_HOME")


def test_subject_id_of_the_cxr_metadata_is_checked_as_text(tmp_path: Path) -> None:
    # A float round trip would pair an image with subject 36000000 (or another, past 2**53).
    ehr, cxr = make_dataset(tmp_path)
    _edit_csv(cxr / "mimic-cxr-2.0.0-metadata.csv",
              lambda f: f.loc.__setitem__((1, "subject_id"), "1.02e2"))
    _expect(ehr, cxr, tmp_path, "mimic-cxr-2.0.0-metadata.csv line 3", "'subject_id'", "'1.02e2'")
