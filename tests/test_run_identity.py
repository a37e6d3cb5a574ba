"""Runs and grid entries reused only when their identity matches; one process per run folder;
leaderboards that keep every entry; a new method merged next to the built-ins (issue 15 A).

In-process through the console entry point (the same code and error handling as the command),
on the tiny demo data with the fixture plugin's one-layer ``ok-ehr``/``kill-ehr`` methods.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fusebench.fileio import file_lock
from fusebench.leaderboard import load_leaderboard
from fusebench.registry import extra_plugins, set_extra_plugins
from tests.fixtures.cli import fusebench_in_process

PLUGIN = "tests.fixtures.faulty_methods"
IHM = "in-hospital-mortality"


@pytest.fixture(autouse=True)
def _restore_plugins():
    """In-process runs load the fixture plugin; later tests must not see it."""
    before = extra_plugins()
    yield
    set_extra_plugins(before)


command = fusebench_in_process


def run_args(data: Path, out: Path, *extra: object) -> list[object]:
    return ["run", "--task", IHM, "--method", "ok-ehr", "--data-root", data, "--out", out,
            "--preset", "quick", "--n-resamples", "20", *extra]


def grid_args(data: Path, tmp: Path, methods: str, *extra: object) -> list[object]:
    return ["leaderboard", "--methods", methods, "--tasks", IHM, "--data-root", data,
            "--out", tmp / "runs", "--leaderboard-dir", tmp, "--preset", "quick",
            "--n-resamples", "20", *extra]


def folder_of(out: Path, method: str = "ok-ehr") -> Path:
    return out / "demo" / IHM / method / "partial" / "seed0"


@pytest.mark.slow
def test_resume_reuses_the_same_settings_and_refuses_others_in_one_line(demo_tiny_root,
                                                                        tmp_path, capsys):
    out = tmp_path / "runs"
    status, err = command(capsys, *run_args(demo_tiny_root, out, "--epochs", 1, "--lr", 0.05))
    assert status == 0, err
    result = folder_of(out) / "result-paired.json"
    first = result.read_bytes()
    status, err = command(capsys, *run_args(demo_tiny_root, out, "--epochs", 1, "--lr", 0.05,
                                            "--resume"))
    assert status == 0 and result.read_bytes() == first  # the finished run, reused as it is
    status, err = command(capsys, *run_args(demo_tiny_root, out, "--epochs", 3, "--lr", 0.001,
                                            "--resume"))
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "other settings" in err and "overrides.epochs 1 -> 3" in err and "--resume" in err
    assert result.read_bytes() == first  # refused: nothing touched
    status, err = command(capsys, *run_args(demo_tiny_root, out, "--epochs", 3, "--lr", 0.001))
    assert status == 0, err
    identity = json.loads(result.read_text())["identity"]["fields"]
    assert identity["overrides"] == {"epochs": 3, "lr": 0.001}


def test_a_second_run_on_the_same_folder_refuses_in_one_line(demo_tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    with file_lock(folder_of(out), wait=False):  # as a first `fusebench run` holds it
        status, err = command(capsys, *run_args(demo_tiny_root, out, "--epochs", 1))
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "another fusebench run" in err and "choose another --out" in err
    assert not (folder_of(out) / "result-paired.json").exists()


@pytest.mark.slow
def test_the_grid_reruns_entries_whose_settings_changed_and_keeps_the_old_entries(
        demo_tiny_root, tmp_path, capsys):
    board_path = tmp_path / "leaderboards" / "demo" / f"{IHM}.json"
    status, err = command(capsys, *grid_args(demo_tiny_root, tmp_path, "ok-ehr", "--epochs", 1))
    assert status == 0 and "grid: 0 reused, 1 run, 0 failed, 0 lost" in err, err
    status, err = command(capsys, *grid_args(demo_tiny_root, tmp_path, "ok-ehr", "--epochs", 1))
    assert status == 0 and "grid: 1 reused, 0 run, 0 failed, 0 lost" in err, err
    status, err = command(capsys, *grid_args(demo_tiny_root, tmp_path, "ok-ehr", "--epochs", 2))
    assert status == 0 and "grid: 0 reused, 1 run, 0 failed, 0 lost" in err, err
    assert "settings changed:" in err
    board = load_leaderboard(board_path)
    assert {e["result"]["identity"]["fields"]["overrides"]["epochs"]
            for e in board["entries"]} == {2}
    assert {e["result"]["identity"]["fields"]["overrides"]["epochs"]
            for e in board["other_entries"]} == {1}  # kept, shown apart
    # Other data (another image size: another fingerprint) and another preset: the ranked
    # entries change, nothing is dropped.
    status, err = command(capsys, *grid_args(demo_tiny_root, tmp_path, "ok-ehr", "--epochs", 1,
                                             "--image-size", 40))
    assert status == 0 and "grid: 0 reused, 1 run" in err, err
    board = load_leaderboard(board_path)
    assert len(board["entries"]) == 2 and len(board["other_entries"]) == 4
    markdown = board_path.with_suffix(".md").read_text()
    assert markdown.count("### data fingerprint") == 2


@pytest.mark.slow
def test_a_new_method_merged_next_to_the_built_ins_gets_its_difference_without_retraining(
        demo_tiny_root, tmp_path, capsys):
    """CONTRIBUTING's path: the committed board (built by the grid, predictions beside it),
    a run of the new method, its result files merged; then the documented grid command with
    the new method and the reference must not shrink the board."""
    status, err = command(capsys, *grid_args(demo_tiny_root, tmp_path, "uni-ehr,ok-ehr",
                                             "--epochs", 1))
    assert status == 0, err
    committed = tmp_path / "clone"  # the board as committed: no run folders beside it
    shutil.copytree(tmp_path / "leaderboards", committed / "leaderboards")
    board_path = committed / "leaderboards" / "demo" / f"{IHM}.json"
    before = load_leaderboard(board_path)
    assert all(e["predictions"] for e in before["entries"])
    out = tmp_path / "mine"
    status, err = command(capsys, "run", "--task", IHM, "--method", "kill-ehr", "--data-root",
                          demo_tiny_root, "--out", out, "--preset", "quick", "--epochs", 1,
                          "--n-resamples", "20")
    assert status == 0, err
    for cohort in ("paired", "partial"):
        status, err = command(capsys, "leaderboard", "merge",
                              folder_of(out, "kill-ehr") / f"result-{cohort}.json",
                              "--leaderboard-file", board_path)
        assert status == 0 and "other data or settings" not in err, err
    after = load_leaderboard(board_path)
    mine = [e for e in after["entries"] if e["method"] == "kill-ehr"]
    assert len(after["entries"]) == len(before["entries"]) + 2 and len(mine) == 2
    assert all(e["difference_to_reference"] is not None for e in mine)
    assert not [p for p in board_path.parent.rglob("*") if p.name.endswith(".lock")]
    markdown = board_path.with_suffix(".md").read_text()
    assert "kill-ehr" in markdown
    # `fusebench leaderboard --methods my-method,uni-ehr` next to the committed board
    status, err = command(capsys, "leaderboard", "--methods", "kill-ehr,uni-ehr", "--tasks", IHM,
                          "--data-root", demo_tiny_root, "--out", out,
                          "--leaderboard-dir", committed, "--preset", "quick", "--epochs", 1,
                          "--n-resamples", "20")
    assert status == 0, err
    final = load_leaderboard(board_path)
    assert len(final["entries"]) >= len(after["entries"])
    assert {e["method"] for e in final["entries"]} == {"uni-ehr", "ok-ehr", "kill-ehr"}


def test_stage_weights_are_keyed_by_the_presets_settings_not_its_name(monkeypatch, tmp_path):
    """A preset whose learning-rate scale changes must not reuse stage weights trained with the
    old scale (the quick preset's rates changed once: its name stayed 'quick')."""
    import dataclasses
    from types import SimpleNamespace

    from fusebench import presets
    from fusebench.registry import load_registry
    from fusebench.runner import RunRequest, stage_weights_path

    stage = load_registry().stage("ehr-uni")
    data = SimpleNamespace(fingerprint="f" * 64, radiology_fingerprint="r" * 64)
    request = RunRequest(task="phenotyping", method="medfuse", preset="quick", out=tmp_path)
    before = stage_weights_path(stage, request, data, 48)
    assert stage_weights_path(stage, request, data, 48) == before
    changed = dataclasses.replace(presets.PRESETS["quick"], lr_scale=4.0)
    monkeypatch.setitem(presets.PRESETS, "quick", changed)
    assert stage_weights_path(stage, request, data, 48) != before
