"""The mimic3-benchmarks discretizer and normalizer, vectorised over every event of many stays.

Rules (MedFuse / mimic3-benchmarks, timestep 1 h, start time zero, "previous" imputation, masks):

- a stay of ``end`` hours has ``int(end / timestep + 1 - eps)`` bins, ``eps = 1e-6``;
- a row at ``t`` hours goes to bin ``int(t / timestep - eps)`` (truncation toward zero); rows with
  ``t > end + eps`` are skipped; within a bin the last row's value wins;
- an unobserved bin repeats the channel's previous observed value, or its normal value before the
  first observation; masks (1 = observed in that bin) close the 76 features;
- categorical channels are one-hot in ``possible_values`` order.

No Python loop runs over events or bins: one running maximum of "last row with a value" per
channel (``np.maximum.accumulate``) gives both the last value of each bin and the forward fill.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from fusebench.errors import FusebenchError

__all__ = [
    "EPS",
    "VALUE_RANGES_ENV",
    "Binned",
    "DiscretizerConfig",
    "bin_counts",
    "bin_events",
    "discretize",
    "encode",
    "load_discretizer_config",
    "load_medfuse_normalizer",
    "load_value_ranges",
    "normalize",
    "normalizer_statistics",
    "value_bounds",
]

EPS = 1e-6
VALUE_RANGES_ENV = "FUSEBENCH_VALUE_RANGES"


@dataclass(frozen=True)
class DiscretizerConfig:
    """Channels, categories and normal values of ``discretizer_config.json``.

    Attributes:
        channels: the 17 channel names in ``id_to_channel`` order (episode CSV column order).
        possible_values: per categorical channel, its values in one-hot order (empty otherwise).
        normal_values: per channel, the value imputed before the first observation (as text).
        timestep: bin width in hours.
    """

    channels: tuple[str, ...]
    possible_values: dict[str, tuple[str, ...]]
    normal_values: dict[str, str]
    timestep: float = 1.0

    def is_categorical(self, channel: str) -> bool:
        return bool(self.possible_values[channel])

    @property
    def begin(self) -> np.ndarray:
        """First feature column of each channel."""
        widths = [max(len(self.possible_values[c]), 1) for c in self.channels]
        return np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)

    @property
    def mask_start(self) -> int:
        """Column of the first mask (59 for the MedFuse configuration)."""
        return int(sum(max(len(self.possible_values[c]), 1) for c in self.channels))

    @property
    def width(self) -> int:
        """Features per bin (76)."""
        return self.mask_start + len(self.channels)

    @property
    def continuous_channels(self) -> np.ndarray:
        """Channels the normalizer z-scores, in channel order (12 for MedFuse)."""
        return np.array([i for i, c in enumerate(self.channels) if not self.is_categorical(c)],
                        dtype=np.int64)

    @property
    def continuous_columns(self) -> np.ndarray:
        """Feature columns the normalizer z-scores (2, 3, 49-58)."""
        return np.array([b for b, c in zip(self.begin, self.channels, strict=True)
                         if not self.is_categorical(c)], dtype=np.int64)

    def normal_codes(self) -> np.ndarray:
        """Normal value per channel: a float, or the category index for categorical channels."""
        return np.array([
            self.possible_values[c].index(self.normal_values[c]) if self.is_categorical(c)
            else float(self.normal_values[c]) for c in self.channels], dtype=np.float64)


@cache
def load_discretizer_config() -> DiscretizerConfig:
    """The packaged MedFuse discretizer configuration (identical to mimic3-benchmarks)."""
    text = resources.files("fusebench.data").joinpath("resources/discretizer_config.json")
    raw = json.loads(text.read_text())
    channels = tuple(raw["id_to_channel"])
    return DiscretizerConfig(
        channels=channels,
        possible_values={c: tuple(raw["possible_values"][c]) if raw["is_categorical_channel"][c]
                         else () for c in channels},
        normal_values={c: str(raw["normal_values"][c]) for c in channels},
    )


def load_value_ranges() -> dict[str, list[float | None]]:
    """Per continuous channel, the ``[low, high]`` its values must lie in (None: no bound).

    The packaged generous physical ranges (``resources/value_ranges.json``), with the channels
    of the JSON file named by ``$FUSEBENCH_VALUE_RANGES`` (``{channel: [low, high]}``) replacing
    theirs. The result is part of the cache fingerprint: other ranges, another cache entry.

    Raises:
        FusebenchError: the override file is unreadable, names an unknown or categorical
            channel, or gives a range that is not two ordered numbers (or nulls).
    """
    text = resources.files("fusebench.data").joinpath("resources/value_ranges.json")
    ranges: dict[str, list[float | None]] = json.loads(text.read_text())["ranges"]
    override = os.environ.get(VALUE_RANGES_ENV, "").strip()
    if not override:
        return ranges
    path = Path(override)
    try:
        custom = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FusebenchError(f"{path} (${VALUE_RANGES_ENV}): cannot read the value ranges "
                             f"({error}); give a JSON object {{channel: [low, high]}}") from error
    if not isinstance(custom, dict):
        raise FusebenchError(f"{path} (${VALUE_RANGES_ENV}): expected a JSON object "
                             "{channel: [low, high]}")
    for channel, bounds in custom.items():
        if channel not in ranges:
            raise FusebenchError(f"{path} (${VALUE_RANGES_ENV}): {channel!r} is not a continuous "
                                 f"channel; use one of {', '.join(sorted(ranges))}")
        numbers = [b for b in bounds if b is not None] if isinstance(bounds, list) else None
        if (numbers is None or len(bounds) != 2
                or not all(isinstance(b, int | float) and not isinstance(b, bool)
                           and math.isfinite(b) for b in numbers)
                or (len(numbers) == 2 and numbers[0] > numbers[1])):
            raise FusebenchError(f"{path} (${VALUE_RANGES_ENV}): range of {channel!r} is "
                                 f"{bounds!r}; give [low, high] with low <= high (null: no bound)")
        ranges[channel] = bounds
    return ranges


def value_bounds(config: DiscretizerConfig,
                 ranges: dict[str, list[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    """(17,) lowest and highest allowed value per channel (-inf/inf: unbounded, categorical)."""
    low = np.full(len(config.channels), -np.inf)
    high = np.full(len(config.channels), np.inf)
    for channel, name in enumerate(config.channels):
        bounds = ranges.get(name) or [None, None]
        if not config.is_categorical(name):
            low[channel] = -np.inf if bounds[0] is None else float(bounds[0])
            high[channel] = np.inf if bounds[1] is None else float(bounds[1])
    return low, high


def load_medfuse_normalizer() -> tuple[np.ndarray, np.ndarray]:
    """Means and stds (76 each) of the original MedFuse normalizer file (MIMIC-III statistics)."""
    text = resources.files("fusebench.data").joinpath("resources/medfuse_normalizer_ph_ts1.0.json")
    raw = json.loads(text.read_text())
    return np.asarray(raw["means"], dtype=np.float64), np.asarray(raw["stds"], dtype=np.float64)


def bin_counts(end_hours: np.ndarray, timestep: float = 1.0) -> np.ndarray:
    """Bins per stay: ``int(end / timestep + 1 - eps)``."""
    return np.trunc(np.asarray(end_hours, np.float64) / timestep + 1.0 - EPS).astype(np.int64)


def discretize(hours: np.ndarray, stay: np.ndarray, values: np.ndarray, end_hours: np.ndarray,
               config: DiscretizerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Discretize the events of several stays into one (total_bins, 76) float64 array.

    Args:
        hours: (R,) event times in hours since ICU admission.
        stay: (R,) index of each event's stay in ``end_hours``; rows of a stay in file order.
        values: (R, 17) float64: the channel value, or the category index for categorical
            channels; NaN where the cell was empty.
        end_hours: (S,) length of each stay's window in hours.
        config: the discretizer configuration.

    Returns:
        ``(features, before_admission)``: features (sum of bins, 76) with stays one after the
        other (stay s starts at ``cumsum(bin_counts(end_hours))[s-1]``), not yet normalized; and a
        (R,) bool mask of rows dropped because their bin would be negative (``t <= -1 + eps``),
        rows the original cannot discretize at all.

    Example:
        >>> cfg = load_discretizer_config()
        >>> row = np.full((1, 17), np.nan); row[0, 8] = 80.0
        >>> x, _ = discretize(np.array([0.5]), np.array([0]), row, np.array([2.0]), cfg)
        >>> x.shape, float(x[1, 50]), float(x[1, 59 + 8])
        ((2, 76), 80.0, 0.0)
    """
    binned = bin_events(hours, stay, values, end_hours, config)
    return encode(binned.filled, binned.observed, config), binned.before_admission


@dataclass(frozen=True)
class Binned:
    """Events of several stays in hourly bins, channel-major, before one-hot encoding.

    Attributes:
        filled: (17, total_bins) float64 value per channel and bin after "previous" imputation
            (the category index for categorical channels).
        observed: (17, total_bins) bool, True where the bin holds a row with that channel.
        before_admission: (R,) bool, rows dropped because their bin would be negative.
    """

    filled: np.ndarray
    observed: np.ndarray
    before_admission: np.ndarray


def bin_events(hours: np.ndarray, stay: np.ndarray, values: np.ndarray, end_hours: np.ndarray,
               config: DiscretizerConfig) -> Binned:
    """The binning and imputation half of :func:`discretize` (same arguments), not yet encoded."""
    counts = bin_counts(end_hours, config.timestep)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(starts[-1])

    scaled = hours / config.timestep - EPS
    before_admission = scaled <= -1.0  # truncation toward zero: bin < 0 exactly here
    # Clipped before the cast: a huge Hours (1e30) would otherwise wrap to a negative bin.
    bins = np.trunc(np.clip(scaled, -1.0, 2.0**62)).astype(np.int64)
    # ``bins < counts``: with an end a hair (< eps) past a whole hour, a row in that hair would
    # land in the next stay's first bin (the original stops on an assertion there).
    keep = ~before_admission & (hours <= np.asarray(end_hours)[stay] + EPS) & (bins < counts[stay])
    global_bin = starts[stay[keep]] + bins[keep]
    # Channel-major (17, K) rows, C-ordered (np.compress and np.take keep that; [:, mask] and
    # [:, index] would return Fortran-ordered arrays and make every later step strided).
    channel_values = np.compress(keep, values.T, axis=1) if not keep.all() else values.T
    if global_bin.size and np.any(global_bin[1:] < global_bin[:-1]):
        # Rows out of time order: a stable sort keeps file order inside each bin (last wins).
        order = np.argsort(global_bin, kind="stable")
        global_bin, channel_values = global_bin[order], np.take(channel_values, order, axis=1)

    # rows_upto[b]: rows in bins <= b (so the last such row is rows_upto[b] - 1).
    rows_in_bin = np.bincount(global_bin, minlength=total)[:total]
    rows_upto = np.cumsum(rows_in_bin)
    last_row = np.take(_last_observed_row(channel_values), rows_upto, axis=1)
    observed = last_row > (rows_upto - rows_in_bin)
    stay_first_bin = np.repeat(starts[:-1], counts)
    seen_in_stay = last_row > (rows_upto - rows_in_bin)[stay_first_bin]
    carried = _take_rows(channel_values, last_row)
    filled = np.where(seen_in_stay, carried, config.normal_codes()[:, None])
    return Binned(filled, observed, before_admission)


def _last_observed_row(channel_values: np.ndarray) -> np.ndarray:
    """(C, K + 1): per channel, 1 + the last row <= k with a value (0 = none); column 0 is 0.

    One running maximum over all rows replaces both "last value in a bin" and the forward fill:
    the value a bin holds is the last observed value at or before its last row.
    """
    n_channels, n_rows = channel_values.shape
    index_type = np.int32 if n_rows < np.iinfo(np.int32).max else np.int64
    last = np.zeros((n_channels, n_rows + 1), dtype=index_type)
    # (has value) * (1 + row): a product is several times faster than a masked copy here.
    np.multiply(~np.isnan(channel_values), np.arange(1, n_rows + 1, dtype=index_type),
                out=last[:, 1:])
    return np.maximum.accumulate(last, axis=1, out=last)


def _take_rows(channel_values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``channel_values[c, rows[c] - 1]`` per channel, NaN where ``rows`` is 0 (no row)."""
    n_channels, n_rows = channel_values.shape
    padded = np.empty((n_channels, n_rows + 1))
    padded[:, 0] = np.nan
    padded[:, 1:] = channel_values
    flat = rows + (np.arange(n_channels) * (n_rows + 1))[:, None]
    return padded.ravel().take(flat)


def encode(filled: np.ndarray, observed: np.ndarray, config: DiscretizerConfig,
           dtype: type = np.float64) -> np.ndarray:
    """(total_bins, 76): one-hot categorical channels, continuous values, then the masks.

    Args:
        filled: (17, total_bins) values per channel (category index for categorical ones).
        observed: (17, total_bins) masks.
        config: the discretizer configuration.
        dtype: of the result; one-hots and masks are exact in any float type.
    """
    total = filled.shape[1]
    features = np.zeros((total, config.width), dtype=dtype)
    rows = np.arange(total)
    for channel, (name, begin) in enumerate(zip(config.channels, config.begin, strict=True)):
        if config.is_categorical(name):
            features[rows, begin + filled[channel].astype(np.int64)] = 1
        else:
            features[:, begin] = filled[channel]
    features[:, config.mask_start:] = observed.T.astype(dtype)  # faster than bool -> float
    return features


def normalizer_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means and stds over all rows, computed the way mimic3-benchmarks' Normalizer does.

    ``std = sqrt((sum_sq - 2 sum mean + N mean^2) / (N - 1))``, floored at 1e-7.
    """
    count = features.shape[0]
    total = features.sum(axis=0, dtype=np.float64)
    total_sq = np.square(features, dtype=np.float64).sum(axis=0)
    means = total / count
    variance = (total_sq - 2.0 * total * means + count * means**2) / max(count - 1, 1)
    stds = np.sqrt(np.maximum(variance, 0.0))
    stds[stds < 1e-7] = 1e-7
    return means, stds


def normalize(features: np.ndarray, means: np.ndarray, stds: np.ndarray,
              columns: np.ndarray) -> np.ndarray:
    """Z-score ``columns`` of ``features`` (a copy); other columns are returned unchanged."""
    out = np.array(features, dtype=np.float64, copy=True)
    out[:, columns] = (out[:, columns] - means[columns]) / stds[columns]
    return out
