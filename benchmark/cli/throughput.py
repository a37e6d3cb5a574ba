"""``fusebench throughput``: training and inference speed of methods on this machine."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from fusebench.cli._common import (
    console,
    err_console,
    registry_for_cli,
    resolve_device,
    split_names,
)
from fusebench.cli.data import data_options
from fusebench.errors import FusebenchError

__all__ = ["throughput"]

# the keys of fusebench.throughput.AMP_DTYPES and its MODES, spelt out so that the command's
# help does not import torch
AMP_CHOICES = ("bf16", "fp16")
MODE_CHOICES = ("model", "end-to-end")


def _check_writable(path: Path) -> None:
    # Fail before minutes of measurement, not after.
    folder = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if path.is_dir() or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise FusebenchError(f"--json {path}: cannot write there; choose a writable file path")


@click.command("throughput")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Method(s), repeatable or a comma list [default: all registered].")
@click.option("--task", "task_name", default="in-hospital-mortality", show_default=True,
              help="Task whose shapes (model mode) or data (end-to-end) are used.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Device [default: cuda if available, else cpu].")
@click.option("--batch-size", "batch_sizes", default="16", show_default=True,
              help="Comma list of batch sizes, e.g. 16,64.")
@click.option("--amp", type=click.Choice(AMP_CHOICES), default=None,
              help="Autocast precision [default: fp32].")
@click.option("--channels-last", is_flag=True, help="Channels-last memory format.")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the model (first call timed apart).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed steps after the first call.")
@click.option("--iters", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed steps per phase.")
@click.option("--mode", type=click.Choice(MODE_CHOICES), default="model", show_default=True,
              help="model: synthetic tensors; end-to-end: the data pipeline on the chosen data.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the records to this JSON file (atomically).")
@data_options
def throughput(methods: Sequence[str], task_name: str, device: str | None,
               batch_sizes: str, amp: str | None, channels_last: bool,
               compile_model: bool, warmup: int, iters: int, mode: str,
               json_path: Path | None, **data_settings: Any) -> None:
    """Training and inference samples/s, step time and peak memory per method and batch size."""
    from fusebench.throughput import (
        measure_throughput,
        parse_batch_sizes,
        render_tables,
        write_records,
    )

    registry = registry_for_cli()
    specs = [registry.method(name) for name in split_names(methods) or sorted(registry.methods)]
    task = registry.task(task_name)
    sizes = parse_batch_sizes(batch_sizes)
    device = resolve_device(device)
    if json_path is not None:
        _check_writable(json_path)
    data = None
    if mode == "end-to-end":
        from fusebench.cli.data import data_config_from_options
        from fusebench.data import prepare

        data = prepare(data_config_from_options(**data_settings), task)
    image_size = data_settings.get("image_size") or 224
    records = []
    for spec in specs:
        records += measure_throughput(
            spec, task, device=device, batch_sizes=sizes, amp=amp, channels_last=channels_last,
            compile=compile_model, warmup=warmup, iters=iters, image_size=image_size,
            mode=mode, data=data, registry=registry)
    render_tables(records, console)
    if json_path is not None:
        write_records(json_path, records)
        err_console.print(f"throughput records in {json_path}", highlight=False)
