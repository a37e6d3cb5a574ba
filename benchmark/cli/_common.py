"""Helpers shared by the click commands of :mod:`fusebench.cli` and the command modules it attaches
(:mod:`fusebench.scaffold`, :mod:`fusebench.throughput`, :mod:`fusebench.data.cli`)."""

from __future__ import annotations

import warnings

from rich.console import Console

from fusebench.errors import FusebenchError
from fusebench.registry import PluginWarning, Registry, get_registry

__all__ = ["err_console", "registry_for_cli", "resolve_device"]

err_console = Console(stderr=True)


def registry_for_cli() -> Registry:
    """The registry, with plugin failures shown as one yellow line each instead of warnings."""
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
