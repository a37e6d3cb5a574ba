"""The ``fusebench`` command line: click commands with rich output.

Every command accepts the global options before its name::

    fusebench [--debug] [--plugin module.path ...] COMMAND ...

Errors caused by input print one line and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from benchmark import __version__
from benchmark.errors import FusebenchError
from benchmark.registry import PluginWarning, Registry, get_registry, set_extra_plugins
from benchmark.specs import MethodSpec, ModelConfig, TaskSpec

__all__ = ["cli", "main"]

console = Console()
err_console = Console(stderr=True)


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


def registry_for_cli() -> Registry:
    """The registry, with plugin failures shown as one yellow line each instead of warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        registry = get_registry()
    for problem in registry.problems:
        err_console.print(f"[yellow]warning:[/] {problem}", highlight=False)
    return registry


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
