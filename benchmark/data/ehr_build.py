"""Discretize + normalize every stay of a task into one float32 array with int64 offsets.

Stays are processed in chunks (bounded memory at MIMIC scale), two at a time on threads; the
unnormalized continuous columns are kept in float64 on disk until the training statistics are
known, so normalisation happens in float64 exactly as the original, and only the result is stored
as float32.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from benchmark.data.discretizer import (
    bin_counts,
    discretize,
    load_discretizer_config,
    load_medfuse_normalizer,
    normalizer_statistics,
)
from benchmark.data.readers import read_episodes

__all__ = ["build_ehr_arrays", "stay_end_hours"]

_CHUNK_STAYS = 1000
_WORKERS = 2  # chunks discretized at once (the target machines have 2 cores)
T = TypeVar("T")
R = TypeVar("R")


def stay_end_hours(period_hours: np.ndarray, fixed_hours: float | None) -> np.ndarray:
    """Window length per stay: the task's fixed period, else ``period_length`` (48 h if <= 0)."""
    if fixed_hours is not None:
        return np.full(len(period_hours), float(fixed_hours))
    return np.where(period_hours > 0, period_hours, 48.0)


def build_ehr_arrays(folder: Path, episode_paths: Sequence[Path], origins: Sequence[str],
                     end_hours: np.ndarray, train_stays: int, normalizer: str,
                     advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[dict]]:
    """Write ``ehr.npy`` (total_bins, 76) float32 and return ``(offsets, skips)``.

    Args:
        folder: where to write (the cache entry's temporary folder).
        episode_paths: episode CSV per stay, training stays first.
        origins: per stay, ``"listfile line N"`` for error messages.
        end_hours: window length per stay.
        train_stays: how many leading stays form the training split (normalizer statistics).
        normalizer: ``"train"`` or ``"medfuse-2022"``.
        advance: called with the number of stays done after each chunk.

    Returns:
        offsets (n_stays + 1,) int64 into the bins; skips, one per episode file with rows before
        ICU admission that no bin can hold (``{"file", "line", "reason", "rows"}``).
    """
    config = load_discretizer_config()
    counts = bin_counts(end_hours, config.timestep)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    columns = config.continuous_columns
    features = np.lib.format.open_memmap(folder / "ehr.npy", mode="w+", dtype=np.float32,
                                         shape=(int(offsets[-1]), config.width))
    raw_path = folder / "continuous-raw.npy"
    raw = np.lib.format.open_memmap(raw_path, mode="w+", dtype=np.float64,
                                    shape=(int(offsets[-1]), len(columns)))
    skips: list[dict] = []
    chunks = [(first, min(first + _CHUNK_STAYS, len(episode_paths)))
              for first in range(0, len(episode_paths), _CHUNK_STAYS)]

    def discretize_chunk(bounds: tuple[int, int]) -> tuple[np.ndarray, list[dict]]:
        first, last = bounds
        events = read_episodes(episode_paths[first:last], origins[first:last], config)
        chunk, before = discretize(events.hours, events.stay, events.values,
                                   end_hours[first:last], config)
        return chunk, _before_admission_skips(events, before, episode_paths[first:last])

    for (first, last), (chunk, chunk_skips) in zip(
            chunks, _in_order(discretize_chunk, chunks, _WORKERS), strict=True):
        features[offsets[first]:offsets[last]] = chunk
        raw[offsets[first]:offsets[last]] = chunk[:, columns]
        skips += chunk_skips
        if advance is not None:
            advance(last - first)

    means, stds = _statistics(raw[:offsets[train_stays]], normalizer, columns, config.width)
    for start in range(0, int(offsets[-1]), 1 << 18):
        block = raw[start:start + (1 << 18)]
        features[start:start + len(block), columns] = (block - means[columns]) / stds[columns]
    features.flush()
    del features, raw
    raw_path.unlink()
    np.save(folder / "normalizer.npy", np.stack([means, stds]))
    return offsets, skips


def _in_order(function: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """``map(function, items)`` on ``workers`` threads, in order, at most ``workers`` ahead.

    Bounded look-ahead keeps memory at a few chunks; numpy and the CSV parser release the GIL,
    so chunks overlap. The first failing item (in order) raises; later ones are cancelled.
    """
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(workers)
    try:
        pending = deque(pool.submit(function, item) for item in items[:workers])
        for item in items[workers:]:
            result = pending.popleft().result()
            pending.append(pool.submit(function, item))
            yield result
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _statistics(raw_train: np.ndarray, normalizer: str, columns: np.ndarray,
                width: int) -> tuple[np.ndarray, np.ndarray]:
    """Means/stds (width each) of the chosen normalizer; only ``columns`` are ever applied."""
    if normalizer == "medfuse-2022":
        return load_medfuse_normalizer()
    means, stds = np.zeros(width), np.ones(width)
    if len(raw_train):
        means[columns], stds[columns] = normalizer_statistics(np.asarray(raw_train))
    return means, stds


def _before_admission_skips(events, before: np.ndarray, paths: Sequence[Path]) -> list[dict]:
    if not before.any():
        return []
    stays, first_rows, rows = np.unique(events.stay[before], return_index=True,
                                        return_counts=True)
    lines = events.line[before][first_rows]
    return [{"file": str(paths[int(s)]), "line": int(line), "rows": int(n),
             "reason": "Hours before ICU admission (bin < 0): row not discretized"}
            for s, line, n in zip(stays, lines, rows, strict=True)]
