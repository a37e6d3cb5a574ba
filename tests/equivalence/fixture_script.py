"""What both fixture scripts (make_original_outputs.py, make_drfuse_outputs.py) share: the side
checkout of the original code they import, and the atomic write of the fixture."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def parse_checkout(description: str, option: str, env: str, project: str, marker: str,
                   fixture: Path) -> tuple[Path, Path]:
    """``--OPTION PATH`` (default ``$ENV``) of the original's checkout, which must hold
    ``marker``, and ``--out`` (default ``fixture``); a one-line exit when the checkout is wrong.

    Returns:
        The resolved checkout and the fixture path to write.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(f"--{option}", dest="checkout", type=Path, default=os.environ.get(env),
                        help=f"checkout of {project} (or {env})")
    parser.add_argument("--out", type=Path, default=fixture)
    options = parser.parse_args()
    if options.checkout is None or not (options.checkout / marker).is_file():
        raise SystemExit(f"pass --{option} PATH (or {env}) of a checkout of {project}")
    return options.checkout.resolve(), options.out


def write_fixture(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` into the compressed ``out``, through a temporary name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
