"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.data.demo import generate_demo


@pytest.fixture(scope="session")
def demo_tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated tiny demo dataset (seed 0): ``root/ehr`` and ``root/cxr``. Do not modify it."""
    return generate_demo(tmp_path_factory.mktemp("demo") / "tiny", "tiny", seed=0, progress=False)
