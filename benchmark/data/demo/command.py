"""``fusebench data demo``: the click command."""

from __future__ import annotations

from pathlib import Path

import click

from fusebench.data.demo.generate import ensure_demo, generate_demo
from fusebench.data.demo.model import DEMO_SIZES


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to create (must not exist or be empty). Default: the per-user cache "
    "$FUSEBENCH_HOME/demo/<size>-seed<seed> (reused if present).",
)
@click.option(
    "--size",
    type=click.Choice(list(DEMO_SIZES)),
    default="small",
    show_default=True,
    help="tiny: tests, seconds; small: the default demo; full: MIMIC scale.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def demo_command(out: Path | None, size: str, seed: int, progress: bool) -> None:
    """Write the synthetic MIMIC-shaped demo dataset (EHR + CXR, not real patients)."""
    root = (
        generate_demo(out, size, seed, progress=progress)
        if out is not None
        else ensure_demo(size, seed, progress=progress)
    )
    click.echo(
        f"Synthetic demo dataset (not MIMIC) at {root}: --ehr-root {root / 'ehr'} "
        f"--cxr-root {root / 'cxr'}"
    )
