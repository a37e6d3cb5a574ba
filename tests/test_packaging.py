"""The distribution installs one namespace, ``fusebench``, whatever the user's folder holds."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fusebench.registry import load_registry

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"benchmark": "fusebench", "plugins": "fusebench/plugins", "tasks": "fusebench/tasks"}


def _shadowing_folder(root: Path) -> Path:
    """A working folder with its own ``tasks.py``, ``tasks/``, ``plugins/`` and ``benchmark/``,
    each failing loudly if anything imports it."""
    boom = "raise ImportError('the user\\'s own {} was imported')\n"
    (root / "tasks.py").write_text(boom.format("tasks.py"))  # an invoke tasks file
    for name in ("tasks", "plugins", "benchmark"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(boom.format(f"{name}/"))
    (root / "plugins" / "encoders.py").write_text(boom.format("plugins/encoders.py"))
    return root


def test_commands_ignore_the_users_tasks_and_plugins_folders(tmp_path: Path) -> None:
    folder = _shadowing_folder(tmp_path)
    listing = subprocess.run([sys.executable, "-m", "fusebench", "plugins", "list", "--json"],
                             cwd=folder, capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0, listing.stderr
    payload = json.loads(listing.stdout)
    assert payload["problems"] == []
    assert {m["name"] for m in payload["methods"]} >= set(load_registry().methods)
    tasks = subprocess.run([sys.executable, "-m", "fusebench", "tasks", "list", "--json"],
                           cwd=folder, capture_output=True, text=True, timeout=300)
    assert tasks.returncode == 0, tasks.stderr
    assert {t["name"] for t in json.loads(tasks.stdout)["tasks"]} >= {
        "in-hospital-mortality", "phenotyping"}


@pytest.mark.slow
def test_run_works_from_a_folder_that_shadows_the_old_names(tmp_path: Path, demo_tiny_root) -> None:
    folder = _shadowing_folder(tmp_path)
    process = subprocess.run(
        [sys.executable, "-m", "fusebench", "run", "--task", "in-hospital-mortality", "--method",
         "uni-ehr", "--data-root", str(demo_tiny_root), "--preset", "quick", "--epochs", "1",
         "--n-resamples", "20", "--out", str(tmp_path / "runs")],
        cwd=folder, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    assert list((tmp_path / "runs").rglob("result-paired.json"))


@pytest.mark.slow
def test_the_wheel_holds_only_fusebench_and_every_source_file(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="77")  # the build backend, without a download
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = tmp_path.glob("fusebench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {
        "fusebench", next(n.split("/")[0] for n in names if ".dist-info/" in n)}
    tracked = subprocess.run(["git", "ls-files", *FOLDERS], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    expected = {FOLDERS[path.split("/")[0]] + path[len(path.split("/")[0]):] for path in tracked
                if not path.endswith((".md", ".gitignore"))}
    assert expected - names == set(), "files missing from the wheel: add their package to " \
                                      "pyproject.toml [tool.setuptools] packages/package-data"
    entry_points = next(zipfile.Path(wheel, n).read_text() for n in names
                        if n.endswith("entry_points.txt"))
    assert "= benchmark." not in entry_points and "= plugins." not in entry_points


def test_click_is_imported_by_the_command_modules_only() -> None:
    """Library modules raise errors and return data; only ``benchmark/cli/`` speaks click."""
    offenders = []
    for folder in FOLDERS:
        for source in sorted((REPO / folder).rglob("*.py")):
            if source.is_relative_to(REPO / "benchmark" / "cli"):
                continue
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(name == "click" or name.startswith("click.") for name in names):
                    offenders.append(f"{source.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
