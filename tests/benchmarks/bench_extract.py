"""Benchmark and faithfulness check of ``fusebench data extract`` (not a test; run by hand).

Three sub-commands::

    # speed and memory of the extractor on the synthetic raw download, replicated K times
    python tests/benchmarks/bench_extract.py speed --raw RAW/mimic-iv --copies 1 4 16 --json out.json

    # the same work in duckdb and polars (engine choice): filter one big events table
    python tests/benchmarks/bench_extract.py engines --raw RAW/mimic-iv --copies 16

    # compare our --profile medfuse-2022 output with the original pipeline's, file by file
    python tests/benchmarks/bench_extract.py compare --ours OUT/ehr --original ORIGINAL/data

The original (MedFuse ``mimic4extract``) is never vendored here: run it yourself in a separate
environment (pandas<2, numpy<1.24, PyYAML<6) on the gunzipped raw files and point ``compare`` at
its ``data/`` folder. Times are wall-clock seconds on the machine that runs the script; peak RSS
is the child process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

# Row counts of the full MIMIC-IV v1.0 tables the original hard-codes (mimic3csv.py).
FULL_SCALE_ROWS = {"chartevents": 329_499_788, "labevents": 122_103_667}
FULL_SCALE_STAYS = 76_540  # icustays rows of MIMIC-IV v1.0


# ----------------------------------------------------------------------------- replication
def replicate_raw(raw: Path, out: Path, copies: int, unmapped: int = 0) -> Path:
    """A raw tree holding ``copies`` copies of every patient (ids shifted per copy).

    ``unmapped`` extra chartevents rows per row carry item ids outside the variable map (about
    four in five rows of the real chartevents are such items), so the share of rows the
    extractor keeps is realistic.
    """
    import duckdb

    if (out / ".replicated").exists():  # made by an earlier run of this script
        return out
    if out.exists():
        shutil.rmtree(out)
    shift = {"subject_id": 10_000_000, "hadm_id": 100_000_000, "stay_id": 100_000_000,
             "labevent_id": 1_000_000_000, "specimen_id": 1_000_000_000}
    connection = duckdb.connect()
    connection.execute("SET threads=2")
    for source in sorted(raw.rglob("*.csv.gz")):
        target = out / source.relative_to(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(source, "rt") as handle:
            header = handle.readline().rstrip("\n").split(",")
        id_columns = [c for c in header if c in shift]
        if not id_columns or source.name.startswith("d_"):
            shutil.copy(source, target)
            continue
        columns = ", ".join(f"'{c}': 'VARCHAR'" for c in header)
        select = ", ".join(
            f"CASE WHEN \"{c}\" IS NULL OR \"{c}\" = '' THEN \"{c}\" ELSE "
            f"CAST(CAST(\"{c}\" AS BIGINT) + k * {shift[c]} AS VARCHAR) END AS \"{c}\""
            if c in shift else f'"{c}"' for c in header)
        padding = unmapped if source.name.startswith("chartevents") else 0
        select = select.replace('"itemid"', 'CASE WHEN j = 0 THEN "itemid" ELSE '
                                "CAST(229000 + j AS VARCHAR) END AS \"itemid\"")
        connection.execute(f"""
            COPY (SELECT {select} FROM read_csv('{source}', header=true, auto_detect=false,
                                                columns={{{columns}}}),
                                       range(0, {copies}) r(k), range(0, {padding + 1}) u(j))
            TO '{target}' (FORMAT csv, HEADER, COMPRESSION gzip)""")
    (out / ".replicated").touch()
    return out


def _rows(path: Path) -> int:
    with gzip.open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) - 1


# ----------------------------------------------------------------------------- speed
# Peak RSS from VmHWM (this process's own memory map; ru_maxrss would carry the parent's
# high-water mark across fork + exec).
_USAGE = ("\nimport json as _j, resource as _r; _u = _r.getrusage(_r.RUSAGE_SELF); "
          "_h = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
          "print('USAGE' + _j.dumps({'cpu_seconds': _u.ru_utime + _u.ru_stime, "
          "'peak_rss_gib': int(_h.split()[1]) / 2**20}))\n")


def _run_child(code: str) -> tuple[dict, str]:
    """Run python code in a child: wall seconds, CPU seconds (user + system, all threads) and
    peak RSS (GiB) of that child, and its other stdout.

    CPU seconds are reported beside wall-clock seconds because a shared machine's load inflates
    the latter; on an idle 2-core machine the wall time is at most the CPU time.
    """
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code + _USAGE], capture_output=True,
                            text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    lines = result.stdout.strip().splitlines()
    usage = json.loads(lines[-1].removeprefix("USAGE"))
    return ({"wall_seconds": round(seconds, 2), "cpu_seconds": round(usage["cpu_seconds"], 2),
             "peak_rss_gib": round(usage["peak_rss_gib"], 3)}, "\n".join(lines[:-1]))


def speed(raw: Path, copies: list[int], work: Path, unmapped: int = 0,
          memory_limit: str = "4GB") -> list[dict]:
    """Extract the raw tree replicated ``copies`` times; seconds per stage, peak RSS."""
    records = []
    for count in copies:
        tree = (raw if count == 1 and not unmapped else
                replicate_raw(raw, work / f"raw-x{count}-u{unmapped}", count, unmapped))
        out = work / f"out-x{count}"
        if out.exists():
            shutil.rmtree(out)
        code = ("import json; from pathlib import Path; "
                "from fusebench.data.extract import extract_mimic_iv; "
                f"s = extract_mimic_iv(Path({str(tree)!r}), Path({str(out)!r}), progress=False, "
                f"memory_limit={memory_limit!r}); "
                "print(json.dumps(s.seconds))")
        usage, stdout = _run_child(code)
        chart = _rows(next(tree.rglob("chartevents.csv.gz")))
        lab = _rows(next(tree.rglob("labevents.csv.gz")))
        stays = _rows(next(tree.rglob("icustays.csv.gz")))
        records.append({"copies": count, "unmapped_rows_per_row": unmapped,
                        "memory_limit": memory_limit, "stays": stays, "chartevents_rows": chart,
                        "labevents_rows": lab, **usage,
                        "stage_wall_seconds": json.loads(stdout.strip().splitlines()[-1])})
        print(json.dumps(records[-1]), flush=True)
    return records


def projection(records: list[dict]) -> dict:
    """Fit CPU seconds = a + b * rows on the runs and project to full MIMIC-IV row counts.

    Every row of the synthetic tables is a mapped item, while about a fifth of real chartevents
    rows are: the later stages do per-row work on all of them here, so the projection is an
    upper bound. CPU seconds bound the wall time of an idle 2-core machine from above.
    """
    rows = np.array([r["chartevents_rows"] + r["labevents_rows"] for r in records], float)
    cpu = np.array([r["cpu_seconds"] for r in records], float)
    slope, intercept = np.polyfit(rows, cpu, 1) if len(rows) > 1 else (cpu[0] / rows[0], 0.0)
    full_rows = sum(FULL_SCALE_ROWS.values())
    return {"fit": {"cpu_seconds_per_million_rows": round(float(slope) * 1e6, 3),
                    "fixed_cpu_seconds": round(float(intercept), 2)},
            "full_scale_rows": full_rows,
            "projected_full_scale_cpu_minutes": round(float(intercept + slope * full_rows) / 60, 1),
            "largest_run_peak_rss_gib": max(r["peak_rss_gib"] for r in records)}


# ----------------------------------------------------------------------------- engines
def engines(raw: Path, copies: int, work: Path, unmapped: int = 0) -> dict:
    """Filter chartevents (mapped items, a subject set) to Parquet in duckdb and in polars."""
    tree = replicate_raw(raw, work / f"raw-x{copies}-u{unmapped}", copies, unmapped)
    chart = next(tree.rglob("chartevents.csv.gz"))
    duck = f"""
import duckdb
from fusebench.data.extract.resources import all_mapped_item_ids
import pandas as pd
c = duckdb.connect(); c.execute("SET threads=2")
items = pd.DataFrame({{"itemid": list(all_mapped_item_ids())}})
c.register("items", items)
c.execute(\"\"\"COPY (SELECT subject_id, hadm_id, stay_id, charttime, e.itemid, value, valueuom
   FROM read_csv('{chart}', header=true, all_varchar=true) e
   JOIN items i ON CAST(e.itemid AS BIGINT) = i.itemid
   WHERE CAST(subject_id AS BIGINT) % 2 = 0) TO '{work}/duck.parquet' (FORMAT parquet)\"\"\")
"""
    polars = f"""
import os; os.environ["POLARS_MAX_THREADS"] = "2"
import polars as pl
from fusebench.data.extract.resources import all_mapped_item_ids
items = list(all_mapped_item_ids())
frame = pl.scan_csv('{chart}', infer_schema=False).select(
    ["subject_id", "hadm_id", "stay_id", "charttime", "itemid", "value", "valueuom"]).filter(
    pl.col("itemid").cast(pl.Int64).is_in(items) & (pl.col("subject_id").cast(pl.Int64) % 2 == 0))
frame.sink_parquet('{work}/polars.parquet')
"""
    result = {"chartevents_rows": _rows(chart)}
    for name, code in (("duckdb", duck), ("polars", polars)):
        result[name] = _run_child(code)[0]
    print(json.dumps(result))
    return result


# ----------------------------------------------------------------------------- compare
def _episode_frame(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=str)


def _cells_equal(ours: pd.Series, theirs: pd.Series) -> np.ndarray:
    """Equal as numbers when both parse (relative 1e-12), else as text; empty == empty."""
    a, b = ours.fillna(""), theirs.fillna("")
    x, y = pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce")
    both = x.notna() & y.notna()
    numeric_equal = np.isclose(x.fillna(0), y.fillna(0), rtol=1e-12, atol=0)
    return np.where(both, numeric_equal, a.to_numpy() == b.to_numpy())


def compare(ours: Path, original: Path) -> dict:
    """Listfiles (as sets of parsed rows) and episode CSVs (cell by cell after parsing)."""
    report: dict = {"listfiles": {}, "episodes": {}}
    for task in ("in-hospital-mortality", "phenotyping"):
        for split in ("train", "val", "test"):
            name = f"{task}/{split}_listfile.csv"
            a = pd.read_csv(ours / name, dtype=str)
            b = pd.read_csv(original / name, dtype=str)
            same_header = list(a.columns) == list(b.columns)
            key = list(a.columns)
            a_rows = set(map(tuple, a[key].to_numpy().tolist()))
            b_rows = set(map(tuple, b[key].to_numpy().tolist())) if same_header else set()
            report["listfiles"][name] = {
                "rows_ours": len(a), "rows_original": len(b), "same_header": same_header,
                "equal_as_sets": same_header and a_rows == b_rows,
                "same_order": same_header and a[key].equals(b[key]),
                "only_ours": sorted(a_rows - b_rows)[:5], "only_original": sorted(b_rows - a_rows)[:5]}
        for folder in ("train", "test"):
            files_a = {p.name for p in (ours / task / folder).glob("*.csv")}
            files_b = {p.name for p in (original / task / folder).glob("*.csv")}
            differing = []
            for file in sorted(files_a & files_b):
                a = _episode_frame(ours / task / folder / file)
                b = _episode_frame(original / task / folder / file)
                if list(a.columns) != list(b.columns) or len(a) != len(b):
                    differing.append({"file": file, "why": f"shape {a.shape} vs {b.shape}"})
                    continue
                equal = np.column_stack([_cells_equal(a[c], b[c]) for c in a.columns])
                if not equal.all():
                    row, column = np.argwhere(~equal)[0]
                    differing.append({"file": file, "cells": int((~equal).sum()),
                                      "first": {"row": int(row) + 2, "column": a.columns[column],
                                                "ours": a.iat[row, column],
                                                "original": b.iat[row, column]}})
            report["episodes"][f"{task}/{folder}"] = {
                "files_ours": len(files_a), "files_original": len(files_b),
                "only_ours": sorted(files_a - files_b)[:5],
                "only_original": sorted(files_b - files_a)[:5],
                "files_differing": len(differing), "differences": differing[:10]}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("speed", "engines"):
        sub = commands.add_parser(name)
        sub.add_argument("--raw", type=Path, required=True)
        sub.add_argument("--work", type=Path, default=Path("bench-extract-work"))
        sub.add_argument("--copies", type=int, nargs="+", default=[1, 4, 16])
        sub.add_argument("--json", type=Path, default=None)
        sub.add_argument("--unmapped", type=int, default=0,
                         help="extra chartevents rows of unmapped items per row (real: about 4)")
        sub.add_argument("--memory-limit", default="4GB")
    sub = commands.add_parser("compare")
    sub.add_argument("--ours", type=Path, required=True)
    sub.add_argument("--original", type=Path, required=True)
    sub.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "compare":
        result = compare(args.ours, args.original)
    elif args.command == "engines":
        args.work.mkdir(parents=True, exist_ok=True)
        result = engines(args.raw, max(args.copies), args.work, args.unmapped)
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        records = speed(args.raw, args.copies, args.work, args.unmapped, args.memory_limit)
        result = {"runs": records, **projection(records)}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
