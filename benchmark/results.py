"""Result files: schema, validation on write and on read, atomic writes, file locks, environment.

A result file describes one trained method evaluated on one test cohort. It is JSON only (never
pickled), carries ``schema_version``, and is validated before it is written and after it is read.

Example:
    >>> errors = validate_result({"schema_version": 1})
    >>> errors[0]
    "missing key 'created'"
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fusebench.errors import FusebenchError

__all__ = [
    "SCHEMA_VERSION",
    "atomic_write_bytes",
    "atomic_write_json",
    "environment",
    "file_lock",
    "git_commit",
    "read_result",
    "sha256_file",
    "utc_now",
    "validate_result",
    "write_result",
]

SCHEMA_VERSION = 1

# key -> expected type(s); nested blocks are checked by _check_block.
_TOP_LEVEL: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "created": str,
    "harness": dict,
    "dataset": dict,
    "task": str,
    "method": dict,
    "train_cohort": str,
    "test_cohort": dict,
    "cxr_window": str,
    "metrics": dict,
    "ci": dict,
    "seeds": list,
    "training": dict,
    "predictions": dict,
    "environment": dict,
    "status": str,
}
_BLOCKS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "harness": {"version": str, "git_commit": str},
    "dataset": {"name": str, "fingerprint": str, "is_demo": bool},
    "method": {"name": str, "distribution": str, "version": str, "hparams": dict,
               "trainable_parameters": int},
    "test_cohort": {"name": str, "n": int, "positives": dict},
    "ci": {"method": str, "level": float, "n_resamples": int, "seed": int},
    "training": {"seconds": (int, float), "best_epoch": int, "epochs_run": int},
    "predictions": {"file": str, "sha256": str},
    "environment": {"python": str, "torch": str, "device": str},
}
_METRIC_NAMES = ("auroc", "auprc")


def utc_now() -> str:
    """Current UTC time in ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_block(name: str, block: Any, spec: Mapping[str, Any]) -> list[str]:
    errors = []
    for key, expected in spec.items():
        if key not in block:
            errors.append(f"missing key '{name}.{key}'")
        elif not isinstance(block[key], expected) or isinstance(block[key], bool) != (
            expected is bool
        ):
            errors.append(f"'{name}.{key}' has type {type(block[key]).__name__}")
    return errors


def _check_interval(path: str, entry: Any) -> list[str]:
    """A metric entry is {"value": number, "ci": [low, high]}.

    null marks what is undefined: the value when a label has one class in the test set, the
    interval when every resample has one class (tiny test sets).
    """
    if not isinstance(entry, dict) or "value" not in entry or "ci" not in entry:
        return [f"'{path}' must have 'value' and 'ci'"]
    value, ci = entry["value"], entry["ci"]
    if value is not None and not isinstance(value, (int, float)):
        return [f"'{path}.value' must be a number"]
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci)):
        return [f"'{path}.ci' must be [low, high]"]
    return []


def validate_result(result: Any) -> list[str]:
    """Every schema violation of ``result`` as a readable line (empty list: valid)."""
    if not isinstance(result, dict):
        return ["a result must be a JSON object"]
    errors = []
    for key, expected in _TOP_LEVEL.items():
        if key not in result:
            errors.append(f"missing key '{key}'")
        elif not isinstance(result[key], expected):
            errors.append(f"'{key}' has type {type(result[key]).__name__}")
    if errors:
        return errors
    if result["schema_version"] != SCHEMA_VERSION:
        return [f"schema_version {result['schema_version']} is not supported "
                f"(this harness reads {SCHEMA_VERSION})"]
    for name, spec in _BLOCKS.items():
        errors += _check_block(name, result[name], spec)
    if result["train_cohort"] not in ("paired", "partial"):
        errors.append(f"'train_cohort' is {result['train_cohort']!r}, expected paired or partial")
    if result["status"] != "ok":
        errors.append(f"'status' is {result['status']!r}; only finished runs are results")
    for metric in _METRIC_NAMES:
        block = result["metrics"].get(metric)
        if not isinstance(block, dict) or "macro" not in block:
            errors.append(f"missing key 'metrics.{metric}.macro'")
            continue
        errors += _check_interval(f"metrics.{metric}.macro", block["macro"])
        for label, entry in block.get("per_label", {}).items():
            errors += _check_interval(f"metrics.{metric}.per_label.{label}", entry)
    return errors


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Raises:
        FusebenchError: the folder or the file cannot be written (``path`` is then unchanged).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise FusebenchError(
            f"cannot write {path}: {error.strerror}; choose a writable folder with --out"
        ) from error
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError):  # a full disk, a quota, an I/O error: not a bug
            raise FusebenchError(
                f"cannot write {path}: {error.strerror or error}; free disk space or choose "
                "another folder, then rerun (the previous file is unchanged)"
            ) from error
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    """Validate ``result`` and write it atomically; a schema violation is a bug, so it raises."""
    errors = validate_result(dict(result))
    if errors:
        raise ValueError(f"refusing to write an invalid result to {path}: {'; '.join(errors)}")
    atomic_write_json(path, result)


def read_result(path: Path) -> dict[str, Any]:
    """Read and validate a result file.

    Raises:
        FusebenchError: the file is missing, not JSON, or violates the schema.
    """
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise FusebenchError(f"{path}: no such result file") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FusebenchError(
            f"{path}: not valid JSON ({error}); the file is damaged: rerun the entry or restore it"
        ) from error
    errors = validate_result(result)
    if errors:
        raise FusebenchError(f"{path}: invalid result: {errors[0]}"
                             + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return result


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path.lock`` (blocks until free)."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_commit() -> str:
    """Commit of the harness checkout, or "unknown" outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def environment(device: str) -> dict[str, str]:
    """Python, torch and device description recorded in every result."""
    import torch

    name = device
    if device.startswith("cuda") and torch.cuda.is_available():
        name = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": name,
        "platform": platform.platform(),
        "cpu_threads": str(torch.get_num_threads()),
    }
