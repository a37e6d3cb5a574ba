"""The ``local`` executor: grid jobs on this machine, one at a time or in ``--jobs`` processes.

With ``--jobs 1`` (the default) jobs run in this process and show their epoch and batch bars.
With ``--jobs N`` up to N jobs run at once in N worker processes (spawned: a forked process would
inherit torch's thread pools and CUDA state), each limited to its share of the CPU cores and
running one job at a time. A worker takes the next job when its job is done, so torch, the
plugins and the data layer are imported once per worker, not once per job (3.5 s of CPU each
here). A job whose worker dies (killed, out of memory) takes no other job with it: it is started
again in a new worker, up to ``--retries`` times, and resumes from its checkpoint; then it is
reported as lost.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from fusebench.executors._jobs import ExecutorSettings, GridJob, JobOutcome, run_job
from fusebench.hookspecs import hookimpl
from fusebench.specs import ExecutorSpec

__all__ = ["run_local"]


def run_local(jobs: Sequence[GridJob], settings: ExecutorSettings,
              report: Callable[[JobOutcome], None]) -> None:
    """Run ``jobs`` here (``settings.jobs == 1``) or each in a worker process of its own."""
    if settings.jobs == 1:
        for job in jobs:
            report(run_job(job, settings.display))
        return
    threads = max(1, (os.cpu_count() or 1) // settings.jobs)
    context = multiprocessing.get_context("spawn")

    def new_worker() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=context, initializer=torch.set_num_threads,
                                   initargs=(threads,))

    queue = deque((index, 0) for index in range(len(jobs)))  # (job, attempt)
    running: dict[Future, tuple[int, int, ProcessPoolExecutor]] = {}
    idle: list[ProcessPoolExecutor] = []
    try:
        while queue or running:
            while queue and len(running) < settings.jobs:
                index, attempt = queue.popleft()
                worker = idle.pop() if idle else new_worker()
                running[worker.submit(run_job, jobs[index])] = (index, attempt, worker)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index, attempt, worker = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    worker.shutdown()  # dead: the next job gets a new worker
                    if attempt < settings.retries:
                        queue.append((index, attempt + 1))
                    else:
                        report(JobOutcome.lost(jobs[index], "its worker process died (killed "
                                               "or out of memory?); rerun the leaderboard to "
                                               "resume it"))
                    continue
                idle.append(worker)
                report(outcome)
    finally:
        for worker in [*idle, *(worker for _, _, worker in running.values())]:
            worker.shutdown(cancel_futures=True)


@hookimpl
def fusebench_register_executors() -> list[ExecutorSpec]:
    """``local``."""
    return [ExecutorSpec(
        name="local",
        description="This machine: one job at a time in this process, or --jobs N worker "
        "processes sharing the CPU cores.",
        run=run_local,
    )]
