"""``fusebench data extract``: the click command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fusebench.data.extract.profiles import PROFILES

if TYPE_CHECKING:
    from rich.table import Table

    from fusebench.data.extract.pipeline import ExtractSummary

__all__ = ["extract_command"]

_PROFILE_HELP = " ".join(
    f"{name}: " + "; ".join(rules) + "." for name, rules in PROFILES.items())


@click.command("extract")
@click.option("--mimic-iv", "mimic_iv", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The MIMIC-IV folder as PhysioNet ships it (hosp/, icu/; core/ for v1.0), "
                   ".csv.gz or .csv.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data root to write: OUT/ehr (use it as --data-root with OUT/cxr).")
@click.option("--profile", type=click.Choice(list(PROFILES)), default="medfuse-2022",
              show_default=True, help=_PROFILE_HELP)
@click.option("--resume", is_flag=True,
              help="Continue a killed extraction in OUT (finished stages are kept).")
@click.option("--memory-limit", default="4GB", show_default=True,
              help="Memory cap of the columnar engine (duckdb spills to disk beyond it).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars and counts.")
def extract_command(mimic_iv: Path, out: Path, profile: str, resume: bool, memory_limit: str,
                    as_json: bool, progress: bool) -> None:
    """Extract the benchmark EHR files (listfiles, episode CSVs) from raw MIMIC-IV."""
    from rich.console import Console

    from fusebench.data.extract.pipeline import extract_mimic_iv

    summary = extract_mimic_iv(mimic_iv, out, profile=profile, resume=resume,
                               progress=progress and not as_json, memory_limit=memory_limit)
    if as_json:
        click.echo(json.dumps(summary.as_json(), indent=2))
        return
    Console().print(_table(summary))
    click.echo(f"wrote {out / 'ehr'} (summary in {out / 'ehr' / 'extract.json'})")


def _count_text(value: object) -> str:
    """A count, or a cohort step's stays (admissions, subjects in the JSON), or key/value pairs."""
    if not isinstance(value, dict):
        return str(value)
    if "stays" in value:
        return f"{value['stays']} stays"
    return ", ".join(f"{key} {item}" for key, item in value.items())


def _table(summary: ExtractSummary) -> Table:
    from rich.table import Table

    table = Table(title=f"MIMIC-IV {summary.version} -> fusebench EHR root "
                        f"(profile {summary.profile})")
    for column in ("stage", "seconds", "counts"):
        table.add_column(column)
    for stage, counts in summary.counts.items():
        seconds = summary.seconds.get(stage)
        shown = "; ".join(f"{name}: {_count_text(value)}" for name, value in counts.items())
        table.add_row(stage, "resumed" if seconds is None else f"{seconds:.1f}", shown)
    return table
