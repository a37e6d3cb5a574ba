"""Checkpoints written atomically with a SHA-256 sidecar and loaded with ``weights_only=True``.

A truncated or altered checkpoint is detected before torch reads it and reported with the way out.
The sidecar is written before the data; it also vouches for the checkpoint it replaces, so a
process killed between the two writes leaves the previous (verified) checkpoint usable.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_bytes, atomic_write_json

__all__ = ["delete_checkpoint", "load_checkpoint", "load_checkpoint_if_exists", "save_checkpoint"]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _vouched(sidecar: Any) -> list[Any]:
    """The digests a sidecar accepts: the newest, then the one of the checkpoint it replaced."""
    if not isinstance(sidecar, dict):
        return []
    previous = sidecar.get("previous")
    return [{k: sidecar.get(k) for k in ("sha256", "bytes")},
            *(previous if isinstance(previous, list) else [])]


def _current_digest(path: Path) -> dict[str, Any] | None:
    """The digest of the checkpoint now at ``path`` if its sidecar vouches for it, else None."""
    try:
        current = _digest(path.read_bytes())
        vouched = _vouched(json.loads(_sidecar(path).read_text()))
    except (OSError, ValueError):
        return None
    return current if current in vouched else None


def save_checkpoint(path: Path, payload: Any) -> None:
    """Serialise ``payload`` with torch and write it and its checksum atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    # The checksum names the bytes it vouches for; written first so a crash between the two
    # writes never leaves an unverified file. It keeps vouching for the verified checkpoint
    # still in place until the new data replaces it, so such a crash loses one epoch, not all.
    previous = _current_digest(path)
    atomic_write_json(_sidecar(path), {**_digest(data),
                                       "previous": [previous] if previous else []})
    atomic_write_bytes(path, data)


def load_checkpoint(path: Path) -> Any:
    """Verify ``path`` against its checksum and load it with ``weights_only=True``.

    Raises:
        FusebenchError: missing checksum, mismatch or unreadable file, with the way out.
    """
    path = Path(path)
    way_out = f"delete {path} (and its .sha256.json) and rerun without --resume"
    try:
        expected = json.loads(_sidecar(path).read_text())
        data = path.read_bytes()
    except (OSError, json.JSONDecodeError) as error:
        raise FusebenchError(f"checkpoint {path} cannot be verified ({error}); {way_out}") from error
    if _digest(data) not in _vouched(expected):
        raise FusebenchError(f"checkpoint {path} is damaged (checksum mismatch); {way_out}")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise FusebenchError(f"checkpoint {path} cannot be loaded ({error}); {way_out}") from error


def load_checkpoint_if_exists(path: Path) -> Any:
    """:func:`load_checkpoint` of ``path``, or None when there is no file there."""
    return load_checkpoint(path) if Path(path).exists() else None


def delete_checkpoint(path: Path) -> None:
    """Remove the checkpoint at ``path`` and its checksum (nothing if absent)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)
