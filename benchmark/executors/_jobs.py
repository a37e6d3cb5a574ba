"""Grid jobs as picklable values, and the function every executor runs for one of them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.progress import Progress

from fusebench.fileio import atomic_write_bytes
from fusebench.registry import extra_plugins, get_registry, set_extra_plugins

if TYPE_CHECKING:
    from fusebench.data import DataConfig
    from fusebench.runner import RunRequest

__all__ = ["ExecutorSettings", "GridJob", "JobOutcome", "land_files", "run_job"]

# What a finished run leaves for the leaderboard (the checkpoint stays with the worker).
_RESULT_FILES = ("result-paired.json", "result-partial.json", "predictions-paired.csv",
                 "predictions-partial.csv", "failed.json", "run.json")


@dataclass(frozen=True)
class GridJob:
    """One unit of grid work, self-contained so that another process or machine can run it.

    Attributes:
        kind: ``"run"`` (train and score one grid entry) or ``"stage"`` (compute one pretraining
            stage's weights, shared by every run of the grid that lists it).
        request: the run (task, method, training cohort, seed, preset, ``out``...). For a stage
            job, the first method of the grid that lists the stage.
        data_config: the data to prepare (its cache is already built by the driver).
        plugins: ``--plugin`` modules the worker must load as well.
        stage: the stage name of a ``"stage"`` job.
    """

    kind: Literal["run", "stage"]
    request: RunRequest
    data_config: DataConfig
    plugins: tuple[str, ...] = ()
    stage: str | None = None

    @property
    def label(self) -> str:
        """A line naming the job for people."""
        r = self.request
        if self.kind == "stage":
            return f"stage {self.stage} for {r.task} (seed {r.seed})"
        return f"{r.method} on {r.task} ({r.train_cohort}, seed {r.seed})"


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, as the worker (or the executor, for a dead worker) reports it.

    Attributes:
        job: the job.
        status: ``finished``, ``done-already`` (valid results were there), ``failed`` (the method
            raised or misbehaved: recorded in ``failed.json``) or ``lost`` (the worker died and no
            retry was left).
        reason: the error line of a ``failed`` or ``lost`` job.
        files: the run folder's result and prediction files by name, so that a driver that does
            not share the worker's file system still receives them.
    """

    job: GridJob
    status: Literal["finished", "done-already", "failed", "lost"]
    reason: str = ""
    files: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def lost(cls, job: GridJob, reason: str) -> JobOutcome:
        """The outcome of a job whose worker died (after any retries)."""
        return cls(job, "lost", reason.strip().splitlines()[0] if reason.strip() else "?")


@dataclass
class ExecutorSettings:
    """What ``fusebench leaderboard`` tells the executor.

    Attributes:
        jobs: grid entries run at once (``--jobs``; the local executor's process count).
        retries: resubmissions of a job whose worker died.
        log_dir: folder for per-job logs (``--out``/logs).
        options: the chosen executor's settings given on the command line, by
            :attr:`ExecutorOption.name <fusebench.specs.ExecutorOption>` (``--slurm-partition gpu``
            gives ``{"partition": "gpu"}``).
        display: the grid's live progress display, for executors that run jobs in this process.
    """

    jobs: int = 1
    retries: int = 1
    log_dir: Path = Path("runs/logs")
    options: Mapping[str, Any] = field(default_factory=dict)
    display: Progress | None = None


def run_job(job: GridJob, display: Progress | None = None) -> JobOutcome:
    """Run one job where it stands (a worker process, a SLURM job, a Ray task, or here).

    A method that raises or returns bad outputs is recorded as failed (``failed.json``) and the
    job still returns; a run interrupted earlier resumes from its checkpoint; a run with valid
    results of the same identity (settings, data, method version) is not recomputed, so its
    checkpoint is deleted once the results are written; a run folder holding another identity's
    run is started over.

    Args:
        job: the job.
        display: a live progress display to add this run's bars to (in-process runs only).

    Returns:
        The :class:`JobOutcome`.
    """
    # here, not at import: registering the executors (every `fusebench` command) must not pay
    # for the run machinery's imports (pandas among them)
    from fusebench.checkpoints import delete_checkpoint
    from fusebench.data import prepare
    from fusebench.progress import RunProgress
    from fusebench.runner import (
        execute_run,
        finished_results,
        pretrain,
        record_failure,
        run_dir,
        run_identity,
    )

    if extra_plugins() != job.plugins:
        set_extra_plugins(job.plugins)
    registry = get_registry()
    data = prepare(job.data_config, registry.task(job.request.task), progress=False)
    method, task = registry.method(job.request.method), registry.task(job.request.task)
    folder = run_dir(job.request, method, data)
    if job.kind == "run" and finished_results(folder, run_identity(job.request, method, task,
                                                                   data)):
        return JobOutcome(job, "done-already", files=_files(folder))
    try:
        with RunProgress(display) as progress:
            if job.kind == "stage":
                pretrain(registry, job.request, data, stages=(job.stage,), progress=progress)
                return JobOutcome(job, "finished")
            # The grid's settings decide: a folder holding another identity's run starts over.
            execute_run(registry, job.request, data, resume=True, replace_other=True,
                        progress=progress)
        # A finished grid entry is never resumed: its checkpoint (four copies of the weights,
        # with the best state and Adam's moments) would only fill the disk.
        delete_checkpoint(folder / "checkpoint.pt")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # one failing method must not stop the grid
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        if job.kind == "stage":  # the runs that need it fail, and are recorded, in their turn
            return JobOutcome(job, "failed", reason)
        record_failure(folder, error)
        return JobOutcome(job, "failed", reason, files=_files(folder))
    return JobOutcome(job, "finished", files=_files(folder))


def _files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in _RESULT_FILES
            if (folder / name).exists()}


def land_files(outcome: JobOutcome, folder: Path) -> None:
    """Make ``folder`` hold the run files a worker returned.

    A worker on a machine without the driver's file system wrote its run folder elsewhere; its
    files arrive here and are written atomically, replacing those of an earlier run there.
    Identical files (a shared file system) are left as they are.

    Raises:
        FusebenchError: ``folder`` cannot be written.
    """
    if not outcome.files:
        return  # a lost job: nothing arrived, and what is there stays
    for name in _RESULT_FILES:
        target, content = folder / name, outcome.files.get(name)
        if content is None:
            target.unlink(missing_ok=True)
        elif not target.exists() or target.read_bytes() != content:
            atomic_write_bytes(target, content)

