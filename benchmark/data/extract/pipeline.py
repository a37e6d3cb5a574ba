"""``fusebench data extract``: raw MIMIC-IV -> the EHR root that fusebench's readers take.

Stages (each resumable, each prints what it kept and dropped, like the original's step counts):

1. ``cohort``: ICU stays -> drop stays with an ICU-type change, then admissions with other than
   one stay, then age < 18 (``anchor_age``); in-hospital mortality; subject splits.
   Writes ``root/all_stays.csv``.
2. ``diagnoses``: ``diagnoses_icd`` -> 25 phenotype labels per stay.
3. ``chartevents`` / ``labevents``: one streaming pass over each big table (duckdb reads the
   ``.csv.gz`` in pieces, never the whole table in memory): rows of the mapped item ids and the
   cohort's subjects, to a Parquet file.
4. ``timeseries``: events validated against the stays (no ``hadm_id`` -> dropped; a lab gets the
   stay of its admission), units cleaned, one value per variable and time, pivoted to the 17
   channels, hours from ICU ``intime``.
5. ``in-hospital-mortality``, ``phenotyping``: listfiles and episode CSVs per split.

Files appear whole or not at all: a stage writes to temporary names and renames; a task folder
is built beside its final place and renamed into it. ``--resume`` skips the stages a killed run
finished (same raw files, same profile).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from fusebench.data.extract.profiles import PROFILES
from fusebench.data.extract.raw import RawMimic, open_raw
from fusebench.data.extract.resources import (
    all_mapped_item_ids,
    hash_split,
    phenotype_definitions,
    split_lists,
    variable_map,
)
from fusebench.data.extract.sql import (
    CATEGORICAL,
    CHANNELS,
    CLEANED,
    NA_STRINGS,
    cleaned_value_sql,
    dedupe_key_sql,
)
from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_text
from fusebench.progress import make_progress

__all__ = ["PROFILES", "ExtractSummary", "extract_mimic_iv"]

TASKS = ("in-hospital-mortality", "phenotyping")
_EPS = 1e-6
_IHM_HOURS = 48
_STATE = "state.json"
_WORK = ".extract-work"


@dataclass
class ExtractSummary:
    """What an extraction did: version, profile, per-stage counts and seconds."""

    version: str
    evidence: str
    profile: str
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """JSON-ready dictionary (written to ``ehr/extract.json``)."""
        return {"mimic_iv_version": self.version, "version_evidence": self.evidence,
                "profile": self.profile, "profile_rules": list(PROFILES[self.profile]),
                "counts": self.counts, "seconds": self.seconds}


class _Stages:
    """Resume bookkeeping: which stages finished, for which raw files and profile."""

    def __init__(self, work: Path, fingerprint: dict[str, Any], resume: bool) -> None:
        self.path = work / _STATE
        self.fingerprint = fingerprint
        state: dict[str, Any] = {}
        if resume and self.path.is_file():
            state = json.loads(self.path.read_text())
            if state.get("fingerprint") != fingerprint:
                raise FusebenchError(f"{self.path}: the unfinished extraction there used other "
                                     "raw files or another --profile; remove the --out folder "
                                     "or rerun with the same options")
        self.done: dict[str, dict[str, Any]] = state.get("done", {})

    def finished(self, stage: str) -> dict[str, Any] | None:
        return self.done.get(stage)

    def mark(self, stage: str, counts: dict[str, Any]) -> None:
        self.done[stage] = counts
        state = {"fingerprint": self.fingerprint, "done": self.done}
        atomic_write_text(self.path, json.dumps(state, indent=1))


def _fingerprint(raw: RawMimic, profile: str) -> dict[str, Any]:
    files = {table: [str(path.resolve()), path.stat().st_size, int(path.stat().st_mtime)]
             for table, path in sorted(raw.paths.items())}
    return {"profile": profile, "version": raw.version, "files": files}


def _connect(work: Path, memory_limit: str, threads: int) -> Any:
    try:
        import duckdb
        import yaml  # noqa: F401  (the phenotype definitions are YAML)
    except ImportError as error:
        raise FusebenchError(f"fusebench data extract needs {error.name}: pip install "
                             "'fusebench[extract]'") from error
    connection = duckdb.connect(str(work / "extract.duckdb"))
    (work / "spill").mkdir(exist_ok=True)
    connection.execute(f"SET memory_limit='{memory_limit}'")
    connection.execute(f"SET threads={int(threads)}")
    connection.execute(f"SET temp_directory='{(work / 'spill').as_posix()}'")
    connection.execute("SET preserve_insertion_order=false")
    # Progress is tracked (query_progress feeds our bars with ETA) but never printed by duckdb.
    connection.execute("SET enable_progress_bar=true")
    connection.execute("SET enable_progress_bar_print=false")
    return connection


def _csv_source(raw: RawMimic, table: str, types: dict[str, str]) -> str:
    """``read_csv(...)`` of a raw table, every column named from its header (VARCHAR unless
    ``types`` says otherwise)."""
    header = raw.headers[table]
    columns = ", ".join(f"'{name}': '{types.get(name, 'VARCHAR')}'" for name in header)
    path = raw.paths[table].as_posix().replace("'", "''")
    return (f"read_csv('{path}', header=true, auto_detect=false, columns={{{columns}}}, "
            "quote='\"', escape='\"', timestampformat='%Y-%m-%d %H:%M:%S')")


def _read_small(connection: Any, raw: RawMimic, table: str, columns: tuple[str, ...]) -> pd.DataFrame:
    selected = ", ".join(f'"{c}"' for c in columns)
    return connection.execute(f"SELECT {selected} FROM {_csv_source(raw, table, {})}").df()


class _Reporter:
    """Rich progress bars with ETA per stage (a long query's progress polled from duckdb)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.console = Console(stderr=True)

    def say(self, text: str) -> None:
        if self.show:
            self.console.print(text, highlight=False)

    @contextmanager
    def bar(self, description: str, total: float = 100.0) -> Iterator[Callable[[float], None]]:
        if not self.show:
            yield lambda _: None
            return
        with make_progress(self.console, transient=True) as progress:
            task = progress.add_task(description, total=total, status="")
            yield lambda done: progress.update(task, completed=done)

    def query(self, connection: Any, sql: str, description: str) -> None:
        """Run ``sql`` with a bar fed by duckdb's query progress."""
        error: list[BaseException] = []

        def run() -> None:
            try:
                connection.execute(sql)
            except BaseException as exception:  # re-raised in the caller's thread
                error.append(exception)

        worker = threading.Thread(target=run, daemon=True)
        with self.bar(description) as update:
            worker.start()
            try:
                while worker.is_alive():
                    worker.join(0.25)
                    try:
                        percent = connection.query_progress()
                    except Exception:  # progress is advisory; never fail the query on it
                        percent = -1
                    if percent is not None and percent >= 0:
                        update(min(float(percent), 100.0))
            except KeyboardInterrupt:
                # Ctrl-C lands in this thread: stop the query too, so the connection closes.
                connection.interrupt()
                worker.join()
                raise
        if error:
            raise _engine_error(error[0], description) from error[0]


def _engine_error(error: BaseException, what: str) -> FusebenchError:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "No space left" in text:
        return FusebenchError(f"{what}: disk full ({text}); free disk space and rerun with "
                              "--resume")
    if "GZIP" in text or "CSV Error" in text:
        return FusebenchError(f"{what}: {text}; the file is damaged or truncated: re-download it "
                              "from PhysioNet (or check it against SHA256SUMS.txt), then rerun "
                              "with --resume")
    return FusebenchError(f"{what}: {text}")


def _cohort(connection: Any, raw: RawMimic, profile: str, report: _Reporter
            ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The stays of the benchmark, in the original's filter order, with mortality and split."""
    stays = _read_small(connection, raw, "icustays", (
        "subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime",
        "outtime", "los"))
    admission_columns = ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                         raw.race_column]
    if "hospital_expire_flag" in raw.headers["admissions"]:
        admission_columns.append("hospital_expire_flag")
    admissions = _read_small(connection, raw, "admissions", tuple(admission_columns))
    patients = _read_small(connection, raw, "patients", ("subject_id", "gender", "anchor_age",
                                                         "dod"))
    for frame, columns in ((stays, ("subject_id", "hadm_id", "stay_id")),
                           (admissions, ("subject_id", "hadm_id")), (patients, ("subject_id",))):
        for column in columns:
            frame[column] = _integers(frame[column], raw, column)
    counts: dict[str, Any] = {}

    def step(name: str, frame: pd.DataFrame) -> None:
        counts[name] = {"stays": int(frame["stay_id"].nunique()),
                        "admissions": int(frame["hadm_id"].nunique()),
                        "subjects": int(frame["subject_id"].nunique())}
        report.say(f"  {name}: {counts[name]['stays']} stays, {counts[name]['admissions']} "
                   f"admissions, {counts[name]['subjects']} subjects")

    step("start", stays)
    same_unit = stays["first_careunit"].notna() & (stays["first_careunit"] ==
                                                   stays["last_careunit"])
    stays = stays[same_unit].drop(columns="first_careunit")
    step("remove ICU transfers", stays)
    stays = stays.merge(admissions, on=["subject_id", "hadm_id"], how="inner")
    stays = stays.merge(patients, on="subject_id", how="inner")
    per_admission = stays.groupby("hadm_id")["stay_id"].transform("count")
    stays = stays[per_admission == 1].copy()
    step("remove multiple stays per admission", stays)
    times = {c: pd.to_datetime(stays[c], errors="coerce", format="ISO8601") for c in
             ("intime", "outtime", "admittime", "dischtime", "deathtime", "dod")}
    for column in ("intime", "outtime"):
        bad = times[column].isna()
        if bad.any():
            raise FusebenchError(f"{raw.paths['icustays']}: stay_id "
                                 f"{stays['stay_id'][bad].iloc[0]} has {column} "
                                 f"{stays[column][bad].iloc[0]!r}, not YYYY-MM-DD HH:MM:SS")
    stays["age"] = pd.to_numeric(stays["anchor_age"], errors="coerce")
    stays.loc[stays["age"] < 0, "age"] = 90
    unit = _within(times["dod"], times["intime"], times["outtime"]) | _within(
        times["deathtime"], times["intime"], times["outtime"])
    hospital = _within(times["dod"], times["admittime"], times["dischtime"]) | _within(
        times["deathtime"], times["admittime"], times["dischtime"])
    if profile == "corrected" and raw.major >= 2:
        # v2+ dod includes deaths after discharge (state records): a death on the day of
        # discharge is not an in-hospital death unless the hospital recorded it.
        unit = _within(times["deathtime"], times["intime"], times["outtime"])
        hospital = _within(times["deathtime"], times["admittime"], times["dischtime"])
        if "hospital_expire_flag" in stays:
            hospital |= pd.to_numeric(stays["hospital_expire_flag"], errors="coerce").eq(1)
            stays = stays.drop(columns="hospital_expire_flag")
    elif "hospital_expire_flag" in stays:
        stays = stays.drop(columns="hospital_expire_flag")
    stays["mortality_inunit"] = unit.astype(int).to_numpy()
    stays["mortality"] = hospital.astype(int).to_numpy()
    stays["mortality_inhospital"] = stays["mortality"]
    stays = stays[stays["age"] >= 18].copy()
    step("remove patients age < 18", stays)
    stays["los"] = pd.to_numeric(stays["los"], errors="coerce")
    stays["intime_ts"] = times["intime"][stays.index].astype("datetime64[us]")
    stays["outtime_ts"] = times["outtime"][stays.index].astype("datetime64[us]")
    # Episode number: position of the stay among the subject's stays by (intime, outtime).
    stays = stays.sort_values(["subject_id", "intime_ts", "outtime_ts"], kind="stable")
    stays["episode"] = stays.groupby("subject_id").cumcount() + 1
    test, val, listed = split_lists()
    subjects = stays["subject_id"]
    split = np.where(subjects.isin(test), "test", np.where(subjects.isin(val), "val", "train"))
    unlisted = ~subjects.isin(listed).to_numpy()
    if profile == "corrected":
        hashed = [hash_split(s) for s in subjects[unlisted].tolist()]
        split[unlisted] = hashed
    stays["split"] = split
    counts["subjects not in the split lists"] = {
        "subjects": int(subjects[unlisted].nunique()),
        "assigned": "seeded hash of subject_id" if profile == "corrected" else "train"}
    report.say(f"  subjects not in the v1.0 split lists: {counts['subjects not in the split lists']['subjects']} "
               f"({counts['subjects not in the split lists']['assigned']})")
    return stays.reset_index(drop=True), counts


def _integers(values: pd.Series, raw: RawMimic, column: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any():
        row = int(np.flatnonzero(numbers.isna().to_numpy())[0])
        raise FusebenchError(f"{column} {values.iloc[row]!r} is not an integer (row {row + 2} of "
                             f"its table in {raw.root}); the raw tables look damaged")
    return numbers.astype("int64")


def _within(when: pd.Series, start: pd.Series, end: pd.Series) -> pd.Series:
    return when.notna() & (start <= when) & (end >= when)


_ALL_STAYS_COLUMNS = ("subject_id", "hadm_id", "stay_id", "last_careunit", "intime", "outtime",
                      "los", "admittime", "dischtime", "deathtime")


def _write_all_stays(stays: pd.DataFrame, raw: RawMimic, path: Path) -> None:
    columns = [*_ALL_STAYS_COLUMNS, raw.race_column, "gender", "anchor_age", "dod", "age",
               "mortality_inunit", "mortality", "mortality_inhospital"]
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = stays.sort_values("stay_id", kind="stable")
    atomic_write_text(path, ordered[columns].to_csv(index=False))


def _diagnoses(connection: Any, raw: RawMimic, stays: pd.DataFrame, profile: str,
               report: _Reporter) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per stay: whether it has diagnoses (the original drops stays without any) and 25 labels."""
    definitions = phenotype_definitions()
    connection.register("cohort_admissions", stays[["subject_id", "hadm_id", "stay_id"]])
    diagnoses_source = _csv_source(raw, "diagnoses_icd", {})
    dictionary_source = _csv_source(raw, "d_icd_diagnoses", {})
    # medfuse-2022 joins the dictionary on the code only (a code valid in ICD-9 and ICD-10
    # matches both); corrected on (code, version).
    version_join = " AND d.icd_version = x.icd_version" if profile == "corrected" else ""
    rows = connection.execute(f"""
        SELECT c.stay_id, trim(x.icd_code) AS icd_code, trim(x.icd_version) AS icd_version
        FROM {diagnoses_source} x
        JOIN cohort_admissions c ON c.subject_id = TRY_CAST(x.subject_id AS BIGINT)
                                AND c.hadm_id = TRY_CAST(x.hadm_id AS BIGINT)
        WHERE EXISTS (SELECT 1 FROM {dictionary_source} d
                      WHERE trim(d.icd_code) = trim(x.icd_code){version_join})
    """).df()
    connection.unregister("cohort_admissions")
    labels = pd.DataFrame(0, index=pd.Index(sorted(rows["stay_id"].unique()), name="stay_id"),
                          columns=list(definitions.labels), dtype="int8")
    if profile == "corrected":
        for group in definitions.labels:
            nine = rows["icd_version"].eq("9") & rows["icd_code"].isin(definitions.icd9[group])
            ten = rows["icd_version"].eq("10") & rows["icd_code"].isin(definitions.icd10[group])
            labels.loc[rows.loc[nine | ten, "stay_id"].unique(), group] = 1
    else:
        group = rows["icd_code"].map(definitions.group_of_code)
        keep = group.notna() & group.map(definitions.in_benchmark).fillna(False).astype(bool)
        for name, members in rows[keep].groupby(group[keep])["stay_id"]:
            labels.loc[members.unique(), name] = 1
    counts = {"diagnosis rows of cohort stays": len(rows),
              "stays with diagnoses": len(labels),
              "stays without diagnoses (dropped)": int((~stays["stay_id"].isin(labels.index)).sum())}
    report.say(f"  diagnoses: {counts['diagnosis rows of cohort stays']} rows; "
               f"{counts['stays with diagnoses']} stays with diagnoses, "
               f"{counts['stays without diagnoses (dropped)']} without (dropped, as the original)")
    return labels.reset_index(), counts


def _filter_events(connection: Any, raw: RawMimic, table: str, subjects: pd.DataFrame,
                   target: Path, report: _Reporter) -> dict[str, Any]:
    """One pass over a big table: mapped items of cohort subjects -> Parquet."""
    types = {"subject_id": "BIGINT", "hadm_id": "BIGINT", "stay_id": "BIGINT",
             "itemid": "BIGINT", "charttime": "TIMESTAMP"}
    source = _csv_source(raw, table, types)
    stay = "e.stay_id" if "stay_id" in raw.headers[table] else "CAST(NULL AS BIGINT)"
    ready = set(variable_map()["itemid"].tolist())
    # Joined, not an IN list: 13,000 constants would be compared one by one for every row.
    wanted = pd.DataFrame({"itemid": list(all_mapped_item_ids())})
    wanted["ready"] = wanted["itemid"].isin(ready)
    na = ", ".join("'" + text.replace("'", "''") + "'" for text in NA_STRINGS)
    connection.register("cohort_subjects", subjects)
    connection.register("wanted_items", wanted)
    temporary = target.with_name(f".{target.name}.tmp")
    # Rows of the benchmark variables, plus the text values of the map's other items: the
    # original keeps every item of the map file, and a text value of any of them makes pandas
    # read the subject's events as text (which decides how duplicates compare).
    report.query(connection, f"""
        COPY (SELECT e.subject_id, e.hadm_id, {stay} AS stay_id, e.charttime, e.itemid, e.value,
                     lower(e.valueuom) AS unit
              FROM {source} e
              JOIN wanted_items w ON e.itemid = w.itemid
              JOIN cohort_subjects c ON e.subject_id = c.subject_id
              WHERE w.ready OR (TRY_CAST(e.value AS DOUBLE) IS NULL AND e.value IS NOT NULL
                                AND e.value NOT IN ({na})))
        TO '{temporary.as_posix()}' (FORMAT parquet, COMPRESSION zstd)
    """, f"reading {raw.paths[table]}")
    connection.unregister("cohort_subjects")
    connection.unregister("wanted_items")
    os.replace(temporary, target)
    kept = connection.execute(f"SELECT count(*) FROM read_parquet('{target.as_posix()}')"
                              ).fetchall()[0][0]
    report.say(f"  {table}: {kept} rows of cohort subjects kept (benchmark items; text values of "
               "the map's other items)")
    return {"rows kept (benchmark items of cohort subjects)": int(kept)}


def _timeseries(connection: Any, event_files: list[Path], stays: pd.DataFrame, profile: str,
                target: Path, report: _Reporter) -> dict[str, Any]:
    """Validated, cleaned, one value per (subject, time, variable), pivoted, assigned to stays."""
    connection.register("cohort_stays", stays[["subject_id", "hadm_id", "stay_id", "intime_ts",
                                               "outtime_ts"]])
    connection.register("variable_map", variable_map())
    files = ", ".join(f"'{p.as_posix()}'" for p in event_files)
    na = ", ".join("'" + s.replace("'", "''") + "'" for s in NA_STRINGS)
    counts_row = connection.execute(f"""
        SELECT count(*),
               count(*) FILTER (WHERE e.hadm_id IS NULL),
               count(*) FILTER (WHERE e.hadm_id IS NOT NULL AND s.stay_id IS NULL),
               count(*) FILTER (WHERE s.stay_id IS NOT NULL AND e.stay_id IS NULL),
               count(*) FILTER (WHERE s.stay_id IS NOT NULL AND e.stay_id <> s.stay_id)
        FROM read_parquet([{files}]) e LEFT JOIN cohort_stays s ON e.hadm_id = s.hadm_id
    """).fetchall()[0]
    counts = dict(zip(("n_events", "empty_hadm", "no_hadm_in_stay", "no_icustay (recovered)",
                       "icustay_missing_in_stays"), (int(v) for v in counts_row), strict=True))
    report.say("  validate: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    numeric, text = dedupe_key_sql(profile)
    categorical = ", ".join(f"'{c}'" for c in sorted(CATEGORICAL))
    cleaned_names = ", ".join(f"'{c}'" for c in sorted(CLEANED))
    pivot = ", ".join(
        f"max(CASE WHEN variable = '{c}' THEN shown END) AS \"{c}\"" for c in CHANNELS)
    temporary = target.with_name(f".{target.name}.tmp")
    report.query(connection, f"""
        COPY (
        WITH validated AS (
            SELECT e.subject_id, s.stay_id, e.charttime, e.itemid, e.value, e.unit
            FROM read_parquet([{files}]) e JOIN cohort_stays s ON e.hadm_id = s.hadm_id
            WHERE e.stay_id IS NULL OR e.stay_id = s.stay_id
        ), present AS (
            SELECT *, TRY_CAST(value AS DOUBLE) AS num FROM validated
            WHERE value IS NOT NULL AND value NOT IN ({na})
        ), text_subjects AS (
            -- pandas reads a subject's events.csv as text when any value is not a number
            SELECT subject_id, bool_or(num IS NULL) AS is_text FROM present GROUP BY subject_id
        ), mapped AS (
            SELECT p.*, t.is_text, m.variable, lower(m.mimic_label) AS label
            FROM present p JOIN text_subjects t USING (subject_id)
            JOIN variable_map m ON p.itemid = m.itemid
        ), cleaned AS (
            SELECT *, {cleaned_value_sql(profile)} AS cleaned FROM mapped
        ), shown AS (
            -- as the original writes them: the table's text where pandas kept text (categorical
            -- channels; uncleaned numeric channels of a text subject), else the number
            SELECT *, CASE WHEN variable IN ({categorical})
                           THEN (CASE WHEN is_text THEN value ELSE CAST(num AS VARCHAR) END)
                           WHEN is_text AND variable NOT IN ({cleaned_names})
                           THEN (CASE WHEN cleaned IS NOT NULL THEN value END)
                           ELSE CAST(cleaned AS VARCHAR) END AS shown
            FROM cleaned
        ), kept AS (
            SELECT * FROM shown WHERE shown IS NOT NULL
        ), chosen AS (
            -- one value per (subject, time, variable): the largest by the profile's ordering
            SELECT subject_id, charttime, variable,
                   coalesce(arg_max(shown, {numeric}), arg_max(shown, {text})) AS shown
            FROM kept GROUP BY subject_id, charttime, variable
        ), series AS (
            SELECT subject_id, charttime, {pivot} FROM chosen GROUP BY subject_id, charttime
        ), moments AS (
            SELECT DISTINCT subject_id, charttime, stay_id AS event_stay FROM kept
        )
        SELECT s.stay_id,
               CAST(date_diff('second', s.intime_ts, m.charttime) AS DOUBLE) / 60.0 / 60.0
                   AS hours,
               concat_ws(',', {', '.join(f'coalesce(x."{c}", {chr(39)}{chr(39)})' for c in CHANNELS)})
                   AS cells
        FROM moments m
        JOIN series x ON x.subject_id = m.subject_id AND x.charttime = m.charttime
        JOIN cohort_stays s ON s.subject_id = m.subject_id
             AND (m.event_stay = s.stay_id OR m.charttime BETWEEN s.intime_ts AND s.outtime_ts)
        ) TO '{temporary.as_posix()}' (FORMAT parquet, COMPRESSION zstd)
    """, "cleaning and pivoting events")
    connection.unregister("cohort_stays")
    connection.unregister("variable_map")
    os.replace(temporary, target)
    rows, with_rows = connection.execute(
        f"SELECT count(*), count(DISTINCT stay_id) FROM read_parquet('{target.as_posix()}')"
    ).fetchall()[0]
    counts["timeseries rows"] = int(rows)
    counts["stays with events"] = int(with_rows)
    counts["stays without events (no episode)"] = int(len(stays) - with_rows)
    report.say(f"  timeseries: {rows} rows for {with_rows} stays; "
               f"{counts['stays without events (no episode)']} stays without events")
    return counts


def _write_task(connection: Any, task: str, stays: pd.DataFrame, labels: pd.DataFrame,
                series: Path, ehr: Path, report: _Reporter) -> dict[str, Any]:
    """One task folder: listfiles and episode CSVs, built beside ``ehr/{task}`` and renamed."""
    definitions = phenotype_definitions()
    candidates = stays[stays["stay_id"].isin(labels["stay_id"]) & stays["los"].notna()].copy()
    candidates["hours_of_stay"] = 24.0 * candidates["los"]
    counts: dict[str, Any] = {"stays with diagnoses and a length of stay": len(candidates)}
    if task == "in-hospital-mortality":
        short = candidates["hours_of_stay"] < _IHM_HOURS - _EPS
        counts[f"stays under {_IHM_HOURS} h (dropped)"] = int(short.sum())
        candidates = candidates[~short].copy()
        candidates["limit"] = float(_IHM_HOURS)
    else:
        candidates["limit"] = candidates["hours_of_stay"]
    candidates["stay"] = (candidates["subject_id"].astype(str) + "_episode"
                          + candidates["episode"].astype(str) + "_timeseries.csv")
    candidates["folder"] = np.where(candidates["split"] == "test", "test", "train")
    connection.register("task_stays", candidates[["stay_id", "limit"]])
    in_window = connection.execute(f"""
        SELECT t.stay_id, count(*) AS rows FROM read_parquet('{series.as_posix()}') x
        JOIN task_stays t USING (stay_id)
        WHERE x.hours > -{_EPS} AND x.hours < t.limit + {_EPS}
        GROUP BY t.stay_id
    """).df()
    kept = candidates[candidates["stay_id"].isin(in_window["stay_id"])].copy()
    counts["stays without events in the window (dropped)"] = len(candidates) - len(kept)
    final = ehr / task
    building = ehr / f".{task}.partial"
    if building.exists():
        shutil.rmtree(building)
    for folder in ("train", "test"):
        (building / folder).mkdir(parents=True)
    header = "Hours," + ",".join(CHANNELS) + "\n"
    names = dict(zip(kept["stay_id"].tolist(),
                     (building / f / s for f, s in zip(kept["folder"], kept["stay"], strict=True)),
                     strict=True))
    cursor = connection.execute(f"""
        SELECT x.stay_id, CAST(x.hours AS VARCHAR) || ',' || x.cells AS line
        FROM read_parquet('{series.as_posix()}') x JOIN task_stays t USING (stay_id)
        WHERE x.hours > -{_EPS} AND x.hours < t.limit + {_EPS}
        ORDER BY x.stay_id, x.hours
    """)
    total_rows = int(in_window["rows"].sum())
    written = 0
    with report.bar(f"writing {task} episodes", total=max(total_rows, 1)) as update:
        current, pending = None, []  # a stay's lines until its last row is read
        while True:
            batch = cursor.fetch_df_chunk(32)  # 32 vectors of 2048 rows
            if batch.empty:
                break
            stay_ids = batch["stay_id"].to_numpy()
            lines = batch["line"].tolist()
            starts = np.flatnonzero(np.r_[True, stay_ids[1:] != stay_ids[:-1]])
            ends = np.r_[starts[1:], len(stay_ids)]
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                stay_id = int(stay_ids[start])
                if stay_id != current and current is not None:
                    _write_episode(names[current], header, pending)
                    pending = []
                current = stay_id
                pending.extend(lines[start:end])
            written += len(lines)
            update(written)
        if current is not None:
            _write_episode(names[current], header, pending)
    connection.unregister("task_stays")
    label_columns = list(definitions.labels)
    kept = kept.merge(labels, on="stay_id", how="left")
    for split in ("train", "val", "test"):
        rows = kept[kept["split"] == split].sort_values("stay", kind="stable")
        if task == "in-hospital-mortality":
            text = "stay,period_length,stay_id,y_true\n" + "".join(
                f"{s},0,{i},{y:d}\n" for s, i, y in zip(rows["stay"], rows["stay_id"],
                                                       rows["mortality"], strict=True))
        else:
            values = rows[label_columns].astype(int).astype(str).agg(",".join, axis=1)
            text = "stay,period_length,stay_id," + ",".join(label_columns) + "\n" + "".join(
                f"{s},{h:.6f},{i},{v}\n" for s, h, i, v in zip(
                    rows["stay"], rows["hours_of_stay"], rows["stay_id"], values, strict=True))
        (building / f"{split}_listfile.csv").write_text(text, encoding="utf-8")
        counts[f"{split} stays"] = len(rows)
        if task == "in-hospital-mortality":
            counts[f"{split} deaths"] = int(rows["mortality"].sum())
    if final.exists():
        shutil.rmtree(final)
    os.replace(building, final)
    report.say(f"  {task}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def extract_mimic_iv(raw_root: Path, out: Path, *, profile: str = "medfuse-2022",
                     resume: bool = False, progress: bool = True, memory_limit: str = "4GB",
                     threads: int = 2) -> ExtractSummary:
    """Extract the fusebench EHR root ``out/ehr`` from a raw MIMIC-IV download.

    Args:
        raw_root: the MIMIC-IV folder (``hosp/``, ``icu/``, ``core/`` for v1.0).
        out: the data root to write; the EHR files go to ``out/ehr``.
        profile: ``medfuse-2022`` (the original's output) or ``corrected``.
        resume: continue a killed extraction (its finished stages are kept).
        progress: show bars with ETA and per-stage counts on stderr.
        memory_limit: duckdb's memory cap (it spills to ``out/.extract-work`` beyond it).
        threads: duckdb worker threads.

    Returns:
        The summary also written to ``out/ehr/extract.json``.

    Raises:
        FusebenchError: bad raw files, v3.0, an existing output without ``--resume``.

    Example:
        >>> extract_mimic_iv(Path("mimic-iv/3.1"), Path("data"))  # doctest: +SKIP
    """
    if profile not in PROFILES:
        raise FusebenchError(f"--profile {profile}: choose one of {', '.join(PROFILES)}")
    report = _Reporter(progress)
    raw = open_raw(Path(raw_root))
    report.say(f"MIMIC-IV {raw.version} found at {raw.root} ({raw.evidence}); profile {profile}")
    out = Path(out)
    ehr, work = out / "ehr", out / _WORK
    if not resume and (work.exists() or (ehr / "extract.json").exists()):
        raise FusebenchError(f"--out {out}: an extraction is already there; pass --resume to "
                             "continue or reuse it, or choose another --out")
    work.mkdir(parents=True, exist_ok=True)
    ehr.mkdir(parents=True, exist_ok=True)
    stages = _Stages(work, _fingerprint(raw, profile), resume)
    summary = ExtractSummary(raw.version, raw.evidence, profile)
    connection = _connect(work, memory_limit, threads)
    try:
        _run_stages(connection, raw, profile, ehr, work, stages, summary, report)
    finally:
        connection.close()
    atomic_write_text(ehr / "extract.json", json.dumps(summary.as_json(), indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _run_stages(connection: Any, raw: RawMimic, profile: str, ehr: Path, work: Path,
                stages: _Stages, summary: ExtractSummary, report: _Reporter) -> None:
    def stage(name: str, body: Callable[[], dict[str, Any]]) -> None:
        done = stages.finished(name)
        if done is not None:
            report.say(f"[{name}] already done (resumed)")
            summary.counts[name] = done
            return
        report.say(f"[{name}]")
        started = time.perf_counter()
        counts = body()
        summary.seconds[name] = round(time.perf_counter() - started, 2)
        summary.counts[name] = counts
        stages.mark(name, counts)

    cohort_file, labels_file = work / "cohort.parquet", work / "labels.parquet"

    def cohort() -> dict[str, Any]:
        stays, counts = _cohort(connection, raw, profile, report)
        _write_all_stays(stays, raw, ehr / "root" / "all_stays.csv")
        _save(connection, stays, cohort_file)
        return counts

    stage("cohort", cohort)
    stays = _load(connection, cohort_file)

    def diagnoses() -> dict[str, Any]:
        labels, counts = _diagnoses(connection, raw, stays, profile, report)
        _save(connection, labels, labels_file)
        return counts

    stage("diagnoses", diagnoses)
    labels = _load(connection, labels_file)
    subjects = pd.DataFrame({"subject_id": stays["subject_id"].unique()})
    event_files = []
    for table in ("chartevents", "labevents"):
        target = work / f"{table}.parquet"
        event_files.append(target)
        stage(table, lambda t=table, p=target: _filter_events(connection, raw, t, subjects, p,
                                                              report))
    series = work / "timeseries.parquet"
    stage("timeseries", lambda: _timeseries(connection, event_files, stays, profile, series,
                                            report))
    for task in TASKS:
        stage(task, lambda t=task: _write_task(connection, t, stays, labels, series, ehr, report))


def _write_episode(path: Path, header: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(header + "\n".join(lines) + "\n")


def _save(connection: Any, frame: pd.DataFrame, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    connection.register("frame_to_save", frame)
    connection.execute(f"COPY frame_to_save TO '{temporary.as_posix()}' (FORMAT parquet)")
    connection.unregister("frame_to_save")
    os.replace(temporary, path)


def _load(connection: Any, path: Path) -> pd.DataFrame:
    return connection.execute(f"SELECT * FROM read_parquet('{path.as_posix()}')").df()
