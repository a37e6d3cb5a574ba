"""Pairing and cohorts on a hand-made fixture; cache reuse/rebuild; batches."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusebench.cli.data import data_group
from fusebench.data import DataConfig, prepare
from fusebench.data.cache import ensure_entry
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY, PHENOTYPING

try:  # tests/ may or may not be a package
    from tests.test_data_helpers import make_dataset
except ImportError:
    from test_data_helpers import make_dataset

# Stay i (stay_id 1000+i, 72 h ICU stay): its images as (hours after intime, view).
IMAGES = {
    0: [(10.0, "AP")],                               # paired, both windows
    1: [(47.9, "AP"), (-0.5, "AP")],                 # inside 48 h; the one before intime never
    2: [(50.0, "AP"), (20.0, "PA")],                 # AP after 48 h: full-stay only; PA never
    3: [(5.0, "AP"), (30.0, "AP"), (30.0, "PA")],    # several: the latest AP (30 h) wins
    4: [(73.0, "AP")],                               # after outtime: never
    5: [(48.0, "AP")],                               # 48 h after intime exactly: inside both
    6: [(0.0, "AP")],                                # val stay, at intime exactly
    8: [(12.0, "PA")],                               # test stay, PA only: never
}
# Stays 7 (val) and 9 (test) have no image; _add_image_of_another_stay adds one of subject 100
# taken during stay 9's dates, which must pair with neither.


def _config(tmp_path: Path, **changes) -> DataConfig:
    ehr, cxr = tmp_path / "data" / "ehr", tmp_path / "data" / "cxr"
    if not ehr.exists():
        make_dataset(tmp_path / "data", images=IMAGES)
        _add_image_of_another_stay(cxr)
    return replace(DataConfig(ehr, cxr, image_size=16, cache_dir=tmp_path / "cache"), **changes)


def _add_image_of_another_stay(cxr: Path) -> None:
    """Subject 100 (stay 0, day 0) gets an AP image on day 9: stay 9's dates, other subject."""
    metadata = cxr / "mimic-cxr-2.0.0-metadata.csv"
    metadata.write_text(metadata.read_text() + "dx,100,59999,AP,21500110,090000.0\n")


def _paired(data, split: str) -> dict[int, str]:
    view = data.cohort(split, "paired")
    return dict(zip(view.stay_ids.tolist(), view.dicom_ids.tolist(), strict=True))


def test_ihm_48h_pairing_membership(tmp_path: Path) -> None:
    data = prepare(_config(tmp_path), IN_HOSPITAL_MORTALITY, progress=False)
    assert _paired(data, "train") == {1000: "d0-0", 1001: "d1-0", 1003: "d3-1", 1005: "d5-0"}
    assert _paired(data, "val") == {1006: "d6-0"}
    assert _paired(data, "test") == {}
    partial = data.cohort("test", "partial")
    assert partial.stay_ids.tolist() == [1008, 1009] and not partial.has_cxr.any()
    assert data.cohort("train", "partial").stay_ids.tolist() == list(range(1000, 1006))


def test_full_stay_window_adds_late_images(tmp_path: Path) -> None:
    data = prepare(_config(tmp_path, cxr_window="full-stay"), IN_HOSPITAL_MORTALITY,
                   progress=False)
    assert _paired(data, "train") == {1000: "d0-0", 1001: "d1-0", 1002: "d2-0", 1003: "d3-1",
                                      1005: "d5-0"}
    phenotyping = prepare(_config(tmp_path), PHENOTYPING, progress=False)
    assert _paired(phenotyping, "train") == _paired(data, "train")


def test_every_stay_once_and_labels_follow_listfile(tmp_path: Path) -> None:
    data = prepare(_config(tmp_path), IN_HOSPITAL_MORTALITY, progress=False)
    ids = np.concatenate([data.cohort(s, "partial").stay_ids for s in ("train", "val", "test")])
    assert sorted(ids.tolist()) == list(range(1000, 1010))
    view = data.cohort("train", "partial")
    assert view.labels[:, 0].tolist() == [i % 2 for i in range(6)]
    info = data.info()
    assert info["splits"]["train"]["paired"]["stays"] == 4
    assert info["splits"]["train"]["partial"]["positives"] == {"y_true": 3}
    assert info["splits"]["train"]["partial"]["paired_fraction"] == pytest.approx(4 / 6)


def test_batches_shapes_padding_and_determinism(tmp_path: Path) -> None:
    data = prepare(_config(tmp_path), PHENOTYPING, progress=False)
    view = data.cohort("train", "partial")
    batch = next(view.batches(5, shuffle=False))
    assert batch["ehr"].dtype == torch.float32 and batch["ehr"].shape[2] == 76
    lengths = batch["ehr_lengths"]
    assert lengths.dtype == torch.int64 and lengths.tolist() == [70 + i for i in range(5)]
    assert batch["ehr"].shape[1] == int(lengths.max())
    assert (batch["ehr"][0, 70:] == 0).all()  # padding after the 70 bins of stay 0
    assert (batch["ehr"][0, :70].abs().sum(dim=1) > 0).all()  # every real bin has its one-hots
    assert batch["cxr"].shape == (5, 3, 16, 16) and batch["y"].shape == (5, 25)
    assert batch["has_cxr"].dtype == torch.bool
    assert batch["has_cxr"].tolist() == [True, True, True, True, False]
    assert (batch["cxr"][4] == 0).all() and (batch["cxr"][0] != 0).any()
    assert batch["stay_id"].tolist() == [1000, 1001, 1002, 1003, 1004]

    def order(seed: int) -> list[int]:
        return [i for b in view.batches(4, shuffle=True, seed=seed) for i in b["stay_id"].tolist()]

    assert order(3) == order(3) and sorted(order(3)) == list(range(1000, 1006))
    assert order(3) != order(4) or order(3) != order(5)
    first = next(view.batches(6, shuffle=True, seed=1, augment=True))["cxr"]
    again = next(view.batches(6, shuffle=True, seed=1, augment=True))["cxr"]
    plain = next(view.batches(6, shuffle=True, seed=1, augment=False))["cxr"]
    assert torch.equal(first, again) and not torch.equal(first, plain)


def test_ehr_hours_count_the_hourly_bins_of_the_cohort(tmp_path: Path) -> None:
    data = prepare(_config(tmp_path), PHENOTYPING, progress=False)
    for cohort in ("paired", "partial"):
        view = data.cohort("train", cohort)
        served = sum(int(b["ehr_lengths"].sum()) for b in view.batches(4, shuffle=False))
        assert view.ehr_hours == served
    assert data.cohort("train", "partial").ehr_hours > data.cohort("train", "paired").ehr_hours
    assert data.radiology("train").ehr_hours == 0


def test_eval_images_are_the_imagenet_normalised_centre_crop(tmp_path: Path) -> None:
    data = prepare(_config(tmp_path), IN_HOSPITAL_MORTALITY, progress=False)
    stored = np.load(data.cache_path / "images.npy")
    assert stored.dtype == np.uint8 and stored.shape[1:] == (18, 18)  # round(16 * 256 / 224)
    batch = next(data.cohort("train", "paired").batches(1, shuffle=False))
    grey = stored[0, 1:17, 1:17].astype(np.float32) / 255
    expected = (grey - 0.485) / 0.229
    np.testing.assert_allclose(batch["cxr"][0, 0].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_radiology_cohort_labels(tmp_path: Path) -> None:
    data = prepare(_config(tmp_path), IN_HOSPITAL_MORTALITY, progress=False)
    train = data.radiology("train")
    # Images of train subjects (stays 0-5) with CheXpert rows; the extra "dx" image has none.
    assert len(train) == 10
    assert set(np.unique(train.labels)) <= {0.0, 1.0}
    batch = next(train.batches(3, shuffle=False))
    assert set(batch) == {"cxr", "has_cxr", "y"} and batch["y"].shape == (3, 14)
    assert batch["has_cxr"].all()


def test_cache_reused_then_rebuilt_when_an_input_changes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = prepare(config, IN_HOSPITAL_MORTALITY, progress=False)
    assert first.cache_state == "built"
    again = prepare(config, IN_HOSPITAL_MORTALITY, progress=False)
    assert again.cache_state == "reused" and again.fingerprint == first.fingerprint
    episode = config.ehr_root / "in-hospital-mortality" / "train" / "100_episode1_timeseries.csv"
    episode.write_text(episode.read_text().replace(",80,", ",81,", 1))
    os.utime(episode, ns=(1, 1))
    changed = prepare(config, IN_HOSPITAL_MORTALITY, progress=False)
    assert changed.cache_state == "built" and changed.fingerprint != first.fingerprint
    other_config = prepare(replace(config, normalizer="medfuse-2022"), IN_HOSPITAL_MORTALITY,
                           progress=False)
    assert other_config.fingerprint != changed.fingerprint


def test_truncated_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    config = _config(tmp_path)
    data = prepare(config, IN_HOSPITAL_MORTALITY, progress=False)
    ehr = data.cache_path / "ehr.npy"
    expected = np.load(ehr).copy()
    ehr.write_bytes(ehr.read_bytes()[:-100])
    rebuilt = prepare(config, IN_HOSPITAL_MORTALITY, progress=False)
    assert rebuilt.cache_state.startswith("rebuilt (ehr.npy has")
    np.testing.assert_array_equal(np.load(rebuilt.cache_path / "ehr.npy"), expected)


def test_interrupted_build_is_never_used(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "entry"

    def crash(tmp: Path) -> None:
        (tmp / "half.npy").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_entry(folder, crash)
    assert not folder.exists() and list(folder.parent.iterdir()) == []
    assert ensure_entry(folder, lambda tmp: (tmp / "a.json").write_text("{}")) == "built"
    assert ensure_entry(folder, lambda tmp: None) == "reused"


def test_info_command_json(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = CliRunner().invoke(data_group, [
        "info", "--json", "--task", "in-hospital-mortality", "--ehr-root", str(config.ehr_root),
        "--cxr-root", str(config.cxr_root), "--cache-dir", str(tmp_path / "cache"),
        "--image-size", "16"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)[0]
    assert summary["splits"]["val"]["paired"]["stays"] == 1
    assert summary["cache"]["state"] == "built" and summary["skips"]["total"] == 0
    table = CliRunner().invoke(data_group, [
        "info", "--task", "in-hospital-mortality", "--ehr-root", str(config.ehr_root),
        "--cxr-root", str(config.cxr_root), "--cache-dir", str(tmp_path / "cache"),
        "--image-size", "16"])
    assert table.exit_code == 0 and "reused" in table.output and "paired" in table.output
