"""``fusebench results validate``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich.markup import escape

from fusebench.cli._common import console, err_console
from fusebench.errors import FusebenchError

__all__ = ["results"]


@click.group()
def results() -> None:
    """Validate result files."""


@results.command("validate")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
def results_validate(files: Sequence[Path]) -> None:
    """Check result files against the schema; non-zero exit if any is invalid."""
    from fusebench.results import read_result

    bad = 0
    for path in files:
        try:
            read_result(path)
        except FusebenchError as error:
            bad += 1
            err_console.print(f"[red]invalid:[/] {escape(str(error))}", highlight=False,
                              soft_wrap=True)
        else:
            console.print(f"[green]valid:[/] {escape(str(path))}", highlight=False,
                          soft_wrap=True)
    if bad:
        raise FusebenchError(f"{bad} of {len(files)} result files are invalid")
