"""Predictions files: one row per test stay, written by a run and read for paired differences.

Format: ``stay_id, prob:<label>..., true:<label>...`` (CSV). A result records its predictions
file's SHA-256; whoever reads the file for a comparison passes that digest, and the file is
checked against it before any number is computed from it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_bytes
from fusebench.results import sha256_file
from fusebench.specs import TaskSpec

__all__ = ["BOOTSTRAP_SEED", "read_predictions", "verify_predictions", "write_predictions"]

BOOTSTRAP_SEED = 0  # shared by every method so that paired differences use the same resamples


def write_predictions(path: Path, stay_ids: np.ndarray, probabilities: np.ndarray,
                      labels: np.ndarray, task: TaskSpec) -> str:
    """Write a predictions file atomically; return its SHA-256."""
    columns: dict[str, Any] = {"stay_id": stay_ids}
    columns.update({f"prob:{name}": probabilities[:, i] for i, name in enumerate(task.labels)})
    columns.update({f"true:{name}": labels[:, i].astype(int) for i, name in enumerate(task.labels)})
    buffer = io.StringIO()
    pd.DataFrame(columns).to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return sha256_file(path)


def verify_predictions(path: Path, sha256: str) -> None:
    """Check that ``path`` holds the bytes a result recorded.

    Raises:
        FusebenchError: the file is missing or its SHA-256 differs (one line, with the way out).
    """
    path = Path(path)
    try:
        actual = sha256_file(path)
    except OSError as error:
        raise FusebenchError(f"{path}: predictions file missing or unreadable "
                             f"({error.strerror or error}); restore it or rerun the entry") from error
    if actual != sha256:
        raise FusebenchError(
            f"{path}: sha256 {actual[:12]} differs from {sha256[:12]} recorded in its result; "
            "the predictions were changed or replaced: restore the file or rerun the entry"
        )


def read_predictions(path: Path, task: TaskSpec, *, sha256: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(stay_ids, labels, probabilities)`` of a predictions file written by a run.

    Args:
        path: the CSV file.
        task: the task whose label columns it must hold.
        sha256: the digest its result records; when given, the file is verified first.

    Raises:
        FusebenchError: a digest mismatch, an unreadable file or a column of ``task`` missing.
    """
    if sha256 is not None:
        verify_predictions(path, sha256)
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise FusebenchError(f"{path}: cannot read predictions ({error})") from error
    needed = ["stay_id"] + [f"{kind}:{name}" for kind in ("prob", "true") for name in task.labels]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise FusebenchError(
            f"{path}: column {missing[0]!r} missing for task {task.name} "
            f"(expected stay_id, prob:<label>, true:<label>)"
        )
    probabilities = frame[[f"prob:{n}" for n in task.labels]].to_numpy(np.float64)
    labels = frame[[f"true:{n}" for n in task.labels]].to_numpy(np.float64)
    if not np.isfinite(probabilities).all() or ((probabilities < 0) | (probabilities > 1)).any():
        raise FusebenchError(f"{path}: probabilities must be finite and within [0, 1]")
    if not np.isin(labels, (0, 1)).all():
        raise FusebenchError(f"{path}: labels must be 0 or 1")
    return frame["stay_id"].to_numpy(np.int64), labels, probabilities
