"""The ``slurm`` executor: one SLURM job per grid job, through submitit (``fusebench[slurm]``).

Each job runs :func:`fusebench.executors.run_job` on a compute node with the Python of this
process, so the environment, ``--out`` and the data must be on a file system shared with the
nodes. Logs go to ``<--out>/logs/slurm/<job id>_0_log.{out,err}``. A job that dies without a
result (time limit, node failure, out of memory, cancelled) is resubmitted up to ``--retries``
times and resumes from its checkpoint; then it is reported with the path of its log.

Options (``fusebench leaderboard --executor slurm``): ``--slurm-partition``, ``--slurm-gpus``
(per job), ``--slurm-time`` (minutes), ``--slurm-cpus``, and ``--executor-option
cluster=local|debug`` to run the same code without SLURM (submitit's local executor runs each job
as a subprocess of this machine; ``debug`` runs it in this process).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from fusebench.errors import FusebenchError
from fusebench.executors._jobs import ExecutorSettings, GridJob, JobOutcome, run_job
from fusebench.hookspecs import hookimpl
from fusebench.specs import ExecutorOption, ExecutorSpec

__all__ = ["run_slurm"]

_POLL_SECONDS = 2.0


def _submitit() -> Any:
    try:
        import submitit
    except ImportError as error:
        raise FusebenchError("--executor slurm needs submitit: pip install 'fusebench[slurm]'"
                             ) from error
    return submitit


def _executor(settings: ExecutorSettings) -> Any:
    submitit = _submitit()
    options = settings.options
    folder = settings.log_dir / "slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster=options.get("cluster"))
    parameters: dict[str, Any] = {"name": "fusebench",
                                  "timeout_min": int(options.get("time", 240)),
                                  "cpus_per_task": int(options.get("cpus", 4)),
                                  "gpus_per_node": int(options.get("gpus", 0))}
    if options.get("partition"):
        parameters["slurm_partition"] = options["partition"]
    executor.update_parameters(**parameters)
    return executor


def run_slurm(jobs: Sequence[GridJob], settings: ExecutorSettings,
              report: Callable[[JobOutcome], None]) -> None:
    """Submit every job, then report each as it ends; resubmit the jobs whose worker died."""
    submitit = _submitit()
    executor = _executor(settings)
    attempts = dict.fromkeys(range(len(jobs)), 0)
    running = {index: executor.submit(run_job, jobs[index]) for index in range(len(jobs))}
    while running:
        for index, handle in list(running.items()):
            if not handle.done():
                continue
            del running[index]
            try:
                report(handle.result())
            except submitit.core.utils.UncompletedJobError as error:
                attempts[index] += 1
                if attempts[index] <= settings.retries:
                    running[index] = executor.submit(run_job, jobs[index])
                    continue
                reason = f"SLURM job {handle.job_id} ended without a result ({error})"
                report(JobOutcome.lost(jobs[index], f"{reason.splitlines()[0]}; log: "
                                       f"{handle.paths.stderr}"))
        if running:
            time.sleep(_POLL_SECONDS)


@hookimpl
def fusebench_register_executors() -> list[ExecutorSpec]:
    """``slurm``."""
    return [ExecutorSpec(
        name="slurm",
        description="A SLURM cluster through submitit: one job per grid job, resubmitted when it "
        "dies (needs fusebench[slurm]).",
        run=run_slurm,
        options=(
            ExecutorOption("partition", "SLURM partition."),
            ExecutorOption("gpus", "GPUs per job.", int, 0),
            ExecutorOption("time", "Time limit per job in minutes.", int, 240),
            ExecutorOption("cpus", "CPUs per job.", int, 4),
            ExecutorOption("cluster", "submitit cluster: slurm, or local (subprocesses of this "
                           "machine, for trying the submission path)."),
        ),
    )]
