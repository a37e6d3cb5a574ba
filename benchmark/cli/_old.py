"""The ``fusebench`` command line: click commands with rich output.

Every command accepts the global options before its name::

    fusebench [--debug] [--plugin module.path ...] COMMAND ...

Errors caused by input print one line and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from fusebench import __version__, distributed
from fusebench.cli_common import err_console, registry_for_cli, resolve_device
from fusebench.data import DataConfig, prepare
from fusebench.data.cli import data_config_from_options, data_group, data_options
from fusebench.errors import FusebenchError
from fusebench.executors import ExecutorSettings
from fusebench.grid import run_grid
from fusebench.leaderboard import leaderboard_path, merge_result, summary_rows
from fusebench.metrics import format_ci, score_predictions
from fusebench.presets import PRESETS, Preset, get_preset
from fusebench.progress import RunProgress
from fusebench.registry import set_extra_plugins
from fusebench.results import read_result
from fusebench.runner import RunRequest, execute_run, read_predictions, run_dir
from fusebench.scaffold import plugins_check_command, plugins_new_command
from fusebench.specs import COHORTS, MethodSpec, ModelConfig, TaskSpec
from fusebench.throughput import throughput_command

__all__ = ["cli", "main"]

console = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fusebench")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Load a plugin module that is not installed (dotted path on sys.path). Repeatable.",
)
def cli(debug: bool, plugins: Sequence[str]) -> None:
    """fusebench: benchmark multi-modal fusion of ICU time series and chest X-rays."""
    set_extra_plugins(plugins)


def trainable_parameters(method: MethodSpec, task: TaskSpec) -> int:
    """Trainable parameters of ``method``'s model for ``task`` at its default configuration."""
    model = method.build(
        ModelConfig(task=task.name, num_classes=task.num_classes, hparams=method.hparams_for(task.name))
    )
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _method_row(method: MethodSpec, tasks: Sequence[TaskSpec]) -> dict[str, Any]:
    return {
        "name": method.name,
        "distribution": method.distribution,
        "version": method.version,
        "handles_missing_cxr": method.handles_missing_cxr,
        "default_train_cohort": method.default_train_cohort,
        "train_cohorts": list(method.train_cohorts),
        "pretraining": list(method.pretraining),
        "trainable_parameters": {task.name: trainable_parameters(method, task) for task in tasks},
        "description": method.description,
        "reference": method.reference,
    }


@cli.group()
def plugins() -> None:
    """List and check fusion-method plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_list(as_json: bool) -> None:
    """List the registered fusion methods."""
    registry = registry_for_cli()
    tasks = list(registry.tasks.values())
    rows = [_method_row(method, tasks) for method in sorted(registry.methods.values(),
                                                              key=lambda m: m.name)]
    if as_json:
        click.echo(json.dumps({"methods": rows, "problems": registry.problems}, indent=2))
        return
    table = Table(title="fusion methods")
    for column in ("name", "distribution", "missing CXR", "train cohort",
                   *(f"params {t.name}" for t in tasks), "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            f"{row['distribution']} {row['version']}",
            "yes" if row["handles_missing_cxr"] else "no",
            row["default_train_cohort"],
            *(f"{row['trainable_parameters'][t.name]:,}" for t in tasks),
            row["description"],
        )
    console.print(table)


@cli.group()
def tasks() -> None:
    """List prediction tasks."""


@tasks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tasks_list(as_json: bool) -> None:
    """List the registered tasks."""
    registry = registry_for_cli()
    rows = [
        {
            "name": task.name,
            "distribution": task.distribution,
            "num_classes": task.num_classes,
            "period_hours": task.period_hours,
            "default_cxr_window": task.default_cxr_window,
            "labels": list(task.labels),
            "description": task.description,
        }
        for task in sorted(registry.tasks.values(), key=lambda t: t.name)
    ]
    if as_json:
        click.echo(json.dumps({"tasks": rows}, indent=2))
        return
    table = Table(title="tasks")
    for column in ("name", "labels", "EHR window", "CXR window", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        window = "whole stay" if row["period_hours"] is None else f"{row['period_hours']:g} h"
        table.add_row(row["name"], str(row["num_classes"]), window, row["default_cxr_window"],
                      row["description"])
    console.print(table)


def _split_names(values: Sequence[str]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _data_config(options: dict[str, Any], preset: Preset) -> DataConfig:
    """Data configuration from the data options; the preset sets the image size unless given."""
    config = data_config_from_options(**options)
    if options.get("image_size") is None:
        config = dataclasses.replace(config, image_size=preset.image_size)
    return config


def _out_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".fusebench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise FusebenchError(f"--out {path}: not writable ({error.strerror}); choose another "
                             "folder") from error
    return path


_run_options = [
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Training seed."),
    click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper",
                 show_default=True, help="Training preset (quick: small images, few epochs)."),
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Override the maximum number of epochs."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Override the batch size."),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Override the learning rate."),
    click.option("--device", default=None, help="torch device (default: cuda if available)."),
    click.option("--cxr-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 default=None, help="Local ImageNet ResNet34 weights (never downloaded)."),
    click.option("--n-resamples", type=click.IntRange(min=10), default=1000, show_default=True,
                 help="Bootstrap resamples for the test metrics."),
    click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                 default=Path("runs"), show_default=True, help="Folder of run folders."),
]


def run_options(function: Any) -> Any:
    """The options shared by `run` and `leaderboard`."""
    for option in reversed(_run_options):
        function = option(function)
    return data_options(function)


def _request(task: str, method: str, options: dict[str, Any]) -> tuple[RunRequest, dict]:
    request = RunRequest(
        task=task, method=method, train_cohort=options.pop("train_cohort", None),
        seed=options.pop("seed"), preset=options.pop("preset"),
        overrides={"epochs": options.pop("epochs"), "batch_size": options.pop("batch_size"),
                   "lr": options.pop("lr")},
        device=resolve_device(options.pop("device")), cxr_weights=options.pop("cxr_weights"),
        n_resamples=options.pop("n_resamples"), out=_out_folder(options.pop("out")),
    )
    return request, options


def _print_results(results: Sequence[dict[str, Any]]) -> None:
    table = Table(title="test results")
    for column in ("method", "train cohort", "test cohort", "n", "AUROC [95% CI]",
                   "AUPRC [95% CI]"):
        table.add_column(column)
    for result in results:
        table.add_row(result["method"]["name"], result["train_cohort"],
                      result["test_cohort"]["name"], str(result["test_cohort"]["n"]),
                      format_ci(result["metrics"]["auroc"]["macro"]),
                      format_ci(result["metrics"]["auprc"]["macro"]))
    console.print(table)


@cli.command()
@click.option("--task", required=True, help="Task name (see `fusebench tasks list`).")
@click.option("--method", required=True, help="Method name (see `fusebench plugins list`).")
@click.option("--train-cohort", type=click.Choice(COHORTS), default=None,
              help="Training cohort (default: the method's).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@run_options
def run(task: str, method: str, resume: bool, **options: Any) -> None:
    """Train one method on one task and score it on both test cohorts.

    Under torchrun (torchrun --nproc_per_node N -m fusebench.cli run ...) the N processes train
    one model together: rank 0 prepares the data first, then the others reuse the cache; rank 0
    alone shows progress, writes the files and prints the results.
    """
    registry = registry_for_cli()
    registry.task(task)
    registry.method(method)
    with distributed.process_group(resolve_device(options["device"])):
        request, data_opts = distributed.from_main(_request, task, method, options)
        with distributed.main_first():
            data = prepare(_data_config(data_opts, get_preset(request.preset)),
                           registry.task(task), progress=distributed.is_main())
        with RunProgress() if distributed.is_main() else contextlib.nullcontext() as progress:
            results = execute_run(registry, request, data, resume=resume, progress=progress)
        if not distributed.is_main():
            return
    folder = run_dir(request, registry.method(method), data)
    _print_results(results)
    err_console.print(f"results and predictions in {folder}", highlight=False)


@cli.command()
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", required=True, help="Task whose labels the file holds.")
@click.option("--n-resamples", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bootstrap seed.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Predictions of a reference method for paired differences.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def score(predictions: Path, task: str, n_resamples: int, seed: int, reference: Path | None,
          as_json: bool) -> None:
    """Score a predictions file: AUROC and AUPRC with bootstrap CIs."""
    spec = registry_for_cli().task(task)
    stays, labels, probabilities = read_predictions(predictions, spec)
    reference_prob = None
    if reference is not None:
        ref_stays, _, ref_probabilities = read_predictions(reference, spec)
        if not np.array_equal(np.sort(ref_stays), np.sort(stays)):
            raise FusebenchError(f"{reference}: holds other stays than {predictions}")
        reference_prob = ref_probabilities[np.argsort(ref_stays)][np.argsort(np.argsort(stays))]
    scores = score_predictions(labels, probabilities, spec.labels, n_resamples=n_resamples,
                               seed=seed, label_groups=spec.label_groups or None,
                               reference_prob=reference_prob)
    if as_json:
        click.echo(json.dumps({"file": str(predictions), "task": task, "n": len(stays),
                               **scores}, indent=2))
        return
    table = Table(title=f"{predictions.name}: {len(stays)} stays")
    for column in ("label", "AUROC [95% CI]", "AUPRC [95% CI]"):
        table.add_column(column, overflow="fold")
    table.add_row("macro", format_ci(scores["auroc"]["macro"]), format_ci(scores["auprc"]["macro"]))
    if len(spec.labels) > 1:
        for label in spec.labels:
            table.add_row(label, format_ci(scores["auroc"]["per_label"][label]),
                          format_ci(scores["auprc"]["per_label"][label]))
    if "difference" in scores:
        table.add_row("Δ vs reference", format_ci(scores["difference"]["auroc"]["macro"]),
                      format_ci(scores["difference"]["auprc"]["macro"]))
    console.print(table)


def _executor_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FusebenchError(f"--executor-option {pair!r}: write KEY=VALUE, e.g. "
                                 "--executor-option cluster=local")
        options[key.strip()] = value.strip()
    return options


@cli.group(invoke_without_command=True)
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
@click.option("--slurm-partition", default=None, help="slurm: partition.")
@click.option("--slurm-gpus", type=click.IntRange(min=0), default=None, help="slurm: GPUs per job.")
@click.option("--slurm-time", type=click.IntRange(min=1), default=None,
              help="slurm: time limit per job in minutes [default: 240].")
@click.option("--slurm-cpus", type=click.IntRange(min=1), default=None,
              help="slurm: CPUs per job [default: 4].")
@click.option("--ray-address", default=None, help="ray: address of the cluster (HOST:PORT).")
@click.option("--executor-option", "executor_options", multiple=True, metavar="KEY=VALUE",
              help="Other executor settings, e.g. cluster=local (slurm), gpus=1 (ray).")
@run_options
@click.pass_context
def leaderboard(ctx: click.Context, methods: Sequence[str], task_names: Sequence[str],
                seeds: int, leaderboard_dir: Path, with_throughput: bool, executor: str,
                jobs: int, retries: int, slurm_partition: str | None, slurm_gpus: int | None,
                slurm_time: int | None, slurm_cpus: int | None, ray_address: str | None,
                executor_options: Sequence[str], **options: Any) -> None:
    """Run the standard leaderboard grid (or a subcommand such as `merge`)."""
    if ctx.invoked_subcommand is not None:
        return
    registry = registry_for_cli()
    method_names = _split_names(methods) or sorted(registry.methods)
    tasks_ = _split_names(task_names) or sorted(registry.tasks)
    registry.executor(executor)
    request, data_opts = _request(tasks_[0], method_names[0], options)
    config = _data_config(data_opts, get_preset(request.preset))
    given = {"partition": slurm_partition, "gpus": slurm_gpus, "time_min": slurm_time,
             "cpus": slurm_cpus, "address": ray_address}
    settings = ExecutorSettings(
        jobs=jobs, retries=retries, log_dir=Path(request.out).resolve() / "logs",
        options={**{k: v for k, v in given.items() if v is not None},
                 **_executor_options(executor_options)})
    throughput = None
    if with_throughput:
        from fusebench.throughput import leaderboard_record

        def throughput(method: str, task: str) -> dict:
            return leaderboard_record(registry.method(method), registry.task(task),
                                      device=request.device, image_size=config.image_size)

    report = run_grid(
        registry, methods=method_names, tasks=tasks_, seeds=range(seeds), request=request,
        data_config=config, root=_out_folder(leaderboard_dir), executor=executor,
        settings=settings, throughput=throughput, console=err_console,
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
    table = Table(title=f"{board['task']} - test cohort {cohort} ({board['dataset']['name']})")
    for column in ("rank", "method", "train cohort", "AUROC [95% CI]", "AUPRC [95% CI]",
                   f"ΔAUROC vs {board['reference_method']}"):
        table.add_column(column)
    for row in summary_rows(board, cohort):
        difference = row["difference"]
        table.add_row(str(row["rank"]), row["method"], row["train_cohort"],
                      format_ci(row["auroc"]), format_ci(row["auprc"]),
                      "-" if difference is None else format_ci(difference))
    console.print(table)


@leaderboard.command("merge")
@click.argument("result_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--leaderboard-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Leaderboard JSON (default: leaderboards/<dataset>/<task>.json).")
@click.option("--force", is_flag=True, help="Replace an existing entry with the same key.")
def leaderboard_merge(result_file: Path, leaderboard_file: Path | None, force: bool) -> None:
    """Add a submitted result file to a leaderboard after validation."""
    result = read_result(result_file)
    path = leaderboard_file or leaderboard_path(Path("."), result["dataset"]["name"],
                                                result["task"])
    board = merge_result(path, result_file, force=force)
    err_console.print(f"merged {result['method']['name']} into {path} "
                      f"({len(board['entries'])} entries)", highlight=False)


@cli.group()
def results() -> None:
    """Validate result files."""


@results.command("validate")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
def results_validate(files: Sequence[Path]) -> None:
    """Check result files against the schema; non-zero exit if any is invalid."""
    bad = 0
    for path in files:
        try:
            read_result(path)
        except FusebenchError as error:
            bad += 1
            err_console.print(f"[red]invalid:[/] {error}", highlight=False)
        else:
            console.print(f"[green]valid:[/] {path}", highlight=False)
    if bad:
        raise FusebenchError(f"{bad} of {len(files)} result files are invalid")


plugins.add_command(plugins_new_command)
plugins.add_command(plugins_check_command)
cli.add_command(data_group)
cli.add_command(throughput_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning errors into one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="fusebench", standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except FusebenchError as error:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as error:  # a bug: still one line unless --debug
        if debug:
            raise
        summary = str(error).splitlines()[0] if str(error) else ""
        err_console.print(
            f"[red]internal error:[/] {type(error).__name__}: {summary} "
            "(rerun with --debug for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
