"""A new fusion method from nothing to a leaderboard entry, the way CONTRIBUTING.md tells a user.

Packages are installed as a user would (a wheel built by pip, installed by pip) into a private
folder put on PYTHONPATH of the ``fusebench`` child processes, never into the shared venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusebench.cli import main
from fusebench.errors import FusebenchError
from fusebench.scaffold import package_name, scaffold_plugin

ROOT = Path(__file__).resolve().parents[1]
FUSEBENCH = [str(Path(sys.executable).parent / "fusebench")]
EXAMPLE = ROOT / "examples" / "gated-fusion"
IHM = "in-hospital-mortality"


def child_env(python_path: Path | None) -> dict[str, str]:
    """This environment, wide enough that rich tables keep each reason on one line."""
    paths = [str(python_path)] if python_path else []
    paths += [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "COLUMNS": "250"}


def fusebench(*args: str, site: Path | None, cwd: Path, check: bool = True
              ) -> subprocess.CompletedProcess:
    process = subprocess.run([*FUSEBENCH, *args], cwd=cwd, env=child_env(site),
                             capture_output=True, text=True, timeout=300)
    if check and process.returncode != 0:
        raise AssertionError(f"fusebench {' '.join(args)} failed:\n{process.stdout[-2000:]}"
                             f"\n{process.stderr[-2000:]}")
    return process


def pip(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet",
                    *map(str, args)], check=True, capture_output=True, timeout=300)


def install(source: Path, work: Path) -> Path:
    """Build a wheel of a copy of ``source`` (its build files stay out of the repo) and install
    it into ``work/site``; returns that folder."""
    copy = shutil.copytree(source, work / "source",
                           ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", work / "wheels", copy)
    (wheel,) = (work / "wheels").glob("*.whl")
    pip("install", "--no-deps", "--target", work / "site", wheel)
    return work / "site"


def own_tests(package: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(package / "tests")], cwd=package, env=child_env(site),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_scaffold_then_install_then_its_own_tests_and_plugins_check_pass(tmp_path):
    package = tmp_path / "my-plugin"
    fusebench("plugins", "new", "my-fusion", "--dir", str(package), site=None, cwd=tmp_path)
    assert (package / "src" / "fusebench_my_fusion" / "method.py").is_file()
    assert 'my-fusion = "fusebench_my_fusion.method"' in (package / "pyproject.toml").read_text()

    site = install(package, tmp_path / "install")
    tests = own_tests(package, site)
    assert tests.returncode == 0 and "1 passed" in tests.stdout, tests.stdout[-2000:]

    check = fusebench("plugins", "check", "my-fusion", site=site, cwd=tmp_path)
    assert "all 18 conformance checks passed" in check.stderr  # 9 checks x 2 tasks
    assert "FAIL" not in check.stdout


@pytest.mark.slow
def test_plugins_check_fails_a_method_returning_the_wrong_shape_and_says_why(tmp_path):
    package = scaffold_plugin("broken-fusion", tmp_path / "broken")
    method = package / "src" / package_name("broken-fusion") / "method.py"
    source = method.read_text()
    assert "has_image], dim=1))\n" in source
    method.write_text(source.replace("has_image], dim=1))\n", "has_image], dim=1)).sum(dim=1)\n"))

    check = fusebench("--plugin", "fusebench_broken_fusion.method", "plugins", "check",
                      "broken-fusion", "--task", IHM, site=package / "src", cwd=tmp_path,
                      check=False)
    assert check.returncode == 2
    assert "conformance checks failed: output-shape (in-hospital-mortality)" in check.stderr
    failed_rows = [line for line in check.stdout.splitlines() if "FAIL" in line]
    assert any("output-shape" in row and "logits shape (4,), expected (4, 1)" in row
               for row in failed_rows), check.stdout


@pytest.mark.parametrize("name", ["My-Fusion", "my_fusion", "-fusion", "fusion-", "a--b", "1x"])
def test_scaffold_refuses_a_name_that_cannot_be_a_method_name(tmp_path, name):
    with pytest.raises(FusebenchError, match="lowercase letters, digits and single dashes"):
        scaffold_plugin(name, tmp_path / "package")
    assert not (tmp_path / "package").exists()


def test_scaffold_refuses_a_non_empty_folder_and_fills_an_empty_one(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FusebenchError, match="not an empty folder"):
        scaffold_plugin("my-fusion", tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert (scaffold_plugin("my-fusion", tmp_path / "empty") / "pyproject.toml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]  # no staging left


def test_plugins_new_refuses_the_name_of_a_registered_method(tmp_path, monkeypatch, capsys):
    # In this process through the console entry point (a child spends ~6 s CPU on imports).
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins", "new", "medfuse"])
    assert exit_info.value.code == 2 and "already registered" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_example_package_installed_from_a_wheel_runs_end_to_end_to_a_leaderboard_entry(
    tmp_path, demo_tiny_root
):
    site = install(EXAMPLE, tmp_path / "install")
    tests = own_tests(tmp_path / "install" / "source", site)
    assert tests.returncode == 0 and "3 passed" in tests.stdout, tests.stdout[-2000:]

    listing = json.loads(fusebench("plugins", "list", "--json", site=site, cwd=tmp_path).stdout)
    (row,) = [m for m in listing["methods"] if m["name"] == "gated-fusion"]
    assert (row["distribution"], row["version"]) == ("fusebench-gated-fusion", "0.1.0")

    fusebench("plugins", "check", "gated-fusion", site=site, cwd=tmp_path)
    fusebench("run", "--task", IHM, "--method", "gated-fusion", "--preset", "quick",
              "--epochs", "1", "--n-resamples", "50", "--data-root", str(demo_tiny_root),
              "--out", str(tmp_path / "runs"), site=site, cwd=tmp_path)
    folder = tmp_path / "runs" / "demo" / IHM / "gated-fusion" / "partial" / "seed0"
    board_file = tmp_path / "leaderboard.json"
    for cohort in ("paired", "partial"):
        fusebench("leaderboard", "merge", str(folder / f"result-{cohort}.json"),
                  "--leaderboard-file", str(board_file), site=site, cwd=tmp_path)

    board = json.loads(board_file.read_text())
    assert board["task"] == IHM and board["dataset"]["name"] == "demo"
    entries = {entry["test_cohort"]: entry for entry in board["entries"]}
    assert set(entries) == {"paired", "partial"}
    for entry in entries.values():
        assert (entry["method"], entry["distribution"]) == ("gated-fusion", "fusebench-gated-fusion")
        assert entry["source"] == "submitted" and 0 <= entry["auroc"]["value"] <= 1
