"""Preprocessing throughput: vectorised read + discretize + normalize vs the original's per-row code.

The baseline ``original_per_row`` keeps the structure of the code MedFuse runs on every episode:
mimic3-benchmarks ``Reader._read_timeseries`` (split each line, ``np.array`` per row, ``np.stack``),
``Discretizer.transform`` (per-row, per-channel writes through ``write()``, then per-bin
"previous" imputation) and ``Normalizer.transform`` (per continuous column). Only its bookkeeping
that produces no output (unused-data statistics, the text header) is left out. A second,
leaner per-row implementation (``csv`` module + the tests' reference discretizer) is timed too,
so the ratio against a tighter per-row loop is visible.

The harness path (``vectorised``: threaded chunks of ``ehr_build.discretized_chunks`` and the
normalizer, float32 as the cache stores it) equals the original's result cast to float32; the
one-call float64 API (``discretize`` + ``normalize``) and the lean loop equal it exactly. All
is checked before timing. Target: >= 20x the original.

Run: ``.venv/bin/pytest tests/benchmarks/bench_preprocess.py --benchmark-only`` (all timings), or
``.venv/bin/python tests/benchmarks/bench_preprocess.py`` for the ratios.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_data_helpers import CONFIG, HEADER, reference_discretize

from fusebench.data.discretizer import discretize, load_medfuse_normalizer, normalize
from fusebench.data.ehr_build import discretized_chunks
from fusebench.data.readers import read_episodes

STAYS, ROWS_PER_STAY = 400, 120
MEANS, STDS = load_medfuse_normalizer()
CONTINUOUS = CONFIG.continuous_columns


def make_episodes(folder: Path, stays: int = STAYS, rows: int = ROWS_PER_STAY,
                  seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Episodes shaped like MIMIC's: sparse cells, categorical strings, several rows per hour."""
    rng = np.random.default_rng(seed)
    paths, ends = [], []
    for stay in range(stays):
        end = float(rng.integers(24, 120))
        hours = np.sort(rng.uniform(-0.5, end + 5, size=rows))
        lines = [",".join(HEADER)]
        for t in hours:
            cells = [f"{t:.4f}"]
            for name in CONFIG.channels:
                if rng.random() > 0.3:
                    cells.append("")
                elif CONFIG.is_categorical(name):
                    cells.append(rng.choice(CONFIG.possible_values[name]))
                else:
                    cells.append(f"{rng.normal(80, 10):.2f}")
            lines.append(",".join(cells))
        path = folder / f"{stay}_episode1_timeseries.csv"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
        ends.append(end)
    return paths, np.array(ends)


def vectorised(paths: list[Path], ends: np.ndarray) -> np.ndarray:
    """The harness's cache build in memory: threaded chunks, then the normalizer (float32)."""
    chunks = list(discretized_chunks(paths, ["bench"] * len(paths), ends, CONFIG))
    features = np.concatenate([chunk.features for chunk in chunks])
    raw = np.concatenate([chunk.raw_continuous for chunk in chunks])
    features[:, CONTINUOUS] = (raw - MEANS[CONTINUOUS]) / STDS[CONTINUOUS]
    return features


def vectorised_float64(paths: list[Path], ends: np.ndarray) -> np.ndarray:
    """The public one-call API: read all files (2 parse threads), discretize, normalize."""
    events = read_episodes(paths, ["bench"] * len(paths), CONFIG)
    features = discretize(events.hours, events.stay, events.values, ends, CONFIG)[0]
    return normalize(features, MEANS, STDS, CONTINUOUS)


def _original_read_timeseries(path: Path) -> tuple[np.ndarray, list[str]]:
    """mimic3-benchmarks ``Reader._read_timeseries``."""
    rows = []
    with path.open() as stream:
        header = stream.readline().strip().split(",")
        assert header[0] == "Hours"
        for line in stream:
            rows.append(np.array(line.strip().split(",")))
    return np.stack(rows), header


def _original_transform(rows: np.ndarray, header: list[str], end: float) -> np.ndarray:
    """mimic3-benchmarks ``Discretizer.transform`` (timestep 1, start zero, "previous", masks)."""
    eps, timestep = 1e-6, 1.0
    channels = list(CONFIG.channels)
    channel_to_id = {c: i for i, c in enumerate(channels)}
    times = [float(row[0]) for row in rows]
    for i in range(len(times) - 1):
        assert times[i] < times[i + 1] + eps
    n_bins = int(end / timestep + 1.0 - eps)
    begin_pos = [0] * len(channels)
    width = 0
    for i, channel in enumerate(channels):
        begin_pos[i] = width
        width += len(CONFIG.possible_values[channel]) if CONFIG.is_categorical(channel) else 1
    data = np.zeros((n_bins, width), dtype=float)
    mask = np.zeros((n_bins, len(channels)), dtype=int)
    original_value = [["" for _ in channels] for _ in range(n_bins)]

    def write(bin_id: int, channel: str, value: str) -> None:
        channel_id = channel_to_id[channel]
        if CONFIG.is_categorical(channel):
            category_id = CONFIG.possible_values[channel].index(value)
            n_values = len(CONFIG.possible_values[channel])
            one_hot = np.zeros((n_values,))
            one_hot[category_id] = 1
            for pos in range(n_values):
                data[bin_id, begin_pos[channel_id] + pos] = one_hot[pos]
        else:
            data[bin_id, begin_pos[channel_id]] = float(value)

    for row in rows:
        t = float(row[0])
        if t > end + eps:
            continue
        bin_id = int(t / timestep - eps)
        assert 0 <= bin_id < n_bins
        for j in range(1, len(row)):
            if row[j] == "":
                continue
            channel = header[j]
            mask[bin_id][channel_to_id[channel]] = 1
            write(bin_id, channel, row[j])
            original_value[bin_id][channel_to_id[channel]] = row[j]

    previous: list[list[str]] = [[] for _ in channels]
    for bin_id in range(n_bins):
        for channel in channels:
            channel_id = channel_to_id[channel]
            if mask[bin_id][channel_id] == 1:
                previous[channel_id].append(original_value[bin_id][channel_id])
                continue
            if previous[channel_id]:
                value = previous[channel_id][-1]
            else:
                value = CONFIG.normal_values[channel]
            write(bin_id, channel, value)
    return np.hstack([data, mask.astype(np.float32)])


def _original_normalize(features: np.ndarray) -> np.ndarray:
    """mimic3-benchmarks ``Normalizer.transform`` over the continuous fields."""
    out = 1.0 * features
    for column in CONTINUOUS:
        out[:, column] = (features[:, column] - MEANS[column]) / STDS[column]
    return out


def original_per_row(paths: list[Path], ends: np.ndarray) -> np.ndarray:
    """The original's way, episode after episode: read, transform, normalize."""
    out = []
    for path, end in zip(paths, ends, strict=True):
        rows, header = _original_read_timeseries(path)
        out.append(_original_normalize(_original_transform(rows, header, float(end))))
    return np.concatenate(out)


def lean_per_row(paths: list[Path], ends: np.ndarray) -> np.ndarray:
    """A tighter per-row loop: ``csv`` rows as lists, the tests' reference discretizer."""
    out = []
    for path, end in zip(paths, ends, strict=True):
        with path.open() as stream:
            rows = list(csv.reader(stream))[1:]
        out.append(_original_normalize(reference_discretize(rows, float(end))))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    paths, ends = make_episodes(tmp_path_factory.mktemp("episodes"))
    _check_identical(paths, ends)
    return paths, ends


def _check_identical(paths: list[Path], ends: np.ndarray) -> None:
    """float64 results equal exactly; the float32 cache equals the original cast to float32."""
    original = original_per_row(paths, ends)
    np.testing.assert_array_equal(vectorised_float64(paths, ends), original)
    np.testing.assert_array_equal(lean_per_row(paths, ends), original)
    np.testing.assert_array_equal(vectorised(paths, ends), original.astype(np.float32))


def test_preprocess_vectorised(benchmark, episodes) -> None:
    benchmark.pedantic(vectorised, args=episodes, rounds=10, iterations=1, warmup_rounds=1)


def test_preprocess_vectorised_float64(benchmark, episodes) -> None:
    benchmark.pedantic(vectorised_float64, args=episodes, rounds=10, iterations=1,
                       warmup_rounds=1)


def test_preprocess_original_per_row(benchmark, episodes) -> None:
    benchmark.pedantic(original_per_row, args=episodes, rounds=1, iterations=1)


def test_preprocess_lean_per_row(benchmark, episodes) -> None:
    benchmark.pedantic(lean_per_row, args=episodes, rounds=1, iterations=1)


def _best_seconds(function: Callable, paths: list[Path], ends: np.ndarray, rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        function(paths, ends)
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths, ends = make_episodes(Path(folder))
        _check_identical(paths, ends)
        fast_s = _best_seconds(vectorised, paths, ends, 10)
        float64_s = _best_seconds(vectorised_float64, paths, ends, 10)
        original_s = _best_seconds(original_per_row, paths, ends, 2)
        lean_s = _best_seconds(lean_per_row, paths, ends, 2)
    print(f"{len(paths)} stays, {int(np.sum(np.trunc(ends + 1 - 1e-6)))} bins (best of rounds)")
    for name, seconds in (("vectorised (cache build, float32)", fast_s),
                          ("vectorised (one call, float64)", float64_s)):
        print(f"{name}: {seconds:.4f} s = {original_s / seconds:.1f}x the original per-row "
              f"({original_s:.3f} s), {lean_s / seconds:.1f}x the lean per-row ({lean_s:.3f} s)")


if __name__ == "__main__":
    main()
