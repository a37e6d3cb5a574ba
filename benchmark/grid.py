"""The standard leaderboard grid: every method x task x training cohort x seed, resumable.

Entries whose result files exist are skipped; an interrupted entry resumes from its checkpoint; a
failing method is recorded as failed with its error and the grid goes on. After every entry the
task's leaderboard is rebuilt, so a killed grid leaves a valid leaderboard of what finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmark.errors import FusebenchError
from benchmark.leaderboard import leaderboard_path, rebuild_leaderboard
from benchmark.progress import RunProgress, make_progress
from benchmark.registry import Registry
from benchmark.runner import (
    RunRequest,
    dataset_name,
    execute_run,
    finished_results,
    record_failure,
    run_dir,
)

__all__ = ["GridEntry", "grid_entries", "run_grid"]


@dataclass(frozen=True)
class GridEntry:
    """One cell of the grid."""

    task: str
    method: str
    train_cohort: str
    seed: int


def grid_entries(registry: Registry, methods: Sequence[str], tasks: Sequence[str],
                 seeds: Sequence[int]) -> list[GridEntry]:
    """Methods x tasks x each method's training cohorts x seeds, in a stable order."""
    entries = []
    for task in tasks:
        registry.task(task)
        for name in methods:
            method = registry.method(name)
            for cohort in method.train_cohorts:
                entries += [GridEntry(task, name, cohort, seed) for seed in seeds]
    return entries


def run_grid(
    registry: Registry,
    *,
    methods: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    request: RunRequest,
    prepare_task: Callable[[str], Any],
    root: Path,
    throughput: Callable[[str, str], dict] | None = None,
    console: Console | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the grid and write one leaderboard per task.

    Args:
        registry: plugins.
        methods: method names.
        tasks: task names.
        seeds: training seeds.
        request: template run request (preset, device, overrides, out, n_resamples).
        prepare_task: task name -> prepared data.
        root: folder under which ``leaderboards/<dataset>/<task>.json`` is written.
        throughput: optional (method, task) -> throughput record attached to the entries.
        console: where progress and status lines go.

    Returns:
        The leaderboards written, by task.
    """
    console = console or Console(stderr=True)
    entries = grid_entries(registry, methods, tasks, seeds)
    boards = {}
    with make_progress(console) as display:
        overall = display.add_task("leaderboard grid", total=len(entries), status="")
        for task in tasks:
            data = prepare_task(task)
            records = {m: throughput(m, task) for m in methods} if throughput else None
            for entry in (e for e in entries if e.task == task):
                _run_entry(registry, entry, request, data, display, console)
                display.update(overall, advance=1, status=f"{entry.method} {entry.task}")
                boards[task] = _rebuild(registry, task, data, request, root, records)
            if task not in boards:
                boards[task] = _rebuild(registry, task, data, request, root, records)
    return boards


def _run_entry(registry: Registry, entry: GridEntry, template: RunRequest, data: Any,
               display: Any, console: Console) -> None:
    request = dataclasses.replace(template, task=entry.task, method=entry.method,
                                  train_cohort=entry.train_cohort, seed=entry.seed)
    method = registry.method(entry.method)
    folder = run_dir(request, method, data)
    label = f"{entry.method} on {entry.task} ({entry.train_cohort}, seed {entry.seed})"
    if finished_results(folder):
        console.print(f"[dim]done already:[/] {label}", highlight=False)
        return
    try:
        with RunProgress(display) as progress:
            execute_run(registry, request, data, resume=True, progress=progress)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # one failing method must not stop the grid
        record_failure(folder, error)
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        console.print(f"[red]failed:[/] {label}: {reason}", highlight=False)
        return
    console.print(f"[green]finished:[/] {label}", highlight=False)


def _rebuild(registry: Registry, task: str, data: Any, request: RunRequest, root: Path,
             records: dict | None) -> dict[str, Any]:
    dataset = {"name": dataset_name(data), "fingerprint": data.fingerprint,
               "is_demo": bool(data.config.is_demo)}
    try:
        return rebuild_leaderboard(
            leaderboard_path(root, dataset["name"], task), runs=Path(request.out),
            task=registry.task(task), dataset=dataset, preset=request.preset,
            n_resamples=request.n_resamples, throughput=records,
        )
    except OSError as error:
        raise FusebenchError(f"cannot write the leaderboard under {root}: {error}") from error
