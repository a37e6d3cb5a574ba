"""``fusebench data ...`` commands and the data options shared by every command that reads data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from fusebench.data.demo import MANIFEST, demo_command, ensure_demo
from fusebench.data.extract.command import extract_command
from fusebench.data.layout import SPLITS, DataConfig
from fusebench.errors import FusebenchError

__all__ = ["data_config_from_options", "data_group", "data_options"]

_folder = click.Path(file_okay=False, path_type=Path)
_data_option_list = [
    click.option("--data-root", type=_folder, default=None,
                 help="Folder holding ehr/ and cxr/ (default: the synthetic demo dataset)."),
    click.option("--ehr-root", type=_folder, default=None, help="MIMIC-IV benchmark EHR root."),
    click.option("--cxr-root", type=_folder, default=None, help="MIMIC-CXR-JPG root."),
    click.option("--cache-dir", type=_folder, default=None,
                 help="Preprocessed-data cache (default: $FUSEBENCH_CACHE or beside the data)."),
    click.option("--image-size", type=click.IntRange(8, 2048), default=None,
                 help="Side of the square CXR crop fed to the model [default: 224]."),
    click.option("--normalizer", type=click.Choice(["train", "medfuse-2022"]), default="train",
                 show_default=True,
                 help="EHR z-score statistics: training split, or the original MedFuse file."),
    click.option("--cxr-window", type=click.Choice(["default", "48h", "full-stay"]),
                 default="default", show_default=True,
                 help="CXR pairing window (default: 48h for IHM, full stay for phenotyping)."),
]


def data_options(function: Any) -> Any:
    """Add the data options (``--data-root`` ... ``--cxr-window``) to a click command."""
    for option in reversed(_data_option_list):
        function = option(function)
    return function


def data_config_from_options(data_root: Path | None = None, ehr_root: Path | None = None,
                             cxr_root: Path | None = None, cache_dir: Path | None = None,
                             image_size: int | None = None, normalizer: str = "train",
                             cxr_window: str = "default", **_: Any) -> DataConfig:
    """A :class:`DataConfig` from the data options; the demo dataset when no root is given."""
    is_demo = False
    if data_root is not None:
        if ehr_root is not None or cxr_root is not None:
            raise FusebenchError("--data-root cannot be combined with --ehr-root/--cxr-root")
        ehr_root, cxr_root = Path(data_root) / "ehr", Path(data_root) / "cxr"
    elif ehr_root is None and cxr_root is None:
        root = ensure_demo()
        print(f"using the synthetic demo dataset (not MIMIC) at {root}; pass --data-root for "
              "real data", file=sys.stderr)
        ehr_root, cxr_root, is_demo = root / "ehr", root / "cxr", True
    elif ehr_root is None or cxr_root is None:
        raise FusebenchError("give both --ehr-root and --cxr-root (or one --data-root)")
    # A generated demo tree is recognised wherever it lives, so its results are labelled demo.
    is_demo = is_demo or (Path(ehr_root).parent / MANIFEST).exists()
    return DataConfig(ehr_root=Path(ehr_root), cxr_root=Path(cxr_root),
                      image_size=224 if image_size is None else image_size,
                      normalizer=normalizer, cxr_window=cxr_window, cache_dir=cache_dir,
                      is_demo=is_demo)


@click.group("data")
def data_group() -> None:
    """Inspect and prepare the MIMIC (or demo) data."""


@data_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--task", "task_names", multiple=True, help="Task(s) to describe (default: all).")
@data_options
def info_command(as_json: bool, task_names: tuple[str, ...], **options: Any) -> None:
    """Stays, positives, paired fraction, cache state and skipped rows per task/split/cohort."""
    from fusebench.cli._common import registry_for_cli
    from fusebench.data.cohorts import prepare

    registry = registry_for_cli()
    config = data_config_from_options(**options)
    names = task_names or tuple(sorted(registry.tasks))
    summaries = [prepare(config, registry.task(name), progress=not as_json).info()
                 for name in names]
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    console = Console()
    for summary in summaries:
        console.print(_info_table(summary))
        for reason, count in summary["skips"]["by_reason"].items():
            console.print(f"  skipped {count} row(s): {reason}")


def _info_table(summary: dict) -> Table:
    cache = summary["cache"]
    table = Table(title=f"{summary['task']}  (cxr window {summary['cxr_window']}, normalizer "
                        f"{summary['normalizer']}, cache {cache['state']}: {cache['path']}, "
                        f"{cache['bytes'] / 2**20:.1f} MiB)")
    for column in ("split", "cohort", "stays", "positives / mean prevalence", "paired fraction"):
        table.add_column(column)
    for split in SPLITS:
        for cohort, entry in summary["splits"][split].items():
            positives = entry["positives"]
            if len(positives) == 1:
                label = str(next(iter(positives.values())))
            else:
                values = [v for v in entry["prevalence"].values() if v is not None]
                label = f"{sum(values) / len(values):.3f}" if values else "-"
            fraction = entry["paired_fraction"]
            table.add_row(split, cohort, str(entry["stays"]), label,
                          "-" if fraction is None else f"{fraction:.3f}")
    return table


@data_group.command("prepare-cxr")
@click.option("--raw", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="MIMIC-CXR-JPG 2.0.0 folder (CSV files and files/).")
@click.option("--out", type=_folder, required=True, help="CXR root to write (resized/ + CSVs).")
@click.option("--ehr-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="EHR root (its phenotyping val/test listfiles set the split).")
def prepare_cxr_command(raw: Path, out: Path, ehr_root: Path) -> None:
    """Resize the raw images to width 512 and write mimic-cxr-ehr-split.csv (resumable)."""
    from fusebench.data.prepare_cxr import prepare_cxr

    counts = prepare_cxr(raw, out, ehr_root)
    click.echo(f"{counts['images']} images: {counts['resized']} resized, {counts['skipped']} "
               f"already done; wrote {out / 'mimic-cxr-ehr-split.csv'}")


@data_group.command("check")
@click.option("--data-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder holding ehr/ and cxr/.")
@click.option("--ehr-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Check only (or also) this EHR root.")
@click.option("--cxr-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Check only (or also) this CXR root.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def check_command(data_root: Path | None, ehr_root: Path | None, cxr_root: Path | None,
                  as_json: bool) -> None:
    """Validate a data root before training: files, values, windows, splits, labels, images."""
    from fusebench.data.check import check_data_root

    if data_root is not None:
        if ehr_root is not None or cxr_root is not None:
            raise FusebenchError("--data-root cannot be combined with --ehr-root/--cxr-root")
        ehr_root, cxr_root = data_root / "ehr", data_root / "cxr"
    if ehr_root is None and cxr_root is None:
        raise FusebenchError("give --data-root DIR, or --ehr-root and/or --cxr-root")
    report = check_data_root(ehr_root, cxr_root, progress=not as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        table = Table(title=f"data check: {data_root or ehr_root or cxr_root}")
        for column in ("check", "status", "details"):
            table.add_column(column, overflow="fold")
        colours = {"ok": "green", "warning": "yellow", "error": "bold red"}
        for check in report["checks"]:
            table.add_row(check["name"], f"[{colours[check['status']]}]{check['status']}[/]",
                          check["detail"])
        Console().print(table)
    if not report["ok"]:
        errors = sum(check["status"] == "error" for check in report["checks"])
        raise FusebenchError(f"data check: {errors} check(s) failed; fix them before training")


data_group.add_command(demo_command)
data_group.add_command(extract_command)
