"""Threaded reading and chunked discretization give the same arrays and errors as one piece."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusebench.data import ehr_build
from fusebench.data.discretizer import discretize
from fusebench.data.ehr_build import discretized_chunks
from fusebench.data.readers import read_episodes
from fusebench.errors import FusebenchError

try:  # tests/ may or may not be a package
    from tests.test_data_helpers import CONFIG, episode_text
except ImportError:
    from test_data_helpers import CONFIG, episode_text

GCS_EYE = "Glascow coma scale eye opening"


def _episodes(folder: Path, count: int) -> tuple[list[Path], np.ndarray]:
    """Small varied episodes: categorical strings, rows before admission and past the end."""
    eyes = CONFIG.possible_values[GCS_EYE]
    paths = []
    for k in range(count):
        rows = [{"Hours": -2.0 + (k % 3), "Heart Rate": 60 + k},
                {"Hours": 1.5, GCS_EYE: eyes[k % len(eyes)], "pH": 7.3},
                {"Hours": 4.0 + k % 5, "Glucose": 100 + k, GCS_EYE: ""},
                {"Hours": 30.0, "Weight": 70 + k}]
        path = folder / f"{k}_episode1_timeseries.csv"
        path.write_text(episode_text(rows))
        paths.append(path)
    return paths, np.array([6.0 + k % 7 for k in range(count)])


def test_two_threads_read_what_one_reads(tmp_path: Path) -> None:
    paths, _ = _episodes(tmp_path, 150)  # enough files for two pieces
    one = read_episodes(paths, ["x"] * len(paths), CONFIG, threads=1)
    two = read_episodes(paths, ["x"] * len(paths), CONFIG)
    for field in ("hours", "stay", "values", "line"):
        np.testing.assert_array_equal(getattr(two, field), getattr(one, field))


def test_bad_cell_in_the_second_piece_names_its_file_and_line(tmp_path: Path) -> None:
    paths, _ = _episodes(tmp_path, 150)
    paths[140].write_text(episode_text([{"Hours": 1.0}, {"Hours": 2.0, GCS_EYE: "Wide open"}]))
    with pytest.raises(FusebenchError, match="140_episode1_timeseries.csv line 3: .*'Wide open'"):
        read_episodes(paths, ["x"] * len(paths), CONFIG)


def test_chunks_on_threads_equal_one_discretize_call(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    paths, ends = _episodes(tmp_path, 11)
    monkeypatch.setattr(ehr_build, "_CHUNK_STAYS", 3)  # four chunks of unequal sizes
    chunks = list(discretized_chunks(paths, ["x"] * len(paths), ends, CONFIG, workers=2))
    events = read_episodes(paths, ["x"] * len(paths), CONFIG)
    expected, before = discretize(events.hours, events.stay, events.values, ends, CONFIG)
    assert [c.stays for c in chunks] == [2, 3, 3, 3]
    features = np.concatenate([c.features for c in chunks])
    raw = np.concatenate([c.raw_continuous for c in chunks])
    categorical = np.setdiff1d(np.arange(CONFIG.width), CONFIG.continuous_columns)
    np.testing.assert_array_equal(features[:, categorical], expected[:, categorical])
    np.testing.assert_array_equal(raw, expected[:, CONFIG.continuous_columns])
    skipped = [(s["file"], s["line"], s["rows"]) for c in chunks for s in c.skips]
    assert len(skipped) == int(before.sum()) > 0  # -2 h and -1 h rows; 0 h is bin 0
    assert all(line == 2 and rows == 1 for _, line, rows in skipped)
