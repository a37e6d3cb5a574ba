"""The ``ray`` executor: one Ray task per grid job on an existing Ray cluster (``fusebench[ray]``).

``--ray-address HOST:PORT`` (or ``RAY_ADDRESS``) names the cluster; without either, Ray starts a
local instance for the duration of the grid. Workers need fusebench and the plugins installed and
the data reachable at the same paths. Results travel back with the task's return value and are
written into ``--out`` here when the worker's file system is not this one. Ray re-runs a task
whose worker process or node died, up to ``--retries`` times (the run resumes from its checkpoint
when the folder is shared); after that the job is reported as lost.

Options: ``--ray-address``, ``--executor-option gpus=N`` and ``cpus=N`` (resources per task,
default 1 CPU, no GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fusebench.errors import FusebenchError
from fusebench.executors._jobs import ExecutorSettings, GridJob, JobOutcome, run_job
from fusebench.hookspecs import hookimpl
from fusebench.specs import ExecutorOption, ExecutorSpec

__all__ = ["run_ray"]


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise FusebenchError("--executor ray needs Ray: pip install 'fusebench[ray]'") from error
    return ray


def run_ray(jobs: Sequence[GridJob], settings: ExecutorSettings,
            report: Callable[[JobOutcome], None]) -> None:
    """Run every job as a Ray task and report each as it ends."""
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=settings.options.get("address"), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise FusebenchError(f"--ray-address {settings.options.get('address')}: cannot "
                                 f"connect to Ray ({error})") from error
    try:
        task = ray.remote(run_job).options(
            num_cpus=float(settings.options.get("cpus", 1)),
            num_gpus=float(settings.options.get("gpus", 0)),
            max_retries=settings.retries,
        )
        pending = {task.remote(job): job for job in jobs}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready)
            try:
                outcome = ray.get(ready)
            except ray.exceptions.RayError as error:
                outcome = JobOutcome.lost(job, f"Ray task failed: {error}")
            report(outcome)
    finally:
        if started_here:
            ray.shutdown()


@hookimpl
def fusebench_register_executors() -> list[ExecutorSpec]:
    """``ray``."""
    return [ExecutorSpec(
        name="ray",
        description="A Ray cluster (--ray-address): one task per grid job, re-run when its worker "
        "dies (needs fusebench[ray]).",
        run=run_ray,
        options=(
            ExecutorOption("address", "Address of the Ray cluster (HOST:PORT; default: start "
                           "one on this machine)."),
            ExecutorOption("cpus", "CPUs per task.", float, 1.0),
            ExecutorOption("gpus", "GPUs per task.", float, 0.0),
        ),
    )]
