"""Executors: engines that run the leaderboard grid's jobs (``fusebench leaderboard --executor``).

The grid is cut into self-contained :class:`GridJob` values (pretraining stages first, then one
job per method x task x training cohort x seed); an executor registered with the
``fusebench_register_executors`` hook runs :func:`run_job` on each wherever it likes and reports a
:class:`JobOutcome` back. Built in: ``local`` (this machine, ``--jobs N`` processes), ``slurm``
(submitit) and ``ray``.
"""

from fusebench.executors._jobs import ExecutorSettings, GridJob, JobOutcome, land_files, run_job

__all__ = ["ExecutorSettings", "GridJob", "JobOutcome", "land_files", "run_job"]
