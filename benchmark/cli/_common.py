"""What the command modules share: consoles, the registry with plugin problems shown, the device,
comma lists and output folders. Nothing heavy is imported here: ``fusebench --help`` must start in
a blink."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from fusebench.errors import FusebenchError

if TYPE_CHECKING:
    from fusebench.registry import Registry

__all__ = ["console", "err_console", "out_folder", "registry_for_cli", "resolve_device",
           "split_names"]

console = Console()
err_console = Console(stderr=True)


def registry_for_cli() -> Registry:
    """The registry, with plugin failures shown as one yellow line each instead of warnings."""
    from fusebench.registry import PluginWarning, get_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        registry = get_registry()
    for problem in registry.problems:
        err_console.print(f"[yellow]warning:[/] {problem}", highlight=False)
    return registry


def resolve_device(name: str | None) -> str:
    """``name``, or ``cuda`` when available and ``cpu`` otherwise; an error if CUDA is asked for
    on a machine without it."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FusebenchError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name


def split_names(values: Iterable[str]) -> list[str]:
    """Names from repeatable options that may each hold a comma list, in order, blanks dropped.

    Example:
        >>> split_names(["medfuse,uni-ehr", " late "])
        ['medfuse', 'uni-ehr', 'late']
    """
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def out_folder(path: Path, option: str = "--out") -> Path:
    """``path``, created if needed; a one-line error naming ``option`` when it is not writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".fusebench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise FusebenchError(f"{option} {path}: not writable ({error.strerror}); choose another "
                             "folder") from error
    return path
