"""The leaderboard: a JSON file per dataset and task, derived from result files, plus Markdown.

``leaderboards/<dataset>/<task>.json`` holds one entry per (method, training cohort, test cohort,
seed), each carrying its full result, and the runs that failed with their reason. It is rebuilt
from the run folders after every finished grid entry and changed only under a file lock with an
atomic replace, so concurrent writers and a killed process never leave a broken file. Submitted
results (``fusebench leaderboard merge``) are kept across rebuilds, and so are the entries of
other run folders (``runs`` of an entry: another grid writing the same leaderboard).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusebench.errors import FusebenchError
from fusebench.metrics import format_ci, score_predictions
from fusebench.results import (
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    read_result,
    utc_now,
    validate_result,
)
from fusebench.runner import BOOTSTRAP_SEED, read_predictions
from fusebench.specs import COHORTS, TaskSpec

__all__ = [
    "LEADERBOARD_SCHEMA_VERSION",
    "REFERENCE_METHOD",
    "entry_key",
    "leaderboard_path",
    "load_leaderboard",
    "merge_result",
    "rebuild_leaderboard",
    "render_markdown",
    "summary_rows",
]

LEADERBOARD_SCHEMA_VERSION = 1
REFERENCE_METHOD = "uni-ehr"


def leaderboard_path(root: Path, dataset: str, task: str) -> Path:
    """``root/leaderboards/<dataset>/<task>.json``."""
    return Path(root) / "leaderboards" / dataset / f"{task}.json"


def entry_key(result: dict[str, Any]) -> tuple[str, str, str, int]:
    """What makes two entries duplicates: method, training cohort, test cohort, seed."""
    return (result["method"]["name"], result["train_cohort"], result["test_cohort"]["name"],
            int(result["seeds"][0]))


def load_leaderboard(path: Path) -> dict[str, Any] | None:
    """The leaderboard at ``path`` (None if absent); every entry's result is re-validated."""
    if not path.exists():
        return None
    try:
        board = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FusebenchError(f"{path}: damaged leaderboard ({error}); delete it and rerun "
                             "`fusebench leaderboard` to rebuild it from the run folders") from error
    if not isinstance(board, dict) or board.get("schema_version") != LEADERBOARD_SCHEMA_VERSION:
        raise FusebenchError(f"{path}: not a fusebench leaderboard (schema_version "
                             f"{LEADERBOARD_SCHEMA_VERSION} expected)")
    for index, entry in enumerate(board.get("entries", [])):
        errors = validate_result(entry.get("result"))
        if errors:
            raise FusebenchError(f"{path}: entry {index} is invalid: {errors[0]}")
    return board


def _local_results(runs: Path, dataset: str, task: str, fingerprint: str
                   ) -> tuple[list[tuple[dict, Path]], list[dict]]:
    results, failed = [], []
    base = Path(runs) / dataset / task
    for folder in sorted(base.glob("*/*/seed*")):
        run = {"method": folder.parent.parent.name, "train_cohort": folder.parent.name,
               "seed": int(folder.name.removeprefix("seed"))}
        failure = folder / "failed.json"
        if failure.exists():
            try:
                reason = json.loads(failure.read_text()).get("error", "?")
            except (ValueError, AttributeError):
                reason = f"{failure.name} is unreadable"
            failed.append({**run, "error": reason})
            continue
        for cohort in COHORTS:
            path = folder / f"result-{cohort}.json"
            if path.exists():
                try:
                    result = read_result(path)
                except FusebenchError as error:
                    # Never loaded, never fatal: the grid reruns the entry (its results are not
                    # finished_results), so one damaged file must not stop the leaderboard.
                    failed.append({**run, "error": str(error)})
                    continue
                if result["dataset"]["fingerprint"] == fingerprint:
                    results.append((result, folder))
    return results, failed


# The grid rebuilds the leaderboard after every finished entry; an entry's difference changes
# only with its own or the reference's predictions, so one process computes each once.
_known_differences: dict[tuple, dict | None] = {}


def _differences(results: list[tuple[dict, Path]], task: TaskSpec, n_resamples: int
                 ) -> dict[tuple, dict]:
    """Paired difference to the reference method on the same bootstrap resamples."""
    reference = {
        (r["test_cohort"]["name"], r["seeds"][0]): (r, folder)
        for r, folder in results
        if r["method"]["name"] == REFERENCE_METHOD and r["train_cohort"] == "partial"
    }
    differences = {}
    for result, folder in results:
        ref_result, ref_folder = reference.get((result["test_cohort"]["name"], result["seeds"][0]),
                                               (None, None))
        if ref_result is None:
            continue
        key = (task.name, n_resamples, result["predictions"]["sha256"],
               ref_result["predictions"]["sha256"])
        if key not in _known_differences:
            name = f"predictions-{result['test_cohort']['name']}.csv"
            _known_differences[key] = _difference(folder / name, ref_folder / name, task,
                                                  n_resamples)
        if _known_differences[key] is not None:
            differences[entry_key(result)] = _known_differences[key]
    return differences


def _difference(predictions: Path, reference: Path, task: TaskSpec, n_resamples: int
                ) -> dict | None:
    """This predictions file minus the reference's on the same resamples (None: other stays)."""
    stays, labels, probabilities = read_predictions(predictions, task)
    ref_stays, _, ref_probabilities = read_predictions(reference, task)
    order = np.argsort(ref_stays)
    position = order[np.searchsorted(ref_stays, stays, sorter=order)]
    if not np.array_equal(ref_stays[position], stays):
        return None
    scores = score_predictions(labels, probabilities, task.labels, n_resamples=n_resamples,
                               seed=BOOTSTRAP_SEED, reference_prob=ref_probabilities[position])
    return scores["difference"]


def _entry(result: dict[str, Any], source: str, difference: dict | None,
           runs: str | None = None) -> dict[str, Any]:
    entry = {
        "method": result["method"]["name"],
        "distribution": result["method"]["distribution"],
        "train_cohort": result["train_cohort"],
        "test_cohort": result["test_cohort"]["name"],
        "seed": int(result["seeds"][0]),
        "auroc": result["metrics"]["auroc"]["macro"],
        "auprc": result["metrics"]["auprc"]["macro"],
        "difference_to_reference": difference,
        "source": source,
        "result": result,
    }
    if runs is not None:
        entry["runs"] = runs  # the run folder root it was derived from
    return entry


def _from_elsewhere(record: dict[str, Any], runs: str) -> bool:
    """Whether a previous entry or failure came from another run folder root (or a merge): a
    rebuild from ``runs`` re-derives its own and must keep those."""
    return record.get("source") == "submitted" or record.get("runs") not in (None, runs)


def rebuild_leaderboard(path: Path, *, runs: Path, task: TaskSpec, dataset: dict[str, Any],
                        preset: str, n_resamples: int = 1000,
                        throughput: dict[str, dict] | None = None) -> dict[str, Any]:
    """Rebuild the leaderboard of one task from the run folders, keeping submitted entries.

    Args:
        path: the leaderboard JSON to write (Markdown is written beside it).
        runs: root of the run folders.
        task: the task.
        dataset: ``{"name", "fingerprint", "is_demo"}`` of the data the runs used.
        preset: preset of the grid (recorded).
        n_resamples: bootstrap resamples for the differences to the reference.
        throughput: optional throughput record per method name, attached to its entries.

    Returns:
        The leaderboard written.
    """
    # Relative to the leaderboard's folder: a committed leaderboard names no machine's paths.
    here = os.path.relpath(Path(runs).resolve(), Path(path).parent.resolve())
    with file_lock(path):
        previous = load_leaderboard(path)
        local, failed = _local_results(runs, dataset["name"], task.name, dataset["fingerprint"])
        failed = [{**f, "runs": here} for f in failed]
        differences = _differences(local, task, n_resamples)
        entries = [_entry(r, "local", differences.get(entry_key(r)), here) for r, _ in local]
        keys = {entry_key(e["result"]) for e in entries}
        if previous and previous["dataset"]["fingerprint"] == dataset["fingerprint"]:
            entries += [e for e in previous["entries"]
                        if _from_elsewhere(e, here) and entry_key(e["result"]) not in keys]
            runs_seen = {(f["method"], f["train_cohort"], f["seed"]) for f in failed} | {
                (e["method"], e["train_cohort"], e["seed"]) for e in entries}
            failed += [f for f in previous.get("failed", []) if _from_elsewhere(f, here)
                       and (f["method"], f["train_cohort"], f["seed"]) not in runs_seen]
        for entry in entries:
            record = (throughput or {}).get(entry["method"])
            if record is not None:
                entry["throughput"] = record
        board = {
            "schema_version": LEADERBOARD_SCHEMA_VERSION,
            "generated": utc_now(),
            "dataset": dataset,
            "task": task.name,
            "preset": preset,
            "reference_method": REFERENCE_METHOD,
            "entries": sorted(entries, key=lambda e: (e["test_cohort"], e["method"],
                                                      e["train_cohort"], e["seed"])),
            "failed": failed,
        }
        _write(path, board)
    return board


def merge_result(path: Path, result_file: Path, *, force: bool = False) -> dict[str, Any]:
    """Add a submitted result to the leaderboard at ``path`` after validation.

    Refuses a schema violation, a result from a different dataset (fingerprint) or task, and a
    duplicate entry unless ``force`` (which replaces it).

    Returns:
        The leaderboard written.
    """
    result = read_result(result_file)
    with file_lock(path):
        board = load_leaderboard(path)
        if board is None:
            board = {"schema_version": LEADERBOARD_SCHEMA_VERSION, "generated": utc_now(),
                     "dataset": {k: result["dataset"][k] for k in ("name", "fingerprint",
                                                                   "is_demo")},
                     "task": result["task"], "preset": result.get("preset", "?"),
                     "reference_method": REFERENCE_METHOD, "entries": [], "failed": []}
        if result["dataset"]["fingerprint"] != board["dataset"]["fingerprint"]:
            raise FusebenchError(
                f"{result_file}: dataset fingerprint {result['dataset']['fingerprint'][:12]} "
                f"differs from the leaderboard's {board['dataset']['fingerprint'][:12]}; "
                "results are only comparable on identical data and preprocessing"
            )
        if result["task"] != board["task"]:
            raise FusebenchError(f"{result_file}: task {result['task']!r} does not match the "
                                 f"leaderboard's {board['task']!r}")
        key = entry_key(result)
        duplicates = [e for e in board["entries"] if entry_key(e["result"]) == key]
        if duplicates and not force:
            raise FusebenchError(f"{result_file}: the leaderboard already has {key[0]} trained "
                                 f"on {key[1]}, tested on {key[2]}, seed {key[3]}; use --force "
                                 "to replace it")
        board["entries"] = [e for e in board["entries"] if entry_key(e["result"]) != key]
        board["entries"].append(_entry(result, "submitted", None))
        board["generated"] = utc_now()
        _write(path, board)
    return board


def _write(path: Path, board: dict[str, Any]) -> None:
    atomic_write_json(path, board)
    atomic_write_bytes(path.with_suffix(".md"), render_markdown(board).encode())


def summary_rows(board: dict[str, Any], test_cohort: str) -> list[dict[str, Any]]:
    """Rows of the table of one test cohort, ranked by AUROC: seeds averaged per method."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for entry in board["entries"]:
        if entry["test_cohort"] == test_cohort:
            groups[(entry["method"], entry["train_cohort"])].append(entry)
    rows = []
    for (method, cohort), entries in groups.items():
        entries.sort(key=lambda e: e["seed"])
        aurocs = [e["auroc"]["value"] for e in entries]
        auprcs = [e["auprc"]["value"] for e in entries]
        rows.append({
            "method": method, "train_cohort": cohort, "seeds": [e["seed"] for e in entries],
            "auroc": entries[0]["auroc"], "auprc": entries[0]["auprc"],
            "auroc_mean": float(np.mean(aurocs)), "auroc_sd": _sd(aurocs),
            "auprc_mean": float(np.mean(auprcs)), "auprc_sd": _sd(auprcs),
            "difference": (entries[0]["difference_to_reference"] or {}).get("auroc", {})
            .get("macro"),
            "throughput": entries[0].get("throughput"),
        })
    rows.sort(key=lambda r: -r["auroc_mean"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _sd(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _cell(entry: dict | None) -> str:
    return "-" if entry is None or entry.get("value") is None else format_ci(entry)


def _lines(board: dict[str, Any], test_cohort: str) -> Iterable[str]:
    rows = summary_rows(board, test_cohort)
    several = any(len(r["seeds"]) > 1 for r in rows)
    header = ["rank", "method", "train cohort", "AUROC [95% CI]", "AUPRC [95% CI]",
              f"ΔAUROC vs {board['reference_method']} [95% CI]"]
    if several:
        header += ["AUROC mean ± sd (seeds)"]
    yield "| " + " | ".join(header) + " |"
    yield "|" + "---|" * len(header)
    for row in rows:
        cells = [str(row["rank"]), row["method"], row["train_cohort"], _cell(row["auroc"]),
                 _cell(row["auprc"]), _cell(row["difference"])]
        if several:
            sd = "-" if row["auroc_sd"] is None else f"{row['auroc_sd']:.3f}"
            cells.append(f"{row['auroc_mean']:.3f} ± {sd} (n={len(row['seeds'])})")
        yield "| " + " | ".join(cells) + " |"


def render_markdown(board: dict[str, Any]) -> str:
    """The leaderboard as Markdown: one ranked table per test cohort, then failed runs."""
    dataset = board["dataset"]
    note = ("synthetic demo data, not MIMIC: figures show that the harness works, not how "
            "methods compare on patients" if dataset.get("is_demo") else "MIMIC-IV + MIMIC-CXR")
    lines = [f"# {board['task']} on {dataset['name']} ({note})", "",
             f"Dataset fingerprint `{dataset['fingerprint'][:16]}`, preset `{board['preset']}`, "
             f"generated {board['generated']}. CIs: percentile bootstrap over test stays; "
             "macro recomputed in every resample; differences on the same resamples.", ""]
    for cohort in COHORTS:
        lines += [f"## Test cohort: {cohort}", "", *_lines(board, cohort), ""]
    if board.get("failed"):
        lines += ["## Failed runs", ""]
        lines += [f"- {f['method']} ({f['train_cohort']}, seed {f['seed']}): {f['error']}"
                  for f in board["failed"]]
        lines.append("")
    return "\n".join(lines)
