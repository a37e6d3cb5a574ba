"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusebench.data.demo import generate_demo

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own ``FUSEBENCH_HOME``, ``FUSEBENCH_CACHE`` and working folder.

    Nothing a test writes lands in ``~/.cache/fusebench`` or the working tree, and no test sees
    what another one left behind.
    """
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FUSEBENCH_HOME", str(home / "fusebench-home"))
    monkeypatch.setenv("FUSEBENCH_CACHE", str(home / "fusebench-cache"))
    monkeypatch.chdir(home)
    return home


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> None:
    """Run torch on one intra-op thread in the test process.

    The tests' tensors are tiny (batches of 4, 16-32 px images), so a second thread saves little,
    while its OpenMP workers spin whenever the cores are busy elsewhere (other tests' child
    processes, other users): on the shared 2-core machine ``check_method`` of ``late`` for one
    task took 27.9 s CPU / 54.9 s wall with torch's default 2 threads and 2.7 s / 5.2 s with one.
    Child processes (CLI runs, torchrun) keep torch's default.
    """
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated tiny demo dataset (seed 0): ``root/ehr`` and ``root/cxr``. Do not modify it."""
    return generate_demo(tmp_path_factory.mktemp("demo") / "tiny", "tiny", seed=0, progress=False)
