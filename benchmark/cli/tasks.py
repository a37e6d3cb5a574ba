"""``fusebench tasks list``."""

from __future__ import annotations

import json

import click

from fusebench.cli._common import console, registry_for_cli

__all__ = ["tasks"]


@click.group()
def tasks() -> None:
    """List prediction tasks."""


@tasks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tasks_list(as_json: bool) -> None:
    """List the registered tasks."""
    from rich.table import Table

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
