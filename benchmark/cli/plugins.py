"""``fusebench plugins list|new|check``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fusebench.cli._common import console, err_console, registry_for_cli, split_names
from fusebench.errors import FusebenchError

if TYPE_CHECKING:
    from fusebench.specs import MethodSpec
    from fusebench.testing import CheckResult

__all__ = ["plugins"]


@click.group()
def plugins() -> None:
    """List, scaffold and check fusion-method plugins."""


def _method_row(method: MethodSpec, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "name": method.name,
        "plugin": method.plugin,
        "distribution": method.distribution,
        "version": method.version,
        "handles_missing_cxr": method.handles_missing_cxr,
        "default_train_cohort": method.default_train_cohort,
        "train_cohorts": list(method.train_cohorts),
        "pretraining": list(method.pretraining),
        "trainable_parameters": counts,
        "description": method.description,
        "reference": method.reference,
    }


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_list(as_json: bool) -> None:
    """List the registered fusion methods and their trainable parameters per task."""
    from rich.table import Table

    from fusebench.parameter_counts import parameter_counts

    registry = registry_for_cli()
    tasks = sorted(registry.tasks.values(), key=lambda t: t.name)
    methods = sorted(registry.methods.values(), key=lambda m: m.name)
    counts = parameter_counts(methods, tasks)
    rows = [_method_row(method, counts[method.name]) for method in methods]
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


@plugins.command("new")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Folder to create (default: ./fusebench-NAME).")
def plugins_new(name: str, directory: Path | None) -> None:
    """Scaffold an installable plugin package for a new fusion method NAME."""
    from fusebench.scaffold import scaffold_plugin, validate_plugin_name

    validate_plugin_name(name)
    registered = registry_for_cli().methods.get(name)
    if registered is not None:
        raise FusebenchError(f"method {name!r} is already registered by "
                             f"{registered.distribution}; choose another name")
    root = scaffold_plugin(name, directory or Path(f"fusebench-{name}"))
    console.print(f"[green]created[/] {root}", highlight=False)
    console.print(
        "next:\n"
        f"  pip install -e {root}\n"
        f"  pytest {root / 'tests'}\n"
        f"  fusebench plugins check {name}\n"
        f"  fusebench run --task in-hospital-mortality --method {name} --preset quick",
        highlight=False,
    )


@plugins.command("check")
@click.argument("name")
@click.option("--task", "task_names", multiple=True,
              help="Task to check on (repeatable or comma list; default: every task).")
def plugins_check(name: str, task_names: Sequence[str]) -> None:
    """Run the conformance suite on method NAME; non-zero exit on any failure."""
    from fusebench.testing import check_method

    registry = registry_for_cli()
    method = registry.method(name)
    results = check_method(method, registry, tasks=split_names(task_names) or None)
    title = f"conformance of {name} from {method.distribution} {method.version}".strip()
    console.print(_results_table(title, results))
    debug = bool(click.get_current_context().find_root().params.get("debug"))
    for result in results if debug else ():
        if result.traceback:
            err_console.print(f"{result.task}: {result.name} crashed:\n{result.traceback}",
                              highlight=False, markup=False)
    failed = [result for result in results if not result.passed and not result.blocked_by]
    if failed:
        names = ", ".join(f"{r.name} ({r.task})" for r in failed)
        blocked = sum(1 for r in results if r.blocked_by)
        also = f" ({blocked} more not checked because of them)" if blocked else ""
        crashed = any(r.traceback for r in failed) and not debug
        hint = (f" (`fusebench --debug plugins check {name}` shows the tracebacks)"
                if crashed else "")
        raise FusebenchError(f"{name}: {len(failed)} of {len(results)} conformance checks "
                             f"failed: {names}{also}; see the reasons in the table above{hint}")
    err_console.print(f"[green]{name}: all {len(results)} conformance checks passed[/]",
                      highlight=False)


def _results_table(title: str, results: Sequence[CheckResult]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in ("task", "check", "result", "reason"):
        table.add_column(column, overflow="fold")
    for result in results:
        verdict = ("[green]pass[/]" if result.passed else "[yellow]not checked[/]"
                   if result.blocked_by else "[red]FAIL[/]")
        table.add_row(result.task, result.name, verdict, result.reason)
    return table
