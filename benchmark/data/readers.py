"""Readers of the EHR and CXR CSV files; every bad cell becomes a one-line error naming file and line.

Line numbers are 1-based file lines (the header is line 1), as an editor shows them.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from fusebench.data.discretizer import DiscretizerConfig, load_value_ranges, value_bounds
from fusebench.data.labels import check_label_header
from fusebench.data.layout import episode_path, listfile_path, require_file
from fusebench.errors import FusebenchError

__all__ = [
    "Episodes",
    "Listfile",
    "check_unique_stays",
    "numeric_column",
    "parse_study_datetime",
    "read_all_stays",
    "read_csv_checked",
    "read_episodes",
    "read_listfile",
]


def read_csv_checked(path: Path, columns: Sequence[str], what: str,
                     dtype: dict | None = None) -> pd.DataFrame:
    """Read a CSV and check it has ``columns`` (extra columns are allowed)."""
    require_file(path, what)
    try:
        frame = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError as error:
        raise FusebenchError(_not_utf8(path.read_bytes(), lambda row: f"{path} line {row + 1}",
                                       what)) from error
    except (pd.errors.ParserError, ValueError) as error:
        raise FusebenchError(f"{path}: cannot parse the {what} ({_first_line(error)})") from error
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FusebenchError(f"{path} line 1: missing column {missing[0]!r} in the {what} header "
                             f"(expected {', '.join(columns)})")
    return frame


def _not_utf8(text: bytes, locate: Callable[[int], str], what: str) -> str:
    """The message for the first byte of ``text`` that is not UTF-8, located by its row."""
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as error:
        row = text.count(b"\n", 0, error.start)
        return (f"{locate(row)}: byte 0x{text[error.start]:02x} is not UTF-8 text; save the "
                f"{what} as UTF-8")
    return f"{locate(0)}: the {what} is not UTF-8 text; save it as UTF-8"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def numeric_column(frame: pd.DataFrame, column: str, path: Path, *, integer: bool = False,
                   allowed: Sequence[float] | None = None) -> np.ndarray:
    """A column as numbers; the first empty/non-numeric/disallowed cell is an error with its line.

    Integer columns read as text (``dtype=str``) are checked digit by digit: ``3.6e7`` or a
    20-digit id would otherwise pass through a float and become another id.
    """
    if integer and not pd.api.types.is_numeric_dtype(frame[column]):
        text = frame[column].fillna("").astype(str).str.strip()
        # At most 18 digits: always inside int64, so no id wraps or rounds.
        bad = ~text.str.fullmatch(r"[+-]?\d{1,18}(\.0*)?").to_numpy(bool)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise FusebenchError(f"{path} line {row + 2}: column {column!r} is "
                                 f"{frame[column].iloc[row]!r}, expected an integer "
                                 "(digits only, at most 18)")
        return text.str.replace(r"\.0*$", "", regex=True).astype(np.int64).to_numpy()
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if integer:
        bad |= ~np.isclose(values, np.round(values)) | (np.abs(values) > 2.0**53)
    if allowed is not None:
        bad |= ~np.isin(values, allowed)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        expected = (f"one of {', '.join(f'{a:g}' for a in allowed)}" if allowed is not None
                    else "an integer" if integer else "a number")
        raise FusebenchError(f"{path} line {row + 2}: column {column!r} is "
                             f"{frame[column].iloc[row]!r}, expected {expected}")
    return values.astype(np.int64) if integer else values


@dataclass(frozen=True)
class Listfile:
    """One split's listfile: rows in file order.

    Attributes:
        path: the listfile.
        stays: episode file names (``{subject}_episode{k}_timeseries.csv``).
        episode_paths: absolute episode paths (val rows point into ``{task}/train/``).
        stay_ids: (N,) int64.
        subject_ids: (N,) int64, from the episode file name.
        period_hours: (N,) float64 ``period_length`` column.
        labels: (N, C) float32, 0/1.
    """

    path: Path
    stays: list[str]
    episode_paths: list[Path]
    stay_ids: np.ndarray
    subject_ids: np.ndarray
    period_hours: np.ndarray
    labels: np.ndarray


def read_listfile(ehr_root: Path, task: str, split: str, labels: Sequence[str]) -> Listfile:
    """Read and validate ``{task}/{split}_listfile.csv`` (columns, labels, stay paths, files).

    The header's label columns are checked against ``labels`` (a misspelt name is an error naming
    the expected spelling); with no ``labels`` only the stays are read (labels of shape (N, 0)).
    """
    path = listfile_path(ehr_root, task, split)
    frame = read_csv_checked(path, ["stay", "period_length", "stay_id"],
                             f"{split} listfile of {task}", dtype={"stay": str, "stay_id": str})
    check_label_header(list(frame.columns), labels, path)
    stay_ids = numeric_column(frame, "stay_id", path, integer=True)
    period = numeric_column(frame, "period_length", path)
    label_array = np.zeros((len(frame), len(labels)), np.float32)  # no labels: (N, 0)
    for column, name in enumerate(labels):
        label_array[:, column] = numeric_column(frame, name, path, allowed=(0.0, 1.0))
    stays = frame["stay"].fillna("").astype(str).tolist()
    paths, subjects = [], []
    for row, stay in enumerate(stays):
        try:
            episode = episode_path(ehr_root, task, split, stay)
        except ValueError as error:
            raise FusebenchError(f"{path} line {row + 2}: {error}; a stay must be a file name "
                                 "inside the task folder") from error
        match = re.match(r"(\d+)_", Path(stay).name)
        if match is None:
            raise FusebenchError(f"{path} line {row + 2}: stay {stay!r} does not start with "
                                 "'{subject_id}_' as mimic4extract names episodes")
        paths.append(episode)
        subjects.append(int(match.group(1)))
    return Listfile(path, stays, paths, stay_ids, np.asarray(subjects, np.int64), period,
                    label_array)


def check_unique_stays(listfiles: Sequence[Listfile]) -> None:
    """A stay_id appearing twice across the task's listfiles is an error at its second line."""
    seen: dict[int, str] = {}
    for listfile in listfiles:
        for row, stay_id in enumerate(listfile.stay_ids.tolist()):
            if stay_id in seen:
                raise FusebenchError(f"{listfile.path} line {row + 2}: duplicate stay_id {stay_id} "
                                     f"(already at {seen[stay_id]}); each stay must appear once")
            seen[stay_id] = f"{listfile.path.name} line {row + 2}"


def read_all_stays(ehr_root: Path) -> pd.DataFrame:
    """``root/all_stays.csv``: subject_id, stay_id, intime, outtime (validated, unique stay_id)."""
    path = ehr_root / "root" / "all_stays.csv"
    frame = read_csv_checked(path, ["subject_id", "stay_id", "intime", "outtime"], "ICU stay table",
                             dtype={"subject_id": str, "stay_id": str})
    result = pd.DataFrame({
        "subject_id": numeric_column(frame, "subject_id", path, integer=True),
        "stay_id": numeric_column(frame, "stay_id", path, integer=True),
    })
    for column in ("intime", "outtime"):
        parsed = pd.to_datetime(frame[column], errors="coerce", format="mixed")
        if parsed.isna().any():
            row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise FusebenchError(f"{path} line {row + 2}: {column} {frame[column].iloc[row]!r} is "
                                 "not a date-time (expected YYYY-MM-DD HH:MM:SS)")
        result[column] = parsed.to_numpy()
    duplicated = result["stay_id"].duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise FusebenchError(f"{path} line {row + 2}: duplicate stay_id "
                             f"{result['stay_id'].iloc[row]}; each ICU stay must appear once")
    return result


def parse_study_datetime(frame: pd.DataFrame, path: Path) -> pd.Series:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS.sss, int, zero-padded to 6) as datetimes."""
    dates = frame["StudyDate"].astype(str).str.strip()
    times = pd.to_numeric(frame["StudyTime"], errors="coerce")
    whole = np.trunc(times.to_numpy(np.float64))
    bad = np.isnan(whole) | (whole < 0) | (whole >= 240000)
    text = pd.Series(np.where(bad, 0, whole).astype(np.int64), index=frame.index).map("{:06d}".format)
    stamps = pd.to_datetime(dates + " " + text, format="%Y%m%d %H%M%S", errors="coerce")
    bad |= stamps.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FusebenchError(f"{path} line {row + 2}: StudyDate {frame['StudyDate'].iloc[row]!r} /"
                             f" StudyTime {frame['StudyTime'].iloc[row]!r} is not a date (YYYYMMDD)"
                             " and time (HHMMSS.sss)")
    return stamps


@dataclass(frozen=True)
class Episodes:
    """Events of several episode files, one row per CSV row, stays in the given order.

    Attributes:
        hours: (R,) float64 ``Hours``.
        stay: (R,) int64 index of the episode in the list read.
        values: (R, 17) float64 values (category index for categorical channels), NaN = empty;
            Fortran-ordered, so each channel is contiguous for the discretizer.
        line: (R,) int64 file line of each row.
        skips: counted skips ``{"file", "line", "reason", ...}``: cells outside their channel's
            value range (treated as empty, one entry per file and channel) and files holding
            a header only (the stay is kept: every hour imputed with normal values).
    """

    hours: np.ndarray
    stay: np.ndarray
    values: np.ndarray
    line: np.ndarray
    skips: tuple[dict, ...] = ()


def read_episodes(paths: Sequence[Path], origins: Sequence[str], config: DiscretizerConfig,
                  *, threads: int | None = None,
                  ranges: dict[str, list[float | None]] | None = None) -> Episodes:
    """Read episode CSVs into one event table; the files of a piece are parsed in one go.

    Many files are read in consecutive pieces on several threads: file reads and pandas' C
    parser release the GIL, so the pieces overlap. Errors are raised for the first bad piece.

    Args:
        paths: episode files.
        origins: per file, where it was listed (``"train_listfile.csv line 7"``), for errors.
        config: the discretizer configuration (channel names and categories).
        threads: at most this many threads (default: up to 2, the cores available).
        ranges: allowed value range per continuous channel (default
            :func:`fusebench.data.discretizer.load_value_ranges`); a cell outside is treated as
            empty and counted in ``skips``.

    Raises:
        FusebenchError: naming file and line: a missing file, a bad header, a cell that is not
            a number or not a known category, an empty or non-finite ``Hours``, a byte that is
            not UTF-8, rows out of time order.

    Example:
        >>> events = read_episodes([path], ["train_listfile.csv line 2"], config)  # doctest: +SKIP
        >>> events.values.shape  # (rows, 17), categories as indices, NaN = empty  # doctest: +SKIP
    """
    threads = max(1, min(threads or _THREADS, len(paths) // _MIN_FILES_PER_THREAD))
    bounds = np.linspace(0, len(paths), threads + 1).astype(int).tolist()
    pieces = list(zip(bounds[:-1], bounds[1:], strict=True))
    limits = value_bounds(config, load_value_ranges() if ranges is None else ranges)
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            parsed = list(pool.map(lambda b: _read_piece(paths, origins, *b, config, limits),
                                   pieces))
    else:
        parsed = [_read_piece(paths, origins, *b, config, limits) for b in pieces]
    parts = [part for piece in parsed for part in piece]
    if not parts:
        empty = np.zeros(0, np.int64)
        return Episodes(np.zeros(0), empty, np.zeros((0, len(config.channels))), empty)
    episodes = parts[0] if len(parts) == 1 else _concatenate(parts)
    _check_time_order(episodes, paths)
    return episodes


_THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)
_MIN_FILES_PER_THREAD = 64


def _read_piece(paths: Sequence[Path], origins: Sequence[str], start: int, stop: int,
                config: DiscretizerConfig,
                limits: tuple[np.ndarray, np.ndarray]) -> list[Episodes]:
    """Files ``start:stop``: read, check headers, parse each header's files in one go."""
    groups: dict[tuple[str, ...], list[tuple[int, bytes, int]]] = {}
    headers: dict[bytes, tuple[str, ...]] = {}  # each distinct header line is checked once
    for index in range(start, stop):
        try:
            raw = _read_file(paths[index])
        except FileNotFoundError as error:
            raise FusebenchError(f"{origins[index]}: episode file {paths[index]} is missing; "
                                 "re-run the EHR extraction or remove the row") from error
        header, _, body = raw.partition(b"\n")
        columns = headers.get(header)
        if columns is None:
            columns = headers[header] = _check_header(header, paths[index], config)
        body = body.rstrip(b"\r\n")
        rows = body.count(b"\n") + 1 if body else 0
        groups.setdefault(columns, []).append((index, body, rows))
    return [_parse_group(columns, members, paths, config, limits)
            for columns, members in groups.items()]


def _read_file(path: Path) -> bytes:
    """The whole file (os-level calls: a third cheaper than ``Path.read_bytes`` on small files)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        parts = [os.read(descriptor, os.fstat(descriptor).st_size + 1)]
        while parts[-1]:
            parts.append(os.read(descriptor, 1 << 16))
        return b"".join(parts)
    finally:
        os.close(descriptor)


def _concatenate(parts: list[Episodes]) -> Episodes:
    """Join parsed pieces; stays back in listed order when several headers were grouped."""
    stay = np.concatenate([p.stay for p in parts])
    # Values are Fortran-ordered: joining their (17, rows) transposes keeps that layout.
    values = np.concatenate([p.values.T for p in parts], axis=1).T
    hours = np.concatenate([p.hours for p in parts])
    line = np.concatenate([p.line for p in parts])
    skips = tuple(skip for p in parts for skip in p.skips)
    if np.any(stay[1:] < stay[:-1]):
        order = np.argsort(stay, kind="stable")
        return Episodes(hours[order], stay[order], values.T[:, order].T, line[order], skips)
    return Episodes(hours, stay, values, line, skips)


def _check_header(header: bytes, path: Path, config: DiscretizerConfig) -> tuple[str, ...]:
    columns = tuple(header.decode("utf-8", "replace").strip().split(","))
    expected = ("Hours", *config.channels)
    if set(columns) != set(expected) or len(columns) != len(expected):
        missing = [c for c in expected if c not in columns]
        unknown = [c for c in columns if c not in expected]
        problem = (f"missing column {missing[0]!r}" if missing else f"unexpected column "
                   f"{unknown[0]!r}" if unknown else "a repeated column")
        raise FusebenchError(f"{path} line 1: {problem}; an episode file has Hours and the 17 "
                             "channels of discretizer_config.json")
    return columns


def _parse_group(columns: tuple[str, ...], members: list[tuple[int, bytes, int]],
                 paths: Sequence[Path], config: DiscretizerConfig,
                 limits: tuple[np.ndarray, np.ndarray]) -> Episodes:
    indices = np.array([m[0] for m in members], np.int64)
    counts = np.array([m[2] for m in members], np.int64)
    stay = np.repeat(indices, counts)
    first_row = np.repeat(np.cumsum(counts) - counts, counts)
    line = np.arange(int(counts.sum()), dtype=np.int64) - first_row + 2
    locate = _Locator(stay, line, paths)
    frame = _read_frame([m[1] for m in members if m[2]], columns, config, locate)
    hours = frame["Hours"].to_numpy(np.float64)[:-1]
    if not np.isfinite(hours).all():
        row = int(np.flatnonzero(~np.isfinite(hours))[0])
        problem = "empty" if np.isnan(hours[row]) else f"{hours[row]} (not a finite number)"
        raise FusebenchError(f"{locate(row)}: Hours is {problem}; every row needs a time in "
                             "hours since ICU admission")
    # Fortran order: each channel's column is contiguous, as the discretizer reads it.
    values = np.empty((len(hours), len(config.channels)), order="F")
    skips = [{"file": str(paths[index]), "line": 1, "reason": "episode file has a header only: "
              "stay kept, every hour imputed with normal values"}
             for index, _, rows in members if rows == 0]
    for channel, name in enumerate(config.channels):
        if config.is_categorical(name):
            values[:, channel] = _category_indices(frame[name].array, name, config, locate)
        else:
            values[:, channel] = frame[name].to_numpy(np.float64)[:-1]
            skips += _drop_out_of_range(values[:, channel], name, limits[0][channel],
                                        limits[1][channel], stay, line, paths)
    return Episodes(hours, stay, values, line, tuple(skips))


def _drop_out_of_range(column: np.ndarray, name: str, low: float, high: float,
                       stay: np.ndarray, line: np.ndarray, paths: Sequence[Path]) -> list[dict]:
    """Empty (NaN) the cells of ``column`` outside ``[low, high]`` in place; one skip per file.

    Infinite cells (``1e400`` overflows to inf) are outside every range, so no inf ever
    reaches the normalizer, whose statistics one such cell would turn into NaN for every stay.
    """
    outside = (column < low) | (column > high) | np.isinf(column)
    if not outside.any():
        return []
    rows = np.flatnonzero(outside)
    files, first, counts = np.unique(stay[rows], return_index=True, return_counts=True)
    skips = [{"file": str(paths[int(file)]), "line": int(line[rows[f]]), "rows": int(n),
              "reason": f"{name} outside [{low:g}, {high:g}]: cell treated as empty "
                        "(ranges: $FUSEBENCH_VALUE_RANGES)",
              "value": f"{column[rows[f]]:g}"}
             for file, f, n in zip(files, first, counts, strict=True)]
    column[rows] = np.nan
    return skips


def _category_indices(cells: pd.Categorical, name: str, config: DiscretizerConfig,
                      locate: _Locator) -> np.ndarray:
    """Index of each cell (but the sentinel row) in ``possible_values``; NaN where empty."""
    codes = cells.codes[:-1]
    index_of_category = pd.Index(config.possible_values[name]).get_indexer(cells.categories)
    indices = np.where(codes < 0, -2, index_of_category[codes])
    if (indices == -1).any():
        row = int(np.flatnonzero(indices == -1)[0])
        raise FusebenchError(f"{locate(row)}: {name} value {cells.categories[codes[row]]!r} is "
                             "not one of the values in discretizer_config.json")
    return np.where(indices < 0, np.nan, indices)


class _Locator:
    """Maps a row of the joined text back to ``file line N``."""

    def __init__(self, stay: np.ndarray, line: np.ndarray, paths: Sequence[Path]) -> None:
        self.stay, self.line, self.paths = stay, line, paths

    def __call__(self, row: int) -> str:
        return f"{self.paths[int(self.stay[row])]} line {int(self.line[row])}"


_OPTIONS = {"header": None, "keep_default_na": False, "na_values": [""],
            "skip_blank_lines": False, "index_col": False, "low_memory": False}
_SENTINEL = "~"


def _read_frame(bodies: list[bytes], columns: tuple[str, ...], config: DiscretizerConfig,
                locate: _Locator) -> pd.DataFrame:
    """Typed parse of the joined rows plus a last sentinel row: floats, categorical codes.

    Categorical columns are parsed as categories (codes per cell, no Python string per cell).
    pandas turns inferred categories into numbers when all of them look numeric ("15" -> 15,
    "1" and "1.0" -> 1.0); the sentinel row's text value in every categorical column keeps them
    text, exactly as written. One parse (``low_memory=False``) so the sentinel is in every
    column's categories.
    """
    categorical = {c for c in columns if c != "Hours" and config.is_categorical(c)}
    sentinel = ",".join("0" if c == "Hours" else _SENTINEL if c in categorical else ""
                        for c in columns).encode()
    text = b"\n".join([*bodies, sentinel]) + b"\n"
    dtypes = {c: "category" if c in categorical else np.float64 for c in columns}
    try:
        return pd.read_csv(io.BytesIO(text), names=list(columns), dtype=dtypes, **_OPTIONS)
    except pd.errors.ParserError as error:
        found = re.search(r"line (\d+)", str(error))
        where = locate(int(found.group(1)) - 1) if found else "an episode file"
        raise FusebenchError(f"{where}: malformed row ({_first_line(error)})") from error
    except UnicodeDecodeError as error:
        raise FusebenchError(_not_utf8(text, locate, "episode file")) from error
    except (ValueError, TypeError):
        _raise_bad_number(text, columns, [c for c in columns if c not in categorical], locate)


def _raise_bad_number(text: bytes, columns: tuple[str, ...], numeric: list[str],
                      locate: _Locator) -> NoReturn:
    """Find the first non-numeric cell with a (slow) string parse and raise an error naming it."""
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FusebenchError(_not_utf8(text, locate, "episode file")) from error
    options = {**_OPTIONS, "na_values": None}
    frame = pd.read_csv(io.BytesIO(text), names=list(columns), dtype=str, **options).iloc[:-1]
    for column in numeric:
        cells = frame[column]
        filled = (cells != "").to_numpy()
        bad = filled & pd.to_numeric(cells.where(filled), errors="coerce").isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise FusebenchError(f"{locate(row)}: {column} value {cells.iloc[row]!r} is not "
                                 "a number")
    raise FusebenchError(f"{locate(0)}: unreadable episode rows; expected numbers and the "
                         "categorical values of discretizer_config.json")


def _check_time_order(episodes: Episodes, paths: Sequence[Path]) -> None:
    same_stay = episodes.stay[1:] == episodes.stay[:-1]
    backwards = same_stay & (episodes.hours[1:] < episodes.hours[:-1] - 1e-6)
    if backwards.any():
        row = int(np.flatnonzero(backwards)[0]) + 1
        raise FusebenchError(f"{paths[int(episodes.stay[row])]} line {int(episodes.line[row])}: "
                             "Hours goes backwards; episode rows must be in time order")
