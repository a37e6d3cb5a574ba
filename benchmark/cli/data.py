"""``fusebench data demo|extract|prepare-cxr|check|info``, and the data options shared by every
command that reads data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from fusebench.data.demo.generate import MANIFEST, ProgressBars, ensure_demo, generate_demo
from fusebench.data.demo.model import DEMO_SIZES
from fusebench.data.demo.raw import MIMIC_IV_VERSIONS, generate_raw_demo
from fusebench.data.extract.profiles import PROFILES
from fusebench.data.layout import SPLITS, DataConfig
from fusebench.errors import FusebenchError

if TYPE_CHECKING:
    from fusebench.data.extract.pipeline import ExtractSummary

__all__ = ["data_config_from_options", "data_group", "data_options", "demo_command",
           "extract_command"]

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


@data_group.command("demo")
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


_PROFILE_HELP = " ".join(
    f"{name}: " + "; ".join(rules) + "." for name, rules in PROFILES.items())


@data_group.command("extract")
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
