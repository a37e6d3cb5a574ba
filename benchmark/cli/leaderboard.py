"""``fusebench leaderboard`` (the grid) and ``fusebench leaderboard merge``.

The executors contribute their own options: each :class:`~fusebench.specs.ExecutorOption` of a
registered executor becomes ``--{executor}-{option}`` here, so the core names no scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from fusebench.cli._common import (
    console,
    err_console,
    out_folder,
    registry_for_cli,
    split_names,
)
from fusebench.cli.run import data_config, make_request, run_options
from fusebench.errors import FusebenchError
from fusebench.specs import COHORTS

__all__ = ["leaderboard"]

_PREFIX = "executor__"


def _dest(executor: str, option: str) -> str:
    return f"{_PREFIX}{executor.replace('-', '_')}__{option.replace('-', '_')}"


class _WithExecutorOptions(click.Group):
    """The grid's command, with the options of every registered executor added to its own."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        help_option = params.pop() if params and params[-1].name == "help" else None
        for spec in sorted(registry_for_cli().executors.values(), key=lambda e: e.name):
            for option in spec.options:
                flag = f"--{spec.name}-{option.name.replace('_', '-')}"
                default = "" if option.default is None else f" [default: {option.default}]"
                params.append(click.Option([flag, _dest(spec.name, option.name)],
                                           type=option.type, default=None,
                                           help=f"{spec.name}: {option.help}{default}"))
        return [*params, help_option] if help_option else params


def _executor_settings(executor: str, given: dict[str, Any]) -> dict[str, Any]:
    """The chosen executor's options; an error for an option of another executor."""
    mine = _dest(executor, "")
    for dest, value in given.items():
        if value is not None and not dest.startswith(mine):
            flag = "--" + dest.removeprefix(_PREFIX).replace("__", "-").replace("_", "-")
            raise FusebenchError(f"{flag}: belongs to another executor than --executor "
                                 f"{executor}; drop it or choose that executor")
    return {dest.removeprefix(mine): value for dest, value in given.items()
            if value is not None}


@click.group(cls=_WithExecutorOptions, invoke_without_command=True)
@click.option("--methods", multiple=True, help="Methods (comma list; default: all registered).")
@click.option("--tasks", "task_names", multiple=True, help="Tasks (comma list; default: all).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of seeds (0..N-1).")
@click.option("--leaderboard-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True,
              help="Where leaderboards/<dataset>/<task>.json is written.")
@click.option("--throughput", "with_throughput", is_flag=True,
              help="Measure and attach each method's throughput.")
@click.option("--executor", default="local", show_default=True,
              help="Where grid jobs run: local, slurm, ray, or a plugin's executor.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="local: grid jobs run at once, in worker processes.")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Resubmissions of a job whose worker died.")
@run_options
@click.pass_context
def leaderboard(ctx: click.Context, methods: Sequence[str], task_names: Sequence[str],
                seeds: int, leaderboard_dir: Path, with_throughput: bool, executor: str,
                jobs: int, retries: int, **options: Any) -> None:
    """Run the standard leaderboard grid (or a subcommand such as `merge`)."""
    if ctx.invoked_subcommand is not None:
        return
    from fusebench.executors import ExecutorSettings
    from fusebench.grid import run_grid
    from fusebench.leaderboard import leaderboard_path
    from fusebench.presets import get_preset

    registry = registry_for_cli()
    method_names = split_names(methods) or sorted(registry.methods)
    tasks_ = split_names(task_names) or sorted(registry.tasks)
    registry.executor(executor)
    given = {key: options.pop(key) for key in list(options) if key.startswith(_PREFIX)}
    executor_options = _executor_settings(executor, given)
    request, data_opts = make_request(tasks_[0], method_names[0], options)
    config = data_config(data_opts, get_preset(request.preset))
    settings = ExecutorSettings(jobs=jobs, retries=retries,
                                log_dir=Path(request.out).resolve() / "logs",
                                options=executor_options)
    throughput = None
    if with_throughput:
        from fusebench.throughput import leaderboard_record

        def throughput(method: str, task: str) -> dict:
            return leaderboard_record(registry.method(method), registry.task(task),
                                      device=request.device, image_size=config.image_size)

    report = run_grid(
        registry, methods=method_names, tasks=tasks_, seeds=range(seeds), request=request,
        data_config=config, root=out_folder(leaderboard_dir, "--leaderboard-dir"),
        executor=executor, settings=settings, throughput=throughput, console=err_console,
    )
    for task, board in report.boards.items():
        for cohort in COHORTS:
            _print_board(board, cohort)
        err_console.print(
            f"{task}: {leaderboard_path(leaderboard_dir, board['dataset']['name'], task)}",
            highlight=False)
    if report.lost:
        raise FusebenchError(f"{len(report.lost)} grid job(s) lost: their workers died with no "
                             "retry left; rerun the same command to resume them")


def _print_board(board: dict[str, Any], cohort: str) -> None:
    from rich.table import Table

    from fusebench.leaderboard import shown, shown_difference, summary_rows

    rows = summary_rows(board, cohort)
    # Several seeds: the row shows (and is ranked by) the mean ± sd; the Markdown adds each
    # seed's CI.
    what = "mean ± sd" if any(len(r["seeds"]) > 1 for r in rows) else "[95% CI]"
    table = Table(title=f"{board['task']} - test cohort {cohort} ({board['dataset']['name']})")
    for column in ("rank", "method", "train cohort", f"AUROC {what}", f"AUPRC {what}",
                   f"ΔAUROC vs {board['reference_method']}"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["rank"]), row["method"], row["train_cohort"], shown(row, "auroc"),
                      shown(row, "auprc"), shown_difference(row))
    console.print(table)
    if board.get("other_entries") and cohort == COHORTS[-1]:
        err_console.print(f"{len(board['other_entries'])} entries computed on other data or "
                          "settings are kept apart (see the Markdown beside the board)",
                          highlight=False)


@leaderboard.command("merge")
@click.argument("result_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--leaderboard-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Leaderboard JSON (default: leaderboards/<dataset>/<task>.json).")
@click.option("--force", is_flag=True, help="Replace an existing entry with the same key.")
@click.option("--n-resamples", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Bootstrap resamples of the difference to the reference method.")
def leaderboard_merge(result_file: Path, leaderboard_file: Path | None, force: bool,
                      n_resamples: int) -> None:
    """Add a submitted result file to a leaderboard after validation.

    The result's predictions file (beside it) is checked against its recorded SHA-256 and kept
    beside the board with the result, and its ΔAUROC to the reference method is computed on
    the same bootstrap resamples.
    """
    from fusebench.leaderboard import entry_key, leaderboard_path, merge_result, settings_of
    from fusebench.metrics import format_ci
    from fusebench.results import read_result

    result = read_result(result_file)
    path = leaderboard_file or leaderboard_path(Path("."), result["dataset"]["name"],
                                                result["task"])
    task = registry_for_cli().tasks.get(result["task"])
    board = merge_result(path, result_file, force=force, task=task, n_resamples=n_resamples)
    name = result["method"]["name"]
    err_console.print(f"merged {name} into {path} ({len(board['entries'])} ranked entries)",
                      highlight=False)
    mine = [e for e in board["entries"] if entry_key(e["result"]) == entry_key(result)
            and settings_of(e["result"]) == settings_of(result)]
    if not mine:
        err_console.print(
            f"[yellow]kept apart:[/] {name} was computed on other data or settings than the "
            f"ranked entries (data fingerprint {result['dataset']['fingerprint'][:12]} vs "
            f"{board['dataset']['fingerprint'][:12]}, preset {settings_of(result)['preset']} vs "
            f"{board['preset']}); it is listed under 'Entries on other data or settings'",
            highlight=False, soft_wrap=True)
    elif mine[0]["difference_to_reference"] is not None:
        delta = mine[0]["difference_to_reference"]["auroc"]["macro"]
        err_console.print(f"ΔAUROC vs {board['reference_method']}: {format_ci(delta)}",
                          highlight=False)
    else:
        err_console.print(
            f"no ΔAUROC vs {board['reference_method']}: "
            + ("its predictions file is not beside the result" if not mine[0]["predictions"]
               else "the board has no reference entry with predictions for this test cohort "
               "and seed"), highlight=False)
