"""The leaderboard: a JSON file per dataset and task, derived from result files, plus Markdown.

``leaderboards/<dataset>/<task>.json`` ranks the entries computed with one set of *settings*:
one data fingerprint, one preset and the same command-line overrides (``entries``). Entries
computed on other data or with other settings are never dropped: they are kept in
``other_entries`` and shown apart, each group in its own tables. An entry is one (method,
training cohort, test cohort, seed) with its full result.

Beside the board, in its folder::

    predictions/<task>/<sha256[:16]>.csv    every entry's predictions, content-addressed
    submissions/<task>/<...>.json           every result merged with `leaderboard merge`

so a new method's result is compared with the reference method (ΔAUROC on the same bootstrap
resamples) without retraining anything, and a rebuild restores every merged submission. A
rebuild takes the run folders, the submissions and the previous board's entries (a newer result
with the same settings and key replaces an older one). It writes under a file lock with an
atomic replace, so concurrent writers and a killed process never leave a broken file. Every
result is validated against the shipped schema; every predictions file is checked against the
SHA-256 its result records before a difference is computed from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, file_lock
from fusebench.metrics import format_ci, score_predictions
from fusebench.predictions import BOOTSTRAP_SEED, read_predictions, verify_predictions
from fusebench.results import (
    NAME_PATTERN,
    load_json_file,
    read_result,
    sha256_file,
    utc_now,
    validate_result,
)
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
    "settings_of",
    "summary_rows",
]

LEADERBOARD_SCHEMA_VERSION = 1
REFERENCE_METHOD = "uni-ehr"
_MAX_BOARD_BYTES = 512 * 2**20


def leaderboard_path(root: Path, dataset: str, task: str) -> Path:
    """``root/leaderboards/<dataset>/<task>.json``, for names that cannot leave that folder.

    Raises:
        FusebenchError: ``dataset`` or ``task`` is not a plain name (``[a-z0-9][a-z0-9-]*``).
    """
    for what, name in (("dataset name", dataset), ("task", task)):
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name) or len(name) > 64:
            raise FusebenchError(f"{what} {str(name)[:40]!r} is not a plain name "
                                 "([a-z0-9][a-z0-9-]*): refusing to build a leaderboard path")
    return Path(root) / "leaderboards" / dataset / f"{task}.json"


def entry_key(result: Mapping[str, Any]) -> tuple[str, str, str, int]:
    """What makes two entries of one settings group duplicates: method, training cohort, test
    cohort, seed."""
    return (result["method"]["name"], result["train_cohort"], result["test_cohort"]["name"],
            int(result["seeds"][0]))


def settings_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a result was computed with that must match to rank it with others: data
    fingerprint, preset and command-line overrides."""
    identity = result.get("identity") or {}
    return {"fingerprint": result["dataset"]["fingerprint"],
            "preset": result.get("preset", "?"),
            "overrides": dict((identity.get("fields") or {}).get("overrides") or {})}


def _group(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True)


def _board_settings(board: Mapping[str, Any]) -> dict[str, Any]:
    return {"fingerprint": board["dataset"]["fingerprint"], "preset": board.get("preset", "?"),
            "overrides": dict(board.get("overrides") or {})}


def load_leaderboard(path: Path) -> dict[str, Any] | None:
    """The leaderboard at ``path`` (None if absent); every entry's result is re-validated."""
    path = Path(path)
    if not path.exists():
        return None
    submissions = _submissions_dir(path)
    way_out = (f"delete it and rerun `fusebench leaderboard` with the same settings: it is rebuilt"
               f" from the run folders and the merged results kept in {submissions}")
    try:
        board = load_json_file(path, max_bytes=_MAX_BOARD_BYTES, what="leaderboard")
    except FusebenchError as error:
        raise FusebenchError(f"{path}: damaged leaderboard; {way_out}") from error
    if not isinstance(board, dict) or board.get("schema_version") != LEADERBOARD_SCHEMA_VERSION:
        raise FusebenchError(f"{path}: not a fusebench leaderboard (schema_version "
                             f"{LEADERBOARD_SCHEMA_VERSION} expected)")
    for section in ("entries", "other_entries"):
        for index, entry in enumerate(board.get(section, [])):
            errors = validate_result(entry.get("result") if isinstance(entry, dict) else None)
            if errors:
                raise FusebenchError(f"{path}: {section} {index} is invalid: {errors[0]}; "
                                     f"{way_out}")
    board.setdefault("other_entries", [])
    return board


def _predictions_dir(board_path: Path, task: str) -> Path:
    return Path(board_path).parent / "predictions" / task


def _submissions_dir(board_path: Path) -> Path:
    return Path(board_path).parent / "submissions" / Path(board_path).stem


def _keep_predictions(board_path: Path, task: str, source: Path, sha256: str) -> str | None:
    """Copy a predictions file beside the board (content-addressed); its path relative to the
    board's folder, or None when ``source`` is missing or not the file its result recorded."""
    target = _predictions_dir(board_path, task) / f"{sha256[:16]}.csv"
    relative = target.relative_to(Path(board_path).parent).as_posix()
    if target.exists() and sha256_file(target) == sha256:
        return relative
    try:
        data = Path(source).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    atomic_write_bytes(target, data)
    return relative


def _local_results(board_path: Path, runs: Path, dataset: str, task: str, here: str
                   ) -> tuple[list[dict], list[dict]]:
    """Entries of every finished run under ``runs`` (any settings) and the failed runs."""
    entries, failed = [], []
    base = Path(runs) / dataset / task
    for folder in sorted(base.glob("*/*/seed*")):
        run = {"method": folder.parent.parent.name, "train_cohort": folder.parent.name,
               "seed": folder.name.removeprefix("seed"), "runs": here}
        failure = folder / "failed.json"
        if failure.exists():
            try:
                reason = json.loads(failure.read_text()).get("error", "?")
            except (ValueError, AttributeError, OSError, UnicodeDecodeError):
                reason = f"{failure.name} is unreadable"
            failed.append({**run, "error": str(reason)[:500]})
            continue
        for cohort in COHORTS:
            path = folder / f"result-{cohort}.json"
            if not path.exists():
                continue
            try:
                result = read_result(path)
            except FusebenchError as error:
                # Never loaded, never fatal: the grid reruns the entry (its results are not
                # finished_results), so one damaged file must not stop the leaderboard.
                failed.append({**run, "error": str(error)[:500]})
                continue
            predictions = _keep_predictions(board_path, task, folder / result["predictions"]["file"],
                                            result["predictions"]["sha256"])
            entries.append(_entry(result, "local", predictions, runs=here))
    return entries, failed


def _submission_name(result: Mapping[str, Any]) -> str:
    method, train, test, seed = entry_key(result)
    group = hashlib.sha256(_group(settings_of(result)).encode()).hexdigest()[:12]
    return f"{method}--{train}--{test}--seed{seed}--{group}.json"


def _submitted(board_path: Path, task: str) -> tuple[list[dict], list[dict]]:
    """Entries of the results merged into this board (kept in its ``submissions/``)."""
    entries, failed = [], []
    for path in sorted(_submissions_dir(board_path).glob("*.json")):
        try:
            result = read_result(path)
        except FusebenchError as error:
            failed.append({"method": path.stem.split("--")[0], "train_cohort": "?", "seed": "?",
                           "error": str(error)[:500]})
            continue
        sha = result["predictions"]["sha256"]
        target = _predictions_dir(board_path, task) / f"{sha[:16]}.csv"
        predictions = (target.relative_to(Path(board_path).parent).as_posix()
                       if target.exists() else None)
        entries.append(_entry(result, "submitted", predictions))
    return entries, failed


def _entry(result: dict[str, Any], source: str, predictions: str | None,
           runs: str | None = None) -> dict[str, Any]:
    entry = {
        "method": result["method"]["name"],
        "distribution": result["method"]["distribution"],
        "train_cohort": result["train_cohort"],
        "test_cohort": result["test_cohort"]["name"],
        "seed": int(result["seeds"][0]),
        "auroc": result["metrics"]["auroc"]["macro"],
        "auprc": result["metrics"]["auprc"]["macro"],
        "difference_to_reference": None,
        "source": source,
        "predictions": predictions,  # relative to the board's folder; None: not kept
        "result": result,
    }
    if runs is not None:
        entry["runs"] = runs  # the run folder root it was derived from
    return entry


def _combine(*sources: Iterable[dict]) -> list[dict]:
    """One entry per (settings, key): the first source that has it wins."""
    chosen: dict[tuple, dict] = {}
    for source in sources:
        for entry in source:
            result = entry["result"]
            chosen.setdefault((_group(settings_of(result)), *entry_key(result)), entry)
    return list(chosen.values())


# The grid rebuilds the leaderboard after every finished entry; an entry's difference changes
# only with its own or the reference's predictions, so one process computes each once.
_known_differences: dict[tuple, dict | None] = {}


def _attach_differences(entries: list[dict], board_path: Path, task: TaskSpec,
                        n_resamples: int) -> None:
    """Each entry's paired difference to the reference method of its settings group (trained on
    the partial cohort, same test cohort and seed) on the same bootstrap resamples."""
    folder = Path(board_path).parent
    reference = {
        (_group(settings_of(e["result"])), e["test_cohort"], e["seed"]): e for e in entries
        if e["method"] == REFERENCE_METHOD and e["train_cohort"] == "partial"
        and e.get("predictions")
    }
    for entry in entries:
        entry["difference_to_reference"] = None
        ref = reference.get((_group(settings_of(entry["result"])), entry["test_cohort"],
                             entry["seed"]))
        if ref is None or not entry.get("predictions"):
            continue
        if not ((folder / entry["predictions"]).exists()
                and (folder / ref["predictions"]).exists()):
            continue  # a kept file deleted by hand: no difference, the entry stays
        sha, ref_sha = (entry["result"]["predictions"]["sha256"],
                        ref["result"]["predictions"]["sha256"])
        key = (task.name, n_resamples, sha, ref_sha)
        if key not in _known_differences:
            _known_differences[key] = _difference(folder / entry["predictions"], sha,
                                                  folder / ref["predictions"], ref_sha, task,
                                                  n_resamples)
        entry["difference_to_reference"] = _known_differences[key]


def _difference(predictions: Path, sha: str, reference: Path, ref_sha: str, task: TaskSpec,
                n_resamples: int) -> dict | None:
    """This predictions file minus the reference's on the same resamples (None: other stays).

    Raises:
        FusebenchError: a predictions file is not the one its result recorded.
    """
    stays, labels, probabilities = read_predictions(predictions, task, sha256=sha)
    ref_stays, _, ref_probabilities = read_predictions(reference, task, sha256=ref_sha)
    if len(ref_stays) != len(stays):
        return None
    order = np.argsort(ref_stays)
    position = order[np.clip(np.searchsorted(ref_stays, stays, sorter=order), 0,
                             len(order) - 1)]
    if not np.array_equal(ref_stays[position], stays):
        return None
    scores = score_predictions(labels, probabilities, task.labels, n_resamples=n_resamples,
                               seed=BOOTSTRAP_SEED, reference_prob=ref_probabilities[position])
    return scores["difference"]


def _board(dataset: Mapping[str, Any], task: str, settings: Mapping[str, Any],
           entries: list[dict], failed: list[dict],
           throughput: Mapping[str, dict] | None = None) -> dict[str, Any]:
    for entry in entries:
        record = (throughput or {}).get(entry["method"])
        if record is not None:
            entry["throughput"] = record
    group = _group(settings)

    def order(entry: dict) -> tuple:
        return (entry["result"]["dataset"]["fingerprint"], entry["result"].get("preset", ""),
                entry["test_cohort"], entry["method"], entry["train_cohort"], entry["seed"])

    return {
        "schema_version": LEADERBOARD_SCHEMA_VERSION,
        "generated": utc_now(),
        "dataset": {k: dataset[k] for k in ("name", "fingerprint", "is_demo")},
        "task": task,
        "preset": settings["preset"],
        "overrides": dict(settings["overrides"]),
        "reference_method": REFERENCE_METHOD,
        "entries": sorted((e for e in entries if _group(settings_of(e["result"])) == group),
                          key=order),
        "other_entries": sorted((e for e in entries if _group(settings_of(e["result"])) != group),
                                key=order),
        "failed": failed,
    }


def rebuild_leaderboard(path: Path, *, runs: Path, task: TaskSpec, dataset: dict[str, Any],
                        preset: str, overrides: Mapping[str, Any] | None = None,
                        n_resamples: int = 1000,
                        throughput: dict[str, dict] | None = None) -> dict[str, Any]:
    """Rebuild the leaderboard of one task from the run folders, the merged submissions and the
    previous board, ranking the entries of the given settings and keeping every other entry.

    Args:
        path: the leaderboard JSON to write (Markdown is written beside it).
        runs: root of the run folders.
        task: the task.
        dataset: ``{"name", "fingerprint", "is_demo"}`` of the data the runs used.
        preset: preset of the grid.
        overrides: command-line overrides of the grid (``epochs``, ``lr``...; None values are
            not overrides).
        n_resamples: bootstrap resamples for the differences to the reference.
        throughput: optional throughput record per method name, attached to its entries.

    Returns:
        The leaderboard written.
    """
    path = Path(path)
    settings = {"fingerprint": dataset["fingerprint"], "preset": preset,
                "overrides": {k: v for k, v in (overrides or {}).items() if v is not None}}
    # Relative to the leaderboard's folder: a committed leaderboard names no machine's paths.
    here = os.path.relpath(Path(runs).resolve(), path.parent.resolve())
    with file_lock(path):
        previous = load_leaderboard(path)
        local, failed = _local_results(path, runs, dataset["name"], task.name, here)
        submitted, bad = _submitted(path, task.name)
        failed += bad
        kept = [*previous["entries"], *previous["other_entries"]] if previous else []
        entries = _combine(local, submitted, kept)
        seen = {(f["method"], f["train_cohort"], str(f["seed"])) for f in failed}
        failed += [f for f in (previous or {}).get("failed", [])
                   if f.get("runs") != here
                   and (f["method"], f["train_cohort"], str(f["seed"])) not in seen]
        _attach_differences(entries, path, task, n_resamples)
        board = _board(dataset, task.name, settings, entries, failed, throughput)
        _write(path, board)
    return board


def merge_result(path: Path, result_file: Path, *, force: bool = False,
                 task: TaskSpec | None = None, n_resamples: int = 1000) -> dict[str, Any]:
    """Add a submitted result to the leaderboard at ``path`` after validation.

    The result file is kept in the board's ``submissions/`` folder and its predictions (the file
    its result names, beside it, checked against the recorded SHA-256) in ``predictions/``;
    with ``task`` given, its difference to the reference method is computed on the same
    bootstrap resamples as the others'. A result computed with other settings than the board's
    ranked entries (data fingerprint, preset, overrides) is kept in ``other_entries``.

    Args:
        path: the leaderboard JSON.
        result_file: the result to merge.
        force: replace an entry with the same settings and key.
        task: the task (for the difference to the reference; None: no difference computed).
        n_resamples: bootstrap resamples of the difference.

    Returns:
        The leaderboard written.

    Raises:
        FusebenchError: an invalid result, another dataset or task than the board's, a
            duplicate without ``force``, or predictions that are not the ones recorded.
    """
    path, result_file = Path(path), Path(result_file)
    result = read_result(result_file)
    predictions_file = result_file.parent / result["predictions"]["file"]
    sha = result["predictions"]["sha256"]
    if predictions_file.exists():
        verify_predictions(predictions_file, sha)
        if task is not None:
            _check_values(result, result_file, predictions_file, task)
    with file_lock(path):
        board = load_leaderboard(path)
        if board is None:
            board = _board(result["dataset"], result["task"], settings_of(result), [], [])
        if result["dataset"]["name"] != board["dataset"]["name"]:
            raise FusebenchError(f"{result_file}: dataset {result['dataset']['name']!r} does not "
                                 f"match the leaderboard's {board['dataset']['name']!r}")
        if result["task"] != board["task"]:
            raise FusebenchError(f"{result_file}: task {result['task']!r} does not match the "
                                 f"leaderboard's {board['task']!r}")
        key, group = entry_key(result), _group(settings_of(result))
        entries = [*board["entries"], *board["other_entries"]]
        same = [e for e in entries
                if entry_key(e["result"]) == key and _group(settings_of(e["result"])) == group]
        if same and not force:
            raise FusebenchError(f"{result_file}: the leaderboard already has {key[0]} trained "
                                 f"on {key[1]}, tested on {key[2]}, seed {key[3]}; use --force "
                                 "to replace it")
        kept = _keep_predictions(path, result["task"], predictions_file, sha)
        entries = [e for e in entries if not any(e is s for s in same)]
        entries.append(_entry(result, "submitted", kept))
        if task is not None:
            _attach_differences(entries, path, task, n_resamples)
        board = _board(board["dataset"], board["task"], _board_settings(board), entries,
                       board.get("failed", []))
        # The submission is kept first, so that no merged result is ever missing from
        # submissions/; a merge that then cannot write the board takes it back.
        submission = _submissions_dir(path) / _submission_name(result)
        previous = submission.read_bytes() if submission.exists() else None
        atomic_write_bytes(submission, result_file.read_bytes())
        try:
            _write(path, board)
        except BaseException:
            if previous is None:
                submission.unlink(missing_ok=True)
            else:
                atomic_write_bytes(submission, previous)
            raise
        from fusebench.plots import save_forest_plot  # plots imports this module

        save_forest_plot(board, path.with_suffix(".png"))
    return board


def _check_values(result: Mapping[str, Any], result_file: Path, predictions: Path,
                  task: TaskSpec) -> None:
    """The result's macro AUROC and AUPRC must be those of its predictions.

    Raises:
        FusebenchError: a value that its predictions do not give (one line).
    """
    _, labels, probabilities = read_predictions(predictions, task)
    if len(labels) != result["test_cohort"]["n"]:
        raise FusebenchError(f"{result_file}: test_cohort.n {result['test_cohort']['n']} but "
                             f"{predictions.name} holds {len(labels)} stays")
    # Point estimates do not depend on the resamples: a few suffice.
    scores = score_predictions(labels, probabilities, task.labels, n_resamples=10,
                               seed=BOOTSTRAP_SEED)
    for metric in ("auroc", "auprc"):
        claimed = result["metrics"][metric]["macro"]["value"]
        actual = scores[metric]["macro"]["value"]
        if (claimed is None) != (actual is None) or (
                claimed is not None and abs(claimed - actual) > 1e-9):
            raise FusebenchError(
                f"{result_file}: metrics.{metric}.macro.value {claimed} is not what its "
                f"predictions give ({actual}); submit the files `fusebench run` wrote, unchanged")


def _write(path: Path, board: dict[str, Any]) -> None:
    atomic_write_json(path, board)
    atomic_write_text(path.with_suffix(".md"), render_markdown(board))


def summary_rows(board: Mapping[str, Any], test_cohort: str,
                 entries: Sequence[dict] | None = None) -> list[dict[str, Any]]:
    """Rows of the table of one test cohort: one per method and training cohort.

    With one seed a row shows that seed's value and 95% CI; with several, the mean and sd across
    seeds, each seed's value and CI beside them. Rows are ranked by the AUROC they show.

    Args:
        board: the leaderboard.
        test_cohort: ``paired`` or ``partial``.
        entries: the entries to summarise (default: the board's ranked ``entries``).
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for entry in board["entries"] if entries is None else entries:
        if entry["test_cohort"] == test_cohort:
            groups[(entry["method"], entry["train_cohort"])].append(entry)
    rows = []
    for (method, cohort), members in groups.items():
        members.sort(key=lambda e: e["seed"])
        several = len(members) > 1
        row: dict[str, Any] = {
            "method": method, "train_cohort": cohort, "seeds": [e["seed"] for e in members],
            "throughput": members[0].get("throughput"),
            "per_seed": [{"seed": e["seed"], "auroc": e["auroc"], "auprc": e["auprc"],
                          "difference": _auroc_difference(e)} for e in members],
        }
        for metric in ("auroc", "auprc"):
            values = [e[metric]["value"] for e in members if e[metric]["value"] is not None]
            row[f"{metric}_mean"] = float(np.mean(values)) if values else None
            row[f"{metric}_sd"] = _sd(values)
            row[metric] = ({"value": row[f"{metric}_mean"], "ci": None} if several
                           else members[0][metric])
        differences = [d["value"] for d in (_auroc_difference(e) for e in members)
                       if d is not None and d.get("value") is not None]
        row["difference"] = (_auroc_difference(members[0]) if not several
                             else {"value": float(np.mean(differences)), "ci": None}
                             if len(differences) == len(members) else None)
        row["difference_sd"] = _sd(differences) if several else None
        rows.append(row)
    rows.sort(key=lambda r: (r["auroc_mean"] is None, -(r["auroc_mean"] or 0.0), r["method"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _auroc_difference(entry: Mapping[str, Any]) -> dict | None:
    return ((entry.get("difference_to_reference") or {}).get("auroc") or {}).get("macro")


def _sd(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def escape_cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell: no line breaks, pipes or HTML."""
    flat = " ".join(str(text).split())
    for raw, escaped in (("\\", "\\\\"), ("|", "\\|"), ("<", "&lt;"), (">", "&gt;"),
                         ("`", "\\`")):
        flat = flat.replace(raw, escaped)
    return flat[:200]


def _cell(entry: Mapping[str, Any] | None) -> str:
    return "-" if entry is None or entry.get("value") is None else format_ci(entry)


def shown(row: Mapping[str, Any], metric: str) -> str:
    """The table text of a row's metric: value [CI] for one seed, mean ± sd over seeds."""
    if len(row["seeds"]) == 1:
        return _cell(row[metric])
    if row[f"{metric}_mean"] is None:
        return "-"
    return f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_sd']:.3f} (n={len(row['seeds'])})"


def shown_difference(row: Mapping[str, Any]) -> str:
    """The table text of a row's ΔAUROC: value [CI] for one seed, mean ± sd over seeds."""
    if len(row["seeds"]) == 1 or row["difference"] is None:
        return _cell(row["difference"])
    return f"{row['difference']['value']:+.3f} ± {row['difference_sd']:.3f}"


def _lines(board: Mapping[str, Any], test_cohort: str, entries: Sequence[dict]) -> Iterable[str]:
    rows = summary_rows(board, test_cohort, entries)
    several = any(len(r["seeds"]) > 1 for r in rows)
    what = "mean ± sd over seeds, or value [95% CI]" if several else "[95% CI]"
    header = ["rank", "method", "train cohort", f"AUROC {what}", f"AUPRC {what}",
              f"ΔAUROC vs {board['reference_method']} {what}"]
    if several:
        header += ["AUROC per seed [95% CI]"]
    yield "| " + " | ".join(header) + " |"
    yield "|" + "---|" * len(header)
    for row in rows:
        cells = [str(row["rank"]), escape_cell(row["method"]), row["train_cohort"],
                 shown(row, "auroc"), shown(row, "auprc"), shown_difference(row)]
        if several:
            cells.append("; ".join(f"{s['seed']}: {_cell(s['auroc'])}" for s in row["per_seed"]))
        yield "| " + " | ".join(cells) + " |"


def _settings_text(settings: Mapping[str, Any]) -> str:
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(settings["overrides"].items()))
    return (f"data fingerprint `{escape_cell(settings['fingerprint'][:16])}`, preset "
            f"`{escape_cell(settings['preset'])}`"
            + (f", overrides `{escape_cell(overrides)}`" if overrides else ""))


def render_markdown(board: Mapping[str, Any]) -> str:
    """The leaderboard as Markdown: one ranked table per test cohort, then the entries of other
    data or settings (each group apart), then failed runs."""
    dataset = board["dataset"]
    note = ("synthetic demo data, not MIMIC: figures show that the harness works, not how "
            "methods compare on patients" if dataset.get("is_demo") else "MIMIC-IV + MIMIC-CXR")
    lines = [f"# {escape_cell(board['task'])} on {escape_cell(dataset['name'])} ({note})", "",
             f"Ranked entries: {_settings_text(_board_settings(board))}; generated "
             f"{escape_cell(board['generated'])}. CIs: percentile bootstrap over test stays; "
             "macro recomputed in every resample; differences on the same resamples.", ""]
    for cohort in COHORTS:
        lines += [f"## Test cohort: {cohort}", "", *_lines(board, cohort, board["entries"]), ""]
    others: dict[str, list[dict]] = defaultdict(list)
    for entry in board.get("other_entries", []):
        others[_group(settings_of(entry["result"]))].append(entry)
    if others:
        lines += ["## Entries on other data or settings", "",
                  "Not ranked with the tables above: computed on other data or with other "
                  "settings. Each group is ranked on its own.", ""]
        for group, members in sorted(others.items()):
            lines += [f"### {_settings_text(json.loads(group))}", ""]
            for cohort in COHORTS:
                if any(e["test_cohort"] == cohort for e in members):
                    lines += [f"Test cohort: {cohort}", "", *_lines(board, cohort, members), ""]
    if board.get("failed"):
        lines += ["## Failed runs", ""]
        lines += [f"- {escape_cell(f['method'])} ({escape_cell(f['train_cohort'])}, seed "
                  f"{escape_cell(f['seed'])}): {escape_cell(f['error'])}"
                  for f in board["failed"]]
        lines.append("")
    return "\n".join(lines)
