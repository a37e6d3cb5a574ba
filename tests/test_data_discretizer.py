"""The vectorised discretizer equals a per-row reference of the mimic3-benchmarks rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusebench.data.discretizer import (
    discretize,
    load_medfuse_normalizer,
    normalize,
    normalizer_statistics,
)
from fusebench.data.ehr_build import build_ehr_arrays
from fusebench.data.readers import read_episodes

try:  # tests/ may or may not be a package
    from tests.test_data_helpers import CONFIG, episode_text, reference_discretize, reference_rows
except ImportError:
    from test_data_helpers import CONFIG, episode_text, reference_discretize, reference_rows


ADVERSARIAL = {
    "several rows in one bin": ([
        {"Hours": 0.1, "Heart Rate": 70, "Glascow coma scale eye opening": "To Pain"},
        {"Hours": 0.5, "Heart Rate": 71},
        {"Hours": 0.9, "Heart Rate": 72, "Glascow coma scale eye opening": "4 Spontaneously"},
    ], 5.0),
    "bin edges and past the end": ([
        {"Hours": 0.0, "pH": 7.3}, {"Hours": 1.0, "pH": 7.31}, {"Hours": 1.000001, "pH": 7.32},
        {"Hours": 2.0, "Weight": 80}, {"Hours": 48.0, "Weight": 81},
        {"Hours": 48.0000005, "Weight": 82}, {"Hours": 48.1, "Weight": 99},
    ], 48.0),
    "negative hours": ([
        {"Hours": -3.0, "Glucose": 500}, {"Hours": -0.5, "Glucose": 110},
        {"Hours": 2.5, "Temperature": 38.1},
    ], 6.0),
    "categorical strings everywhere": ([
        {"Hours": 1.5, "Glascow coma scale motor response": "5 Localizes Pain",
         "Glascow coma scale verbal response": "1.0 ET/Trach", "Capillary refill rate": "1.0",
         "Glascow coma scale total": "7"},
        {"Hours": 4.2, "Glascow coma scale motor response": "Obeys Commands"},
    ], 7.5),
    "channels never observed": ([{"Hours": 3.0}], 4.0),
    "empty file": ([], 3.0),
    "fractional whole stay": ([{"Hours": 10.4, "Oxygen saturation": 95}], 10.5),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_discretizer_matches_per_row_reference(tmp_path: Path, name: str) -> None:
    rows, end = ADVERSARIAL[name]
    text = episode_text(rows)
    path = tmp_path / "1_episode1_timeseries.csv"
    path.write_text(text)
    events = read_episodes([path], ["listfile line 2"], CONFIG)
    features, _ = discretize(events.hours, events.stay, events.values, np.array([end]), CONFIG)
    expected = reference_discretize(reference_rows(text), end)
    assert features.shape == expected.shape == (int(end + 1 - 1e-6), 76)
    np.testing.assert_array_equal(features, expected)


def test_many_stays_at_once_equal_one_at_a_time(tmp_path: Path) -> None:
    paths, ends, expected = [], [], []
    for k, name in enumerate(sorted(ADVERSARIAL)):
        rows, end = ADVERSARIAL[name]
        path = tmp_path / f"{k}_episode1_timeseries.csv"
        path.write_text(episode_text(rows))
        paths.append(path)
        ends.append(end)
        expected.append(reference_discretize(reference_rows(path.read_text()), end))
    events = read_episodes(paths, ["x"] * len(paths), CONFIG)
    features, before = discretize(events.hours, events.stay, events.values, np.array(ends),
                                  CONFIG)
    np.testing.assert_array_equal(features, np.concatenate(expected))
    assert before.sum() == 1  # the row at -3 h


def test_known_values_of_one_bin() -> None:
    row = np.full((2, 17), np.nan)
    row[0, 8], row[1, 8] = 80.0, 95.0  # heart rate twice in bin 0: the last wins
    row[0, 3] = CONFIG.possible_values["Glascow coma scale eye opening"].index("To Speech")
    features, _ = discretize(np.array([0.2, 0.7]), np.array([0, 0]), row, np.array([3.0]), CONFIG)
    assert features[0, 50] == 95.0 and features[2, 50] == 95.0  # carried forward
    assert features[0, 59 + 8] == 1.0 and features[1, 59 + 8] == 0.0
    eye = 4 + CONFIG.possible_values["Glascow coma scale eye opening"].index("To Speech")
    assert features[:, eye].tolist() == [1.0, 1.0, 1.0]
    assert features[0, 2] == 59.0  # diastolic BP never observed: its normal value


def test_normalizer_statistics_formula_and_columns() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(5.0, 2.0, size=(500, 76))
    means, stds = normalizer_statistics(data)
    np.testing.assert_allclose(means, data.mean(axis=0))
    np.testing.assert_allclose(stds, data.std(axis=0, ddof=1))
    out = normalize(data, means, stds, CONFIG.continuous_columns)
    assert CONFIG.continuous_columns.tolist() == [2, 3, *range(49, 59)]
    np.testing.assert_array_equal(out[:, 0], data[:, 0])
    np.testing.assert_allclose(out[:, 50].mean(), 0.0, atol=1e-12)


def test_train_statistics_come_from_training_stays_only(tmp_path: Path) -> None:
    paths = []
    for k, heart_rate in enumerate((60, 100, 1000)):
        path = tmp_path / f"{k}_episode1_timeseries.csv"
        path.write_text(episode_text([{"Hours": 0.5, "Heart Rate": heart_rate}]))
        paths.append(path)
    offsets, _ = build_ehr_arrays(tmp_path, paths, ["x"] * 3, np.array([2.0, 2.0, 2.0]),
                                  train_stays=2, normalizer="train")
    means, stds = np.load(tmp_path / "normalizer.npy")
    assert means[50] == 80.0  # the 1000 of the third (non-training) stay is not in it
    features = np.load(tmp_path / "ehr.npy")
    assert features.dtype == np.float32 and offsets.tolist() == [0, 2, 4, 6]
    assert features[0, 50] == np.float32((60 - 80.0) / stds[50])
    assert not (tmp_path / "continuous-raw.npy").exists()


def test_medfuse_normalizer_file_is_used_as_is(tmp_path: Path) -> None:
    path = tmp_path / "1_episode1_timeseries.csv"
    path.write_text(episode_text([{"Hours": 0.5, "Heart Rate": 90}]))
    build_ehr_arrays(tmp_path, [path], ["x"], np.array([1.0]), 1, "medfuse-2022")
    means, stds = load_medfuse_normalizer()
    features = np.load(tmp_path / "ehr.npy")
    assert features[0, 50] == np.float32((90 - means[50]) / stds[50])
    assert features[0, 4:12].sum() == 1.0  # one-hot untouched
