"""Checkpoints written atomically with a SHA-256 sidecar and loaded with ``weights_only=True``.

A truncated or altered checkpoint is detected before torch reads it and reported with the way out.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import FusebenchError
from benchmark.results import atomic_write_bytes, atomic_write_json

__all__ = ["load_checkpoint", "save_checkpoint"]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def save_checkpoint(path: Path, payload: Any) -> None:
    """Serialise ``payload`` with torch and write it and its checksum atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    # The checksum names the bytes it vouches for; written first so a crash between the two
    # writes leaves a mismatch (detected) rather than an unverified file.
    atomic_write_json(_sidecar(path), {"sha256": hashlib.sha256(data).hexdigest(),
                                       "bytes": len(data)})
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
    if len(data) != expected.get("bytes") or hashlib.sha256(data).hexdigest() != expected.get(
        "sha256"
    ):
        raise FusebenchError(f"checkpoint {path} is damaged (checksum mismatch); {way_out}")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise FusebenchError(f"checkpoint {path} cannot be loaded ({error}); {way_out}") from error
