"""Result files: schema, validation on write and on read, provenance, environment.

A result file describes one trained method evaluated on one test cohort. It is JSON only (never
pickled), carries ``schema_version``, and is validated before it is written and after it is read
against the JSON Schema shipped with the package (``fusebench/schemas/result.schema.json``: types,
ranges, name patterns, size limits) plus the rules a schema cannot state (finite numbers only,
every interval ordered). An interval need not contain its value: a percentile bootstrap interval
of AUPRC can lie above the point estimate on small test sets (resamples with repeated positives
score higher). ``leaderboard merge`` checks the values against the result's predictions instead. ``fusebench results validate``, ``leaderboard
merge`` and every leaderboard rebuild use the same :func:`validate_result`.

Example:
    >>> errors = validate_result({"schema_version": 1})
    >>> errors[0]
    "missing key 'created'"
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import subprocess
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import jsonschema

from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_json

__all__ = [
    "MAX_RESULT_BYTES",
    "NAME_PATTERN",
    "SCHEMA_VERSION",
    "environment",
    "harness_provenance",
    "load_json_file",
    "read_result",
    "result_schema",
    "sha256_file",
    "utc_now",
    "validate_result",
    "write_result",
]

SCHEMA_VERSION = 1
NAME_PATTERN = "^[a-z0-9][a-z0-9-]*$"  # method, task, dataset and preset names (also in the schema)
MAX_RESULT_BYTES = 2 * 2**20  # a result is a few kB; a bigger file is refused before parsing
_TOLERANCE = 1e-9  # float rounding between a value and its interval's ends


def utc_now() -> str:
    """Current UTC time in ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@functools.cache
def result_schema() -> dict[str, Any]:
    """The JSON Schema of result files, as shipped in the package."""
    text = resources.files("fusebench.schemas").joinpath("result.schema.json").read_text()
    return json.loads(text)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(result_schema())


def _where(path: Iterator[Any]) -> str:
    return ".".join(str(part) for part in path)


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _schema_message(error: jsonschema.ValidationError) -> str:
    where = _where(error.absolute_path)
    if error.validator == "required":
        missing = _short(error.message.split("'")[1] if "'" in error.message else error.message)
        return f"missing key '{where + '.' if where else ''}{missing}'"
    if error.validator in ("pattern", "maxLength") and isinstance(error.instance, str):
        shown = _short(repr(error.instance), 60)
        if error.validator == "maxLength":
            return f"'{where}' is {len(error.instance)} characters long (at most {error.schema['maxLength']})"
        return f"'{where}' is {shown}: it must match {error.schema['pattern']}"
    return f"'{where or '(top level)'}': {_short(error.message)}"


def _non_finite(value: Any, where: str = "") -> Iterator[str]:
    if isinstance(value, float) and not math.isfinite(value):
        yield f"'{where or '(top level)'}' is {value}: only finite numbers are allowed"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _non_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{where}.{index}" if where else str(index))


def _intervals(result: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for metric in ("auroc", "auprc"):
        block = result["metrics"][metric]
        yield f"metrics.{metric}.macro", block["macro"]
        for kind in ("per_label", "groups"):
            for label, entry in block.get(kind, {}).items():
                yield f"metrics.{metric}.{kind}.{label}", entry


def _interval_errors(where: str, entry: Mapping[str, Any]) -> list[str]:
    ci = entry["ci"]
    if ci is None:
        return []
    low, high = ci
    if low > high + _TOLERANCE:
        return [f"'{where}.ci' is [{low}, {high}]: the interval must be [low, high] with low <= high"]
    return []


def validate_result(result: Any) -> list[str]:
    """Every violation of the result schema in ``result`` as a readable line (empty: valid).

    The shipped JSON Schema states types, ranges (metrics and interval ends in [0, 1], counts
    positive), name patterns and size limits; this adds finite numbers only and ordered
    intervals.
    """
    if not isinstance(result, dict):
        return ["a result must be a JSON object"]
    version = result.get("schema_version")
    if "schema_version" in result and version != SCHEMA_VERSION:
        return [f"schema_version {_short(repr(version), 40)} is not supported "
                f"(this harness reads {SCHEMA_VERSION})"]
    errors = list(_non_finite(result))
    schema_errors = sorted(_validator().iter_errors(result),
                           key=lambda e: (len(e.absolute_path), _where(e.absolute_path)))
    errors += [_schema_message(error) for error in schema_errors]
    if errors:
        return errors
    for where, entry in _intervals(result):
        errors += _interval_errors(where, entry)
    return errors


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    """Validate ``result`` and write it atomically; a schema violation is a bug, so it raises."""
    errors = validate_result(dict(result))
    if errors:
        raise ValueError(f"refusing to write an invalid result to {path}: {'; '.join(errors)}")
    atomic_write_json(path, result)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def load_json_file(path: Path, *, max_bytes: int, what: str) -> Any:
    """Parse a JSON file of at most ``max_bytes``, refusing NaN and infinity.

    Raises:
        FusebenchError: missing, too big, not JSON, or holding NaN/Infinity.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FusebenchError(f"{path}: {size:,} bytes, more than a {what} may have "
                                 f"({max_bytes:,}); this is not a {what} written by fusebench")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except FileNotFoundError as error:
        raise FusebenchError(f"{path}: no such {what} file") from error
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise FusebenchError(
            f"{path}: not valid JSON ({_short(str(error))}); the file is damaged: rerun the "
            "entry or restore it"
        ) from error
    except OSError as error:
        raise FusebenchError(f"{path}: cannot read it ({error.strerror or error})") from error


def read_result(path: Path) -> dict[str, Any]:
    """Read and validate a result file.

    Raises:
        FusebenchError: the file is missing, too big, not JSON, or violates the schema.
    """
    result = load_json_file(path, max_bytes=MAX_RESULT_BYTES, what="result")
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


def _git_head(folder: Path) -> str | None:
    """HEAD of the git work tree whose top level is exactly ``folder`` (None otherwise)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=folder,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if len(lines) != 2 or Path(lines[0]).resolve() != folder.resolve():
        return None  # the package sits inside some other repository
    return lines[1]


@functools.cache
def harness_provenance() -> dict[str, str]:
    """Version and source commit of the installed fusebench, from its package metadata.

    The version is the distribution's. The commit is the one pip recorded for a VCS install
    (``direct_url.json``: ``vcs_info.commit_id``); for an editable install of a local checkout,
    that checkout's HEAD when the recorded folder is itself a git work tree; otherwise
    "unknown". The current folder's repository is never consulted.
    """
    # An egg-info folder in the current directory can shadow the installed metadata: prefer
    # the distribution that pip recorded (it has direct_url.json).
    found = list(metadata.distributions(name="fusebench"))
    if not found:
        return {"version": "unknown", "git_commit": "unknown", "source": "not installed"}
    distribution = next((d for d in found if d.read_text("direct_url.json")), found[0])
    record = {"version": distribution.version, "git_commit": "unknown", "source": "package"}
    try:
        direct = json.loads(distribution.read_text("direct_url.json") or "null")
    except ValueError:
        direct = None
    if not isinstance(direct, dict):
        return record
    url = str(direct.get("url", ""))
    vcs = direct.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("commit_id"):
        return {**record, "git_commit": str(vcs["commit_id"]), "source": url}
    if (direct.get("dir_info") or {}).get("editable") and url.startswith("file://"):
        folder = Path(unquote(urlparse(url).path))
        commit = _git_head(folder) if folder.is_dir() else None
        return {**record, "git_commit": commit or "unknown", "source": "editable checkout"}
    return record


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
