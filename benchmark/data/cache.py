"""Content-addressed cache entries: built in a temporary folder, verified by a manifest, renamed.

An entry is a folder ``{cache_dir}/{kind}-{fingerprint[:20]}/`` holding ``.npy``/``.json`` files
and ``manifest.json`` (size of every file, sha256 of the small ones). A folder without a valid
manifest (a crash, a truncated copy, a disk error) is never used: it is removed and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fusebench.errors import FusebenchError

__all__ = [
    "CACHE_VERSION",
    "content_digest",
    "ensure_entry",
    "entry_problem",
    "fingerprint",
    "stat_signature",
]

# Bump when the cached arrays' meaning changes so old entries are not reused.
CACHE_VERSION = 1
_HASHED_BYTES = 64 * 2**20  # files up to this size get a sha256 in the manifest


def fingerprint(parts: Any) -> str:
    """sha256 of a JSON-serialisable description (sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def stat_signature(paths: Iterable[Path]) -> str:
    """sha256 over (name, size, mtime) of many files: cheap change detection for large trees."""
    digest = hashlib.sha256()
    for path in paths:
        info = path.stat()
        digest.update(f"{path.name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def entry_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable entry (None when it is complete and intact)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        for name, expected in manifest["files"].items():
            path = folder / name
            if path.stat().st_size != expected["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, expected {expected['bytes']}"
            if "sha256" in expected and content_digest(path) != expected["sha256"]:
                return f"{name} does not match its sha256"
    except FileNotFoundError as error:
        return f"{Path(error.filename).name} is missing"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable manifest ({error})"
    return None


def _write_manifest(folder: Path) -> None:
    files = {}
    for path in sorted(folder.iterdir()):
        entry: dict[str, Any] = {"bytes": path.stat().st_size}
        if entry["bytes"] <= _HASHED_BYTES:
            entry["sha256"] = content_digest(path)
        files[path.name] = entry
    (folder / "manifest.json").write_text(json.dumps({"version": CACHE_VERSION, "files": files},
                                                     indent=1))


def ensure_entry(folder: Path, build: Callable[[Path], None]) -> str:
    """Reuse ``folder`` if intact, else build it through a temporary folder and a rename.

    Args:
        folder: the entry's final path.
        build: ``build(tmp)`` writes the entry's files into the empty folder ``tmp``.

    Returns:
        ``"reused"``, ``"built"`` or ``"rebuilt (<why>)"`` for a damaged entry.
    """
    state = "built"
    if folder.exists():
        problem = entry_problem(folder)
        if problem is None:
            return "reused"
        state = f"rebuilt ({problem})"
        shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        temporary = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
    except OSError as error:
        raise FusebenchError(f"cache folder {folder.parent} is not writable ({error.strerror}); "
                             "choose one with --cache-dir or $FUSEBENCH_CACHE") from error
    try:
        build(temporary)
        _write_manifest(temporary)
        try:
            os.rename(temporary, folder)
        except OSError:
            # Another process finished the same entry first: keep theirs if it is intact.
            if entry_problem(folder) is not None:
                raise
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(temporary)
        raise
    return state
