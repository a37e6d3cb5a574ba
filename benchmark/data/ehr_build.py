"""Discretize + normalize every stay of a task into one float32 array with int64 offsets.

Stays are processed in chunks, two at a time on threads, and streamed to disk (bounded memory at
MIMIC scale); the unnormalized continuous columns are kept in float64 on disk until the training
statistics are known, so normalisation happens in float64 exactly as the original, and only the
result is stored as float32.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from fusebench.data.discretizer import (
    DiscretizerConfig,
    bin_counts,
    bin_events,
    encode,
    load_discretizer_config,
    load_medfuse_normalizer,
    normalizer_statistics,
)
from fusebench.data.readers import read_episodes

__all__ = ["EhrChunk", "build_ehr_arrays", "discretized_chunks", "stay_end_hours"]

_CHUNK_STAYS = 1000
_NORMALIZE_ROWS = 1 << 18
_WORKERS = 2  # chunks discretized at once (the target machines have 2 cores)
Item = TypeVar("Item")
Result = TypeVar("Result")


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
    ehr_path, raw_path = folder / "ehr.npy", folder / "continuous-raw.npy"
    skips: list[dict] = []
    total = int(offsets[-1])
    # Plain sequential writes, not a memory map: written pages are not held in this process's
    # resident memory, so peak RSS stays at a few chunks whatever the cohort size.
    with ehr_path.open("wb") as ehr_file, raw_path.open("wb") as raw_file:
        ehr_header = _write_npy_header(ehr_file, np.float32, (total, config.width))
        raw_header = _write_npy_header(raw_file, np.float64, (total, len(columns)))
        for chunk in discretized_chunks(episode_paths, origins, end_hours, config):
            chunk.features.tofile(ehr_file)
            chunk.raw_continuous.tofile(raw_file)
            skips += chunk.skips
            if advance is not None:
                advance(chunk.stays)

    raw_train = np.fromfile(raw_path, np.float64, int(offsets[train_stays]) * len(columns),
                            offset=raw_header)
    means, stds = _statistics(raw_train.reshape(-1, len(columns)), normalizer, columns,
                              config.width)
    del raw_train
    for start in range(0, total, _NORMALIZE_ROWS):
        rows = min(_NORMALIZE_ROWS, total - start)
        raw = np.fromfile(raw_path, np.float64, rows * len(columns),
                          offset=raw_header + start * len(columns) * 8)
        _normalize_rows(ehr_path, ehr_header + start * config.width * 4, (rows, config.width),
                        raw.reshape(rows, len(columns)), columns, (means, stds))
    raw_path.unlink()
    np.save(folder / "normalizer.npy", np.stack([means, stds]))
    return offsets, skips


@dataclass(frozen=True)
class EhrChunk:
    """Consecutive stays, discretized.

    Attributes:
        stays: how many stays.
        features: (bins, 76) float32; continuous columns not yet normalized.
        raw_continuous: (bins, 12) float64 continuous values (the columns ``continuous_columns``),
            which the normalizer reads before writing them z-scored into ``features``.
        skips: rows before ICU admission, one entry per episode file.
    """

    stays: int
    features: np.ndarray
    raw_continuous: np.ndarray
    skips: list[dict]


def discretized_chunks(episode_paths: Sequence[Path], origins: Sequence[str],
                       end_hours: np.ndarray, config: DiscretizerConfig,
                       workers: int | None = None) -> Iterator[EhrChunk]:
    """Read and discretize stays chunk by chunk on threads, yielding the chunks in order.

    ``workers`` threads (default 2, the target machines' cores), at least one chunk each and at
    most ``_CHUNK_STAYS`` stays per chunk (bounded memory); file reads, the CSV parser and numpy
    release the GIL, so chunks overlap.

    Example:
        >>> chunks = discretized_chunks(paths, origins, ends, config)  # doctest: +SKIP
        >>> features = np.concatenate([c.features for c in chunks])  # doctest: +SKIP
    """
    workers = workers or _WORKERS
    n_chunks = max(min(workers, len(episode_paths)), -(-len(episode_paths) // _CHUNK_STAYS))
    bounds = np.linspace(0, len(episode_paths), n_chunks + 1).astype(int).tolist()

    def discretize_chunk(first_last: tuple[int, int]) -> EhrChunk:
        first, last = first_last
        events = read_episodes(episode_paths[first:last], origins[first:last], config,
                               threads=1 if workers > 1 else None)
        binned = bin_events(events.hours, events.stay, events.values, end_hours[first:last],
                            config)
        raw = np.ascontiguousarray(binned.filled[config.continuous_channels].T)
        skips = [*events.skips, *_before_admission_skips(events, binned.before_admission,
                                                         episode_paths[first:last])]
        return EhrChunk(last - first, encode(binned.filled, binned.observed, config, np.float32),
                        raw, skips)

    yield from _in_order(discretize_chunk, list(zip(bounds[:-1], bounds[1:], strict=True)),
                         workers)


def _write_npy_header(stream: BinaryIO, dtype: type, shape: tuple[int, int]) -> int:
    """Write a ``.npy`` header for a C-ordered array; return its length in bytes."""
    np.lib.format.write_array_header_1_0(stream, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": shape})
    return stream.tell()


def _normalize_rows(ehr_path: Path, offset: int, shape: tuple[int, int], raw: np.ndarray,
                    columns: np.ndarray, statistics: tuple[np.ndarray, np.ndarray]) -> None:
    """Z-score ``columns`` of one block of ``ehr.npy`` in float64 from the raw values.

    The block is mapped, written and unmapped, so resident memory stays at one block; its pages
    stay in the file (a shared mapping), and no msync waits for the disk.
    """
    means, stds = statistics
    block = np.memmap(ehr_path, np.float32, "r+", offset=offset, shape=shape)
    block[:, columns] = (raw - means[columns]) / stds[columns]
    del block


def _in_order(function: Callable[[Item], Result], items: Sequence[Item],
              workers: int) -> Iterator[Result]:
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
