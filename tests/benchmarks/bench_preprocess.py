"""Preprocessing throughput: vectorised reader + discretizer vs a per-episode, per-row implementation.

Run: ``.venv/bin/pytest tests/benchmarks/bench_preprocess.py --benchmark-only`` (both timings), or
``.venv/bin/python tests/benchmarks/bench_preprocess.py`` for the ratio on one line.
Both produce identical arrays (checked before timing). Target: >= 20x.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_data_helpers import CONFIG, HEADER, reference_discretize

from benchmark.data.discretizer import discretize
from benchmark.data.readers import read_episodes

STAYS, ROWS_PER_STAY = 400, 120


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
    events = read_episodes(paths, ["bench"] * len(paths), CONFIG)
    return discretize(events.hours, events.stay, events.values, ends, CONFIG)[0]


def per_row(paths: list[Path], ends: np.ndarray) -> np.ndarray:
    """The original's way: open each episode, csv-split it, discretize it row by row."""
    out = []
    for path, end in zip(paths, ends, strict=True):
        with path.open() as stream:
            rows = list(csv.reader(stream))[1:]
        out.append(reference_discretize(rows, float(end)))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    paths, ends = make_episodes(tmp_path_factory.mktemp("episodes"))
    np.testing.assert_array_equal(vectorised(paths, ends), per_row(paths, ends))
    return paths, ends


def test_preprocess_vectorised(benchmark, episodes) -> None:
    benchmark.pedantic(vectorised, args=episodes, rounds=5, iterations=1)


def test_preprocess_per_row(benchmark, episodes) -> None:
    benchmark.pedantic(per_row, args=episodes, rounds=1, iterations=1)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths, ends = make_episodes(Path(folder))
        fast = vectorised(paths, ends)
        assert np.array_equal(fast, per_row(paths, ends))
        start = time.perf_counter()
        for _ in range(3):
            vectorised(paths, ends)
        fast_s = (time.perf_counter() - start) / 3
        start = time.perf_counter()
        per_row(paths, ends)
        slow_s = time.perf_counter() - start
    print(f"{len(paths)} stays, {fast.shape[0]} bins: vectorised {fast_s:.3f} s, per-row "
          f"{slow_s:.3f} s, speed-up {slow_s / fast_s:.1f}x")


if __name__ == "__main__":
    main()
