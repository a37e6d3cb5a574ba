"""The standard leaderboard grid: every method x task x training cohort x seed, resumable.

The driver (this module) prepares each task's data once, then hands the work to an executor
(:mod:`fusebench.executors`) in two waves: the pretraining stages the pending entries need, each
once, beside the entries that need no stage; then the entries that load a stage's weights. Each
wave starts its longest jobs first, judged by the training time the same entry took when the
board last recorded it (the committed demo board holds every entry's), so that with several
workers no long job runs alone at the end. An entry whose results were computed with the same identity
(settings, data fingerprint, method version: :func:`fusebench.runner.run_identity`) is reused;
one computed otherwise runs again; an interrupted entry resumes from its checkpoint; a failing method is recorded as failed with its error and the
grid goes on; a job whose worker died is retried, then reported. After every finished entry the
task's leaderboard is rebuilt from the result files under its file lock, so a killed grid leaves a
valid leaderboard of what finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fusebench.data import DataConfig, prepare
from fusebench.errors import FusebenchError
from fusebench.executors import ExecutorSettings, GridJob, JobOutcome, land_files
from fusebench.leaderboard import leaderboard_path, rebuild_leaderboard
from fusebench.plots import save_forest_plot
from fusebench.progress import make_progress
from fusebench.registry import Registry, extra_plugins
from fusebench.runner import RunRequest, dataset_name, finished_results, run_dir, run_identity

__all__ = ["GridEntry", "GridReport", "grid_entries", "run_grid"]


@dataclass(frozen=True)
class GridEntry:
    """One cell of the grid."""

    task: str
    method: str
    train_cohort: str
    seed: int


@dataclass
class GridReport:
    """What :func:`run_grid` did.

    Attributes:
        boards: the leaderboards written, by task.
        lost: the jobs whose workers died with no retry left (a rerun resumes them).
        reused: entries whose results of the same identity were there already.
        run: entries trained and scored now.
        failed: entries whose method failed (recorded in the leaderboard's failed runs).
    """

    boards: dict[str, dict[str, Any]]
    lost: list[GridJob]
    reused: int = 0
    run: int = 0
    failed: int = 0

    def counts(self) -> str:
        """``"3 reused, 5 run, 1 failed, 0 lost"``."""
        return (f"{self.reused} reused, {self.run} run, {self.failed} failed, "
                f"{len(self.lost)} lost")


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
    data_config: DataConfig,
    root: Path,
    executor: str = "local",
    settings: ExecutorSettings | None = None,
    throughput: Callable[[str, str], dict] | None = None,
    console: Console | None = None,
) -> GridReport:
    """Run the grid with ``executor`` and write one leaderboard per task.

    Args:
        registry: plugins.
        methods: method names.
        tasks: task names.
        seeds: training seeds.
        request: template run request (preset, device, overrides, out, n_resamples).
        data_config: the data every task is prepared from.
        root: folder under which ``leaderboards/<dataset>/<task>.json`` is written.
        executor: name of a registered executor (``local``, ``slurm``, ``ray``...).
        settings: the executor's settings (default: one job at a time, one retry).
        throughput: optional (method, task) -> throughput record attached to the entries.
        console: where progress and status lines go.

    Returns:
        The :class:`GridReport`.
    """
    console = console or Console(stderr=True)
    spec = registry.executor(executor)
    entries = grid_entries(registry, methods, tasks, seeds)
    # Workers elsewhere (another process, node or working folder) need absolute paths.
    request = dataclasses.replace(request, out=Path(request.out).resolve())
    data = {task: prepare(data_config, registry.task(task)) for task in tasks}
    records = ({task: {m: throughput(m, task) for m in methods} for task in tasks}
               if throughput else dict.fromkeys(tasks))
    boards = {task: _rebuild(registry, task, data[task], request, root, records[task])
              for task in tasks}
    jobs, lost = [], []
    counts = {"reused": 0, "run": 0, "failed": 0}
    for entry in entries:
        job = GridJob("run", dataclasses.replace(request, task=entry.task, method=entry.method,
                                                 train_cohort=entry.train_cohort,
                                                 seed=entry.seed),
                      data_config, plugins=extra_plugins())
        identity = run_identity(job.request, registry.method(entry.method),
                                registry.task(entry.task), data[entry.task])
        folder = _folder(registry, job, data)
        if finished_results(folder, identity):
            console.print(f"[dim]done already:[/] {job.label}", highlight=False)
            counts["reused"] += 1
            continue
        if finished_results(folder):
            console.print(f"[yellow]settings changed:[/] {job.label} runs again (its results "
                          "were computed with other settings or data)", highlight=False)
        jobs.append(job)
    stage_jobs = _stage_jobs(registry, jobs)
    with make_progress(console) as display:
        settings = dataclasses.replace(settings or ExecutorSettings(), display=display)
        stages_bar = (display.add_task("pretraining stages", total=len(stage_jobs), status="")
                      if stage_jobs else None)
        grid_bar = display.add_task("leaderboard grid", total=len(entries),
                                    completed=len(entries) - len(jobs), status="")

        def report(outcome: JobOutcome) -> None:
            _print_outcome(console, outcome)
            if outcome.job.kind == "stage":
                display.update(stages_bar, advance=1)
                return
            task = outcome.job.request.task
            if outcome.status == "lost":
                lost.append(outcome.job)
            else:
                counts[{"finished": "run", "done-already": "reused"}.get(outcome.status,
                                                                          "failed")] += 1
            land_files(outcome, _folder(registry, outcome.job, data))
            boards[task] = _rebuild(registry, task, data[task], request, root, records[task])
            display.update(grid_bar, advance=1, status=outcome.job.label)

        for wave in _waves(registry, stage_jobs, jobs, data, _recorded_seconds(boards,
                                                                              request.preset)):
            spec.run(wave, settings, report)
    for task, board in boards.items():
        plot = save_forest_plot(board, leaderboard_path(root, board["dataset"]["name"], task)
                                .with_suffix(".png"))
        if plot is not None:
            console.print(f"forest plot: {plot}", highlight=False)
    report = GridReport(boards, lost, **counts)
    console.print(f"grid: {report.counts()}", highlight=False)
    return report


def _folder(registry: Registry, job: GridJob, data: dict[str, Any]) -> Path:
    return run_dir(job.request, registry.method(job.request.method), data[job.request.task])


def _stage_jobs(registry: Registry, jobs: Sequence[GridJob]) -> list[GridJob]:
    """One job per (task, seed, stage) that the pending entries need, for the first method
    listing it (the stage's weights do not depend on the method that asks); one per (seed,
    stage) for a stage every task shares."""
    stage_jobs: dict[tuple[str | None, int, str], GridJob] = {}
    for job in jobs:
        for name in registry.method(job.request.method).pretraining:
            task = job.request.task if registry.stage(name).per_task else None
            stage_jobs.setdefault((task, job.request.seed, name),
                                  dataclasses.replace(job, kind="stage", stage=name))
    return list(stage_jobs.values())


def _recorded_seconds(boards: dict[str, dict[str, Any]],
                      preset: str) -> dict[tuple[str, str, str], float]:
    """Training seconds of each (task, method, train cohort) the boards hold at ``preset``
    (the longest when several seeds or runs are recorded)."""
    seconds: dict[tuple[str, str, str], float] = {}
    for task, board in boards.items():
        for entry in [*board.get("entries", []), *board.get("other_entries", [])]:
            result = entry.get("result") or {}
            took = (result.get("training") or {}).get("seconds")
            if took is None or result.get("preset") != preset:
                continue
            key = (task, entry["method"], entry["train_cohort"])
            seconds[key] = max(seconds.get(key, 0.0), float(took))
    return seconds


def _waves(registry: Registry, stage_jobs: Sequence[GridJob], jobs: Sequence[GridJob],
           data: dict[str, Any],
           recorded: dict[tuple[str, str, str], float] | None = None) -> list[list[GridJob]]:
    """The non-empty waves: the stages beside the entries that need none, then the entries
    that load a stage's weights. Each wave runs the stages first, then the entries no board has
    timed (longest training cohort first), then the timed ones by their recorded seconds,
    longest first: with several workers the long jobs start early and none runs alone at the
    end."""
    recorded = recorded or {}

    def order(job: GridJob) -> tuple[bool, bool, float]:
        key = (job.request.task, job.request.method, job.request.train_cohort)
        if key in recorded:
            return job.kind != "stage", True, -recorded[key]
        hours = data[job.request.task].cohort("train", job.request.train_cohort).ehr_hours
        return job.kind != "stage", False, -float(hours)

    needs_stage = [bool(registry.method(job.request.method).pretraining) for job in jobs]
    first = [*stage_jobs, *(job for job, needs in zip(jobs, needs_stage, strict=True) if not needs)]
    second = [job for job, needs in zip(jobs, needs_stage, strict=True) if needs]
    return [sorted(wave, key=order) for wave in (first, second) if wave]


def _print_outcome(console: Console, outcome: JobOutcome) -> None:
    label = outcome.job.label
    if outcome.status in ("failed", "lost"):
        what = "failed" if outcome.status == "failed" else "lost (worker died)"
        console.print(f"[red]{what}:[/] {label}: {outcome.reason}", highlight=False)
    elif outcome.status == "done-already":
        console.print(f"[dim]done already:[/] {label}", highlight=False)
    else:
        console.print(f"[green]finished:[/] {label}", highlight=False)


def _rebuild(registry: Registry, task: str, data: Any, request: RunRequest, root: Path,
             records: dict | None) -> dict[str, Any]:
    dataset = {"name": dataset_name(data), "fingerprint": data.fingerprint,
               "is_demo": bool(data.config.is_demo)}
    try:
        return rebuild_leaderboard(
            leaderboard_path(root, dataset["name"], task), runs=Path(request.out),
            task=registry.task(task), dataset=dataset, preset=request.preset,
            overrides=request.overrides, n_resamples=request.n_resamples, throughput=records,
        )
    except OSError as error:
        raise FusebenchError(f"cannot write the leaderboard under {root}: {error}") from error
