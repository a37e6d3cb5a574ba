"""End to end on the tiny demo data: run, resume after SIGKILL, determinism, score, leaderboard grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from fusebench import leaderboard
from fusebench.cli import cli, main
from fusebench.data import DataConfig, prepare
from fusebench.leaderboard import load_leaderboard
from fusebench.metrics import score_predictions
from fusebench.plugins.encoders import CXR_STAGE, EHR_STAGE
from fusebench.registry import load_registry
from fusebench.runner import RunRequest, pretrain

PLUGIN = "tests.fixtures.faulty_methods"
ROOT = Path(__file__).resolve().parents[1]
IHM = "in-hospital-mortality"


def fusebench(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real console entry point in a child process (so it can be killed)."""
    command = [sys.executable, "-m", "fusebench", "--plugin", PLUGIN, *args]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, **(env or {})})
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{process.stderr[-3000:]}")
    return process


def run_args(data: Path, out: Path, method: str = "kill-ehr", *extra: str) -> list[str]:
    return ["run", "--task", IHM, "--method", method, "--data-root", str(data), "--out", str(out),
            "--preset", "quick", "--n-resamples", "50", *extra]


def run_folder(out: Path, method: str = "kill-ehr", cohort: str = "partial") -> Path:
    return out / "demo" / IHM / method / cohort / "seed0"


def test_run_writes_valid_results_for_both_test_cohorts(demo_tiny_root, tmp_path):
    result = CliRunner().invoke(cli, ["--plugin", PLUGIN, *run_args(demo_tiny_root, tmp_path)])
    assert result.exit_code == 0, result.output
    folder = run_folder(tmp_path)
    for cohort in ("paired", "partial"):
        record = json.loads((folder / f"result-{cohort}.json").read_text())
        predictions = pd.read_csv(folder / f"predictions-{cohort}.csv")
        assert record["test_cohort"]["n"] == len(predictions) == predictions["stay_id"].nunique()
        assert record["train_cohort"] == "partial" and record["cxr_window"] == "48h"
        assert 0 <= record["metrics"]["auroc"]["macro"]["value"] <= 1
    paired = pd.read_csv(folder / "predictions-paired.csv")
    partial = pd.read_csv(folder / "predictions-partial.csv")
    assert set(paired["stay_id"]) < set(partial["stay_id"])  # paired test stays are a subset
    check = CliRunner().invoke(cli, ["results", "validate", str(folder / "result-paired.json")])
    assert check.exit_code == 0, check.output


@pytest.mark.slow
def test_sigkill_during_an_epoch_then_resume_matches_an_uninterrupted_run(demo_tiny_root, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    fusebench(*run_args(demo_tiny_root, clean))
    dying = fusebench(*run_args(demo_tiny_root, killed), env={"FUSEBENCH_TEST_KILL_AT_BATCH": "5"},
                      check=False)
    assert dying.returncode == -9
    folder = run_folder(killed)
    assert (folder / "checkpoint.pt").exists() and not (folder / "result-paired.json").exists()
    fusebench(*run_args(demo_tiny_root, killed, "kill-ehr", "--resume"))
    for cohort in ("paired", "partial"):
        name = f"predictions-{cohort}.csv"
        pd.testing.assert_frame_equal(pd.read_csv(run_folder(clean) / name),
                                      pd.read_csv(folder / name))


@pytest.mark.slow
def test_same_seed_gives_identical_predictions(demo_tiny_root, tmp_path):
    for out in ("a", "b"):
        fusebench(*run_args(demo_tiny_root, tmp_path / out, "kill-ehr", "--epochs", "1"))
    name = "predictions-partial.csv"
    assert (run_folder(tmp_path / "a") / name).read_bytes() == (run_folder(tmp_path / "b") / name).read_bytes()


@pytest.mark.slow
def test_score_command_matches_the_result_file(demo_tiny_root, tmp_path):
    fusebench(*run_args(demo_tiny_root, tmp_path, "kill-ehr", "--epochs", "1"))
    folder = run_folder(tmp_path)
    scored = CliRunner().invoke(cli, ["score", str(folder / "predictions-paired.csv"), "--task", IHM,
                                      "--n-resamples", "50", "--json"])
    assert scored.exit_code == 0, scored.output
    recorded = json.loads((folder / "result-paired.json").read_text())["metrics"]["auroc"]["macro"]
    assert json.loads(scored.stdout)["auroc"]["macro"] == recorded


@pytest.mark.parametrize("args, message", [
    (["run", "--task", IHM, "--method", "medfus"], "did you mean medfuse"),
    (["run", "--task", "mortality", "--method", "uni-ehr"], "unknown task"),
    (["run", "--task", IHM, "--method", "uni-ehr", "--epochs", "0"], "--epochs"),
    (["run", "--task", IHM, "--method", "uni-ehr", "--data-root", "/nonexistent/x"], "/nonexistent/x"),
    (["run", "--task", IHM, "--method", "early", "--train-cohort", "partial"], "trains on paired"),
])
def test_bad_input_is_one_line_without_traceback(args, message, capsys):
    # In this process through the console entry point (the command's own error handling): a
    # child process would spend ~6 s CPU loading torch and the plugins per case.
    # test_reliability.py::test_debug_shows_the_traceback covers the process boundary.
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    stderr = capsys.readouterr().err
    assert message in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_leaderboard_grid_records_failures_goes_on_and_resumes(demo_tiny_root, tmp_path):
    args = ["leaderboard", "--methods", "kill-ehr,nan-ehr,raise-ehr", "--tasks", IHM,
            "--data-root", str(demo_tiny_root), "--out", str(tmp_path / "runs"),
            "--leaderboard-dir", str(tmp_path), "--preset", "quick", "--epochs", "1",
            "--n-resamples", "50"]
    first = fusebench(*args)
    board = load_leaderboard(tmp_path / "leaderboards" / "demo" / f"{IHM}.json")
    entries = {(e["method"], e["train_cohort"], e["test_cohort"]) for e in board["entries"]}
    assert entries == {("kill-ehr", c, t) for c in ("partial", "paired") for t in ("paired", "partial")}
    failed = {(f["method"], f["train_cohort"]): f["error"] for f in board["failed"]}
    assert "NaN" in failed[("nan-ehr", "partial")]
    assert "broken on purpose" in failed[("raise-ehr", "paired")]
    assert "failed:" in first.stderr
    markdown = (tmp_path / "leaderboards" / "demo" / f"{IHM}.md").read_text()
    assert "## Failed runs" in markdown and "kill-ehr" in markdown
    again = fusebench(*args)
    assert again.stderr.count("done already") == 2  # kill-ehr on both cohorts; failures retried


@pytest.mark.slow
def test_the_radiology_stage_runs_once_for_both_tasks(demo_tiny_root, tmp_path):
    registry = load_registry()
    config = DataConfig(ehr_root=demo_tiny_root / "ehr", cxr_root=demo_tiny_root / "cxr",
                        image_size=32, cache_dir=tmp_path / "cache")
    weights, saved = {}, None
    for task in (IHM, "phenotyping"):
        data = prepare(config, registry.task(task), progress=False)
        request = RunRequest(task=task, method="medfuse", preset="quick",
                             overrides={"epochs": 1}, out=tmp_path / "runs")
        weights[task] = pretrain(registry, request, data, stages=[CXR_STAGE])[CXR_STAGE]
        files = list((tmp_path / "runs" / "stages").rglob("*.pt"))
        assert len(files) == 1 and files[0].parent.name.startswith("images-")
        stat = files[0].stat()
        assert saved is None or (stat.st_ino, stat.st_mtime_ns) == saved  # loaded, not rewritten
        saved = (stat.st_ino, stat.st_mtime_ns)
    for key, value in weights[IHM].items():
        assert torch.equal(value, weights["phenotyping"][key]), key
    per_task = pretrain(registry, request, data, stages=[EHR_STAGE])
    assert per_task and len(list((tmp_path / "runs" / "stages").rglob("*.pt"))) == 2
    assert (tmp_path / "runs" / "stages" / data.fingerprint[:16]).is_dir()


@pytest.mark.slow
def test_leaderboard_rebuilds_compute_each_paired_difference_once(demo_tiny_root, tmp_path,
                                                                   monkeypatch):
    fusebench("leaderboard", "--methods", "uni-ehr,kill-ehr", "--tasks", IHM, "--data-root",
              str(demo_tiny_root), "--out", str(tmp_path / "runs"), "--leaderboard-dir",
              str(tmp_path), "--preset", "quick", "--epochs", "1", "--n-resamples", "50")
    path = tmp_path / "leaderboards" / "demo" / f"{IHM}.json"
    written = load_leaderboard(path)
    computed = []
    monkeypatch.setattr(leaderboard, "score_predictions",
                        lambda *a, **k: computed.append(1) or score_predictions(*a, **k))
    monkeypatch.setattr(leaderboard, "_known_differences", {})

    def rebuild() -> dict:
        return leaderboard.rebuild_leaderboard(
            path, runs=tmp_path / "runs", task=load_registry().task(IHM),
            dataset=written["dataset"], preset="quick", overrides={"epochs": 1},
            n_resamples=50)

    first = rebuild()
    assert len(computed) == len(written["entries"]) == 8  # 2 methods x 2 train x 2 test cohorts
    second = rebuild()
    assert len(computed) == 8  # nothing recomputed
    for board in (first, second):
        assert [e["difference_to_reference"] for e in board["entries"]] == [
            e["difference_to_reference"] for e in written["entries"]]
