"""``fusebench data demo``: the click command."""

from __future__ import annotations

from pathlib import Path

import click

from fusebench.data.demo.generate import ProgressBars, ensure_demo, generate_demo
from fusebench.data.demo.model import DEMO_SIZES
from fusebench.data.demo.raw import MIMIC_IV_VERSIONS, generate_raw_demo
from fusebench.errors import FusebenchError


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
    default=None,
    help="tiny: tests, seconds; small: the default demo; full: MIMIC scale. With --raw: tiny "
    "(about 60 stays, the default) or small (about 300).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--raw",
    is_flag=True,
    help="Write a synthetic RAW download instead (OUT/mimic-iv as PhysioNet ships MIMIC-IV, "
    "OUT/mimic-cxr-jpg, OUT/planted.json) for `fusebench data extract` and `prepare-cxr`.",
)
@click.option(
    "--mimic-iv-version",
    type=click.Choice(MIMIC_IV_VERSIONS),
    default="3.1",
    show_default=True,
    help="With --raw: the MIMIC-IV release whose folders and columns to write.",
)
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def demo_command(out: Path | None, size: str | None, seed: int, raw: bool,
                 mimic_iv_version: str, progress: bool) -> None:
    """Write the synthetic MIMIC-shaped demo dataset (EHR + CXR, not real patients)."""
    if raw:
        if out is None:
            raise FusebenchError("--raw needs --out DIR (the folder to write the raw download to)")
        with ProgressBars(progress) as add_bar:
            manifest = generate_raw_demo(out, mimic_iv_version, size or "tiny", seed,
                                         progress=add_bar)
        click.echo(
            f"Synthetic RAW download (not MIMIC) at {out}: MIMIC-IV v{mimic_iv_version} layout "
            f"in {out / 'mimic-iv'} ({manifest['stays']} ICU stays), MIMIC-CXR-JPG in "
            f"{out / 'mimic-cxr-jpg'} ({manifest['images']} images); planted quirks in "
            f"{out / 'planted.json'}"
        )
        return
    size = size or "small"
    root = (
        generate_demo(out, size, seed, progress=progress)
        if out is not None
        else ensure_demo(size, seed, progress=progress)
    )
    click.echo(
        f"Synthetic demo dataset (not MIMIC) at {root}: --ehr-root {root / 'ehr'} "
        f"--cxr-root {root / 'cxr'}"
    )
