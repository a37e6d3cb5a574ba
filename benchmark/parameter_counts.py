"""Trainable-parameter counts of registered methods, as ``fusebench plugins list`` shows them.

A count comes from building the method's model on the meta device
(:func:`fusebench.testing.parameter_count_on_meta`): no memory, no initialisation, yet about 0.1 s
a model, and building the CNNs needs torchvision (another 1.5 s to import). Counts are therefore
kept in ``$FUSEBENCH_HOME/parameter-counts.json``, each under a key made of everything the model
can depend on: the method, its distribution and version, the builder, the size and modification
time of every loaded module of the builder's top-level package, the torch and torchvision
versions, the task and the method's hyper-parameters for it. Editing a plugin's code, upgrading
it or torch makes a new key, so a stale count is never shown; an unreadable cache file counts as
empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from fusebench.fileio import atomic_write_json, fusebench_home
from fusebench.specs import MethodSpec, TaskSpec

__all__ = ["CACHE_FILE", "parameter_counts"]

CACHE_FILE = "parameter-counts.json"


def parameter_counts(methods: Sequence[MethodSpec],
                     tasks: Sequence[TaskSpec]) -> dict[str, dict[str, int]]:
    """``{method: {task: trainable parameters}}``, from the cache where the key matches.

    Args:
        methods: the methods to count.
        tasks: the tasks to count them for.

    Returns:
        The counts; those computed now are added to the cache file (atomically).
    """
    path = fusebench_home() / CACHE_FILE
    cached = _read(path)
    counts: dict[str, dict[str, int]] = {}
    missing = False
    # before any count imports more modules: the stamps must not depend on which counts missed
    versions = [_version("torch"), _version("torchvision")]
    files = {package: _file_stamps(package) for package in {_package(m) for m in methods}}
    stamps = {method.name: _code_stamp(method, versions, files[_package(method)])
              for method in methods}
    for method in methods:
        stamp = stamps[method.name]
        counts[method.name] = {}
        for task in tasks:
            key = _key(stamp, method, task)
            if key not in cached:
                from fusebench.testing import parameter_count_on_meta

                cached[key] = parameter_count_on_meta(method, task)
                missing = True
            counts[method.name][task.name] = cached[key]
    if missing:
        # a read-only home only costs the next listing its speed
        with contextlib.suppress(OSError):
            atomic_write_json(path, cached)
    return counts


def _read(path: Path) -> dict[str, int]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in content.items() if isinstance(v, int)} if isinstance(
        content, dict) else {}


def _package(method: MethodSpec) -> str:
    """The top-level package of the module defining the method's builder."""
    return (getattr(method.build, "__module__", None) or "").split(".")[0]


def _file_stamps(package: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every loaded module of ``package``."""
    files = sorted({m.__file__ for name, m in list(sys.modules.items())
                    if (name == package or name.startswith(package + "."))
                    and isinstance(getattr(m, "__file__", None), str)})
    stamps = []
    for file in files:
        try:
            status = os.stat(file)
        except OSError:
            continue
        stamps.append((file, status.st_size, status.st_mtime_ns))
    return stamps


def _code_stamp(method: MethodSpec, versions: list[str],
                files: list[tuple[str, int, int]]) -> str:
    return json.dumps([method.name, method.distribution, method.version,
                       getattr(method.build, "__module__", None),
                       getattr(method.build, "__qualname__", repr(method.build)), versions, files])


def _key(stamp: str, method: MethodSpec, task: TaskSpec) -> str:
    described = json.dumps([stamp, task.name, task.num_classes, method.hparams_for(task.name)],
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"
