"""Content-addressed cache entries: built in a temporary folder, verified by a manifest, renamed.

An entry is a folder ``{cache_dir}/{kind}-{fingerprint[:20]}/`` holding ``.npy``/``.json`` files
and ``manifest.json`` (size of every file, sha256 of the small ones). A folder without a valid
manifest (a crash, a truncated copy, a disk error) is never used: it is removed and rebuilt.
A build writes into the hidden ``.{entry}.{host}-{pid}.tmp``; one left by a killed build (its
process is gone) is removed by the next build in the same cache folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
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
    "content_signature",
    "remove_orphaned_builds",
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


def content_signature(paths: Iterable[Path], memo: Path | None = None) -> str:
    """sha256 over (name, sha256 of the bytes) of many files: byte-identical files give one
    signature wherever they lie and whatever their timestamps.

    Args:
        paths: the files, in a fixed order.
        memo: a JSON file remembering each file's digest by (path, size, inode, mtime, ctime), so
            an unchanged large tree (MIMIC's images) is read once, not at every ``prepare``. A
            changed file changes its ctime, which no copy or ``touch`` can set back.
    """
    from fusebench.fileio import atomic_write_json

    known: dict[str, list] = {}
    if memo is not None:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(memo.read_text())
            known = loaded if isinstance(loaded, dict) else {}
    digest, changed = hashlib.sha256(), False
    for path in paths:
        info = path.stat()
        stamp = [info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns]
        name = os.path.abspath(path)  # no syscalls: a tree of 377,000 images is looked up fast
        entry = known.get(name)
        if not (isinstance(entry, list) and entry[:4] == stamp):
            entry = known[name] = [*stamp, content_digest(path)]
            changed = True
        digest.update(f"{path.name}\0{entry[4]}\n".encode())
    if memo is not None and changed:
        with contextlib.suppress(FusebenchError):  # a memo that cannot be written only costs time
            atomic_write_json(memo, known)
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


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
# ``.{entry}.{host}-{pid}.tmp``; temporaries of older versions lack the host.
_TEMPORARY = re.compile(r"\.(?P<entry>.+?)\.(?:(?P<host>[A-Za-z0-9_-]+)-)?(?P<pid>\d+)\.tmp")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphaned_builds(cache_dir: Path) -> list[Path]:
    """Remove the temporary folders of builds killed in ``cache_dir``; return what was removed.

    A temporary folder is an orphan when it was made on this host by a process that no longer
    runs; one made on another host (a shared file system) may belong to a live build there and
    is left alone.
    """
    removed = []
    try:
        candidates = [p for p in cache_dir.iterdir() if p.name.startswith(".")]
    except OSError:
        return removed
    for path in candidates:
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or match["host"] not in (None, _HOST):
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


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
        remove_orphaned_builds(folder.parent)
        temporary = folder.parent / f".{folder.name}.{_HOST}-{os.getpid()}.tmp"
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
