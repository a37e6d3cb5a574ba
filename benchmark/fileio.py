"""The one way fusebench writes a file: atomically, with the user's umask, under a file lock.

Every file the harness writes (results, predictions, checkpoints, leaderboards, plots) goes
through :func:`atomic_write_bytes`: the bytes go to a uniquely named temporary file beside the
target (``.<name>.<host>.<pid>.<random>.tmp``), are flushed to disk, take the mode an ordinary
``open`` would give under the current umask (0644 under 022, so colleagues on a shared cluster can
read them), and replace the target with one rename. A reader never sees half a file; a killed
writer leaves only its temporary file, which the next write of the same target removes.

Locks (:func:`file_lock`) use the ``filelock`` library: a timeout becomes a one-line message, it
works on Windows, and a lock file is removed while still held, so no stray ``.lock`` is left behind
and a waiter that locked the removed file retries on the new one.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.json"
    >>> atomic_write_json(target, {"a": 1})
    >>> target.read_text()
    '{\\n  "a": 1\\n}\\n'
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from fusebench.errors import FusebenchError

__all__ = [
    "atomic_write_bytes",
    "fusebench_home",
    "atomic_write_json",
    "atomic_write_text",
    "file_lock",
    "remove_orphaned_temporaries",
]

_HOST = socket.gethostname().replace(".", "_") or "host"
# A temporary file of another machine (a shared file system) is only removed after this long:
# its writer's process cannot be checked from here.
_FOREIGN_ORPHAN_SECONDS = 24 * 3600


def _current_umask() -> int:
    # os.umask can only be read by setting it; the window is two syscalls long.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it there: treat it as running
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell): leave its file alone
    return True


def remove_orphaned_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left beside it.

    A temporary file of this machine is an orphan when its process no longer runs (on Windows,
    where that cannot be asked safely, and for another machine's: when it is older than a day).

    Returns:
        The files removed.
    """
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        parts = candidate.name[len(path.name) + 2:].split(".")
        if len(parts) != 4 or not parts[1].isdigit():
            continue  # not ours
        host, pid = parts[0], int(parts[1])
        try:
            old = time.time() - candidate.stat().st_mtime > _FOREIGN_ORPHAN_SECONDS
            if host == _HOST and pid != os.getpid():
                orphan = not _process_alive(pid) or (os.name == "nt" and old)
            else:
                orphan = host != _HOST and old
            if orphan:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue  # removed by someone else meanwhile, or not ours to remove
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the mode ``open`` would give it (``0666`` less the umask), its bytes are on disk
    before the rename, and the orphans of earlier killed writes of ``path`` are removed.

    Raises:
        FusebenchError: the folder or the file cannot be written (``path`` is then unchanged).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temporaries(path)
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise FusebenchError(
            f"cannot write {path}: {error.strerror}; choose a writable folder with --out"
        ) from error
    try:
        # O_CREAT applied the umask already; fchmod states it for file systems that ignore it
        # (POSIX only: Windows has no such modes).
        if hasattr(os, "fchmod") and os.name != "nt":
            with contextlib.suppress(OSError):
                os.fchmod(handle, 0o666 & ~_current_umask())
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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON (no NaN or infinity), atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True, holder: str = "another fusebench process",
              way_out: str = "wait for it to finish") -> Iterator[None]:
    """Hold an exclusive lock named after ``path`` (``.<name>.lock`` beside it).

    Args:
        path: the file or folder the lock protects.
        wait: block until the lock is free; False: raise at once if it is held.
        holder: who holds it, for the message when ``wait`` is False.
        way_out: what to do then, for the message.

    Raises:
        FusebenchError: ``wait`` is False and the lock is held, or the lock cannot be created.
    """
    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    lock = filelock.FileLock(lock_path, timeout=-1 if wait else 0)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except filelock.Timeout as error:
        raise FusebenchError(f"{path}: {holder} is using it (lock {lock_path}); "
                             f"{way_out}") from error
    except OSError as error:
        raise FusebenchError(f"cannot lock {path}: {error.strerror or error}; choose a writable "
                             "folder") from error
    try:
        yield
    finally:
        # Removed while held: a waiter that then locks the removed file sees it unlinked and
        # retries on a fresh one (filelock checks), so two holders never coexist.
        with contextlib.suppress(OSError):
            lock_path.unlink()
        lock.release()


def fusebench_home() -> Path:
    """Per-user folder of fusebench's own files (cached demo datasets, parameter counts):
    ``$FUSEBENCH_HOME``, else the platform's user cache folder (``~/.cache/fusebench`` on Linux,
    ``~/Library/Caches/fusebench`` on macOS, ``%LOCALAPPDATA%\\fusebench\\Cache`` on Windows)."""
    home = os.environ.get("FUSEBENCH_HOME")
    return Path(home) if home else Path(platformdirs.user_cache_dir("fusebench", appauthor=False))
