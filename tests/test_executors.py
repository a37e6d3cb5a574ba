"""Executors of the leaderboard grid: local processes, SLURM (submitit's local cluster), Ray, and
an executor registered by an outside plugin; shared stages once; a killed worker loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from fusebench.cli import main
from fusebench.data import DataConfig
from fusebench.executors import ExecutorSettings, GridJob
from fusebench.executors import local as local_executor
from fusebench.grid import _recorded_seconds, _stage_jobs, _waves
from fusebench.leaderboard import load_leaderboard
from fusebench.registry import load_registry
from fusebench.runner import RunRequest
from tests.fixtures import worker_probe

ROOT = Path(__file__).resolve().parents[1]
IHM = "in-hospital-mortality"
PLUGINS = ["--plugin", "tests.fixtures.faulty_methods", "--plugin", "tests.fixtures.inline_executor"]


def leaderboard(data: Path, folder: Path, *options: str, methods: str = "uni-ehr",
                env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``fusebench leaderboard`` on the tiny demo data, run from the repository (for the plugins)."""
    command = [sys.executable, "-m", "fusebench", *PLUGINS, "leaderboard", "--methods",
               methods, "--tasks", IHM, "--data-root", str(data), "--out", str(folder / "runs"),
               "--leaderboard-dir", str(folder), "--preset", "quick", "--epochs", "1",
               "--n-resamples", "50", *options]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400,
                             env={**os.environ, **(env or {})})
    if check and process.returncode != 0:
        raise AssertionError(f"leaderboard {' '.join(options)} failed:\n{process.stderr[-3000:]}")
    return process


def board_of(folder: Path) -> dict:
    board = load_leaderboard(folder / "leaderboards" / "demo" / f"{IHM}.json")
    assert board is not None
    return board


def metrics_by_entry(folder: Path) -> dict[tuple, tuple[float, float]]:
    """(method, train cohort, test cohort) -> (macro AUROC, macro AUPRC)."""
    return {
        (e["method"], e["train_cohort"], e["test_cohort"]):
            (e["result"]["metrics"]["auroc"]["macro"]["value"],
             e["result"]["metrics"]["auprc"]["macro"]["value"])
        for e in board_of(folder)["entries"]
    }


@pytest.fixture(scope="module")
def local_grid(demo_tiny_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("local-grid")
    leaderboard(demo_tiny_root, folder)
    return folder


def same_leaderboard(folder: Path, reference: Path) -> None:
    """Same entries with the same metrics. Workers may use fewer torch threads than the
    in-process run, which changes float rounding but not the rank-based metrics (to 1e-6)."""
    ours, theirs = metrics_by_entry(folder), metrics_by_entry(reference)
    assert ours.keys() == theirs.keys() and len(ours) == 4
    for key, values in theirs.items():
        assert ours[key] == pytest.approx(values, abs=1e-6), key


def test_builtin_executors_register_through_the_entry_point_group():
    registry = load_registry()
    assert {"local", "slurm", "ray"} <= set(registry.executors)
    assert registry.executor("slurm").distribution == "fusebench"


def test_shared_pretraining_stages_become_one_job_per_task_seed_and_stage():
    registry = load_registry()
    jobs = [GridJob("run", RunRequest(task=IHM, method=m, train_cohort="paired", seed=seed),
                    DataConfig(Path("ehr"), Path("cxr")))
            for m in ("early", "joint", "mmtm", "uni-ehr") for seed in (0, 1)]
    stage_jobs = _stage_jobs(registry, jobs)
    assert sorted((j.stage, j.request.seed) for j in stage_jobs) == [
        ("cxr-radiology", 0), ("cxr-radiology", 1), ("ehr-uni", 0), ("ehr-uni", 1)]
    assert all(j.kind == "stage" for j in stage_jobs)


def test_a_stage_every_task_shares_is_one_job_per_seed():
    registry = load_registry()
    jobs = [GridJob("run", RunRequest(task=task, method="medfuse"),
                    DataConfig(Path("ehr"), Path("cxr"))) for task in (IHM, "phenotyping")]
    stage_jobs = _stage_jobs(registry, jobs)
    assert sorted((j.stage, j.request.task) for j in stage_jobs) == [
        ("cxr-radiology", IHM), ("ehr-uni", IHM), ("ehr-uni", "phenotyping")]


def test_grid_waves_run_stages_beside_stage_free_entries_longest_first():
    registry = load_registry()
    jobs = [GridJob("run", RunRequest(task=IHM, method=m, train_cohort=c), DataConfig(
        Path("ehr"), Path("cxr"))) for m, c in [("uni-ehr", "paired"), ("medfuse", "partial"),
                                                 ("uni-ehr", "partial"), ("early", "paired")]]
    hours = {"paired": 10, "partial": 100}
    data = {IHM: SimpleNamespace(cohort=lambda split, cohort: SimpleNamespace(
        ehr_hours=hours[cohort]))}
    first, second = _waves(registry, _stage_jobs(registry, jobs), jobs, data)
    assert [(j.kind, j.stage) for j in first[:2]] == [("stage", "cxr-radiology"),
                                                      ("stage", "ehr-uni")]
    assert [j.label for j in first[2:]] == [
        "uni-ehr on in-hospital-mortality (partial, seed 0)",
        "uni-ehr on in-hospital-mortality (paired, seed 0)"]
    assert [j.request.method for j in second] == ["medfuse", "early"]
    assert _waves(registry, [], jobs[:1], data) == [jobs[:1]]


def test_grid_waves_start_the_entries_a_board_timed_longest_after_the_untimed_ones():
    registry = load_registry()
    jobs = [GridJob("run", RunRequest(task=IHM, method=m, train_cohort=c, preset="quick"),
                    DataConfig(Path("ehr"), Path("cxr")))
            for m, c in [("uni-ehr", "paired"), ("uni-cxr", "paired"), ("late", "paired"),
                         ("uni-ehr", "partial")]]
    data = {IHM: SimpleNamespace(cohort=lambda split, cohort: SimpleNamespace(
        ehr_hours={"paired": 10, "partial": 100}[cohort]))}

    def entry(method: str, seconds: float, preset: str = "quick") -> dict:
        return {"method": method, "train_cohort": "paired",
                "result": {"preset": preset, "training": {"seconds": seconds}}}

    # uni-cxr's 900 s were at another preset: it counts as untimed, like uni-ehr partial
    boards = {IHM: {"entries": [entry("uni-ehr", 5.0), entry("late", 60.0)],
                    "other_entries": [entry("uni-cxr", 900.0, preset="paper"),
                                      entry("uni-ehr", 8.0)]}}
    recorded = _recorded_seconds(boards, "quick")
    assert recorded == {(IHM, "uni-ehr", "paired"): 8.0, (IHM, "late", "paired"): 60.0}
    [wave] = _waves(registry, [], jobs, data, recorded)
    assert [(j.request.method, j.request.train_cohort) for j in wave] == [
        ("uni-ehr", "partial"), ("uni-cxr", "paired"), ("late", "paired"), ("uni-ehr", "paired")]


@pytest.mark.slow
def test_slurm_executor_on_submitits_local_cluster_gives_the_local_leaderboard(
        demo_tiny_root, local_grid, tmp_path):
    leaderboard(demo_tiny_root, tmp_path, "--executor", "slurm", "--slurm-cluster",
                "local", "--slurm-time", "10")
    same_leaderboard(tmp_path, local_grid)
    logs = sorted((tmp_path / "runs" / "logs" / "slurm").glob("*_0_log.out"))
    assert len(logs) == 2  # one job, with its own log, per grid entry


@pytest.fixture
def ray_address():
    """A Ray head on loopback started for this test, stopped after it."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'fusebench[ray]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Ray's Unix sockets live under --temp-dir, whose path must stay short (108 bytes in all).
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    start = subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                            str(port), "--num-cpus", "2", "--include-dashboard", "false",
                            "--disable-usage-stats", "--temp-dir", temp],
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr[-2000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_executor_on_a_local_ray_instance_gives_the_local_leaderboard(
        demo_tiny_root, local_grid, tmp_path, ray_address):
    leaderboard(demo_tiny_root, tmp_path, "--executor", "ray", "--ray-address", ray_address)
    same_leaderboard(tmp_path, local_grid)


@pytest.mark.slow
def test_an_executor_from_an_outside_plugin_runs_the_grid(demo_tiny_root, local_grid, tmp_path):
    process = leaderboard(demo_tiny_root, tmp_path, "--executor", "inline-reversed")
    same_leaderboard(tmp_path, local_grid)
    ran = json.loads((tmp_path / "runs" / "inline-reversed.json").read_text())
    assert ran == ["uni-ehr on in-hospital-mortality (paired, seed 0)",
                   "uni-ehr on in-hospital-mortality (partial, seed 0)"]
    assert "finished: uni-ehr" in process.stderr


def digests(folder: Path, method: str) -> dict[str, str]:
    files = sorted((folder / "runs" / "demo" / IHM / method).glob("*/seed0/*-*.*"))
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.slow
def test_killed_worker_loses_no_finished_entry_and_a_rerun_completes_the_grid(
        demo_tiny_root, tmp_path):
    args = ("--executor", "local", "--jobs", "2", "--retries", "1")
    dying = leaderboard(demo_tiny_root, tmp_path, *args, methods="kill-ehr,uni-ehr",
                        env={"FUSEBENCH_TEST_KILL_AT_BATCH": "1"}, check=False)
    assert dying.returncode == 2
    assert dying.stderr.count("lost (worker died): kill-ehr") == 2
    assert "2 grid job(s) lost" in dying.stderr and "Traceback" not in dying.stderr
    assert {key[0] for key in metrics_by_entry(tmp_path)} == {"uni-ehr"}
    finished = digests(tmp_path, "uni-ehr")
    assert len(finished) == 8  # two runs x (two results + two predictions)

    again = leaderboard(demo_tiny_root, tmp_path, *args, methods="kill-ehr,uni-ehr")
    assert again.stderr.count("done already: uni-ehr") == 2
    assert digests(tmp_path, "uni-ehr") == finished
    assert {key[0] for key in metrics_by_entry(tmp_path)} == {"kill-ehr", "uni-ehr"}
    assert len(metrics_by_entry(tmp_path)) == 8


@pytest.mark.parametrize("options, message", [
    (("--executor", "slurmm"), "unknown executor 'slurmm': did you mean slurm"),
    (("--ray-address", "head:6379"), "--ray-address: belongs to another executor than "
                                     "--executor local"),
    (("--executor", "slurm", "--slurm-gpus", "two"), "'two' is not a valid integer"),
    (("--jobs", "0"), "--jobs"),
])
def test_bad_executor_input_is_a_one_line_error(demo_tiny_root, tmp_path, options, message,
                                                capsys):
    # In this process through the console entry point (the command's own error handling): a
    # child process would spend ~6 s CPU loading torch and the plugins per case.
    with pytest.raises(SystemExit) as exit_info:
        main(["leaderboard", "--methods", "uni-ehr", "--tasks", IHM, "--data-root",
              str(demo_tiny_root), "--out", str(tmp_path / "runs"), "--leaderboard-dir",
              str(tmp_path), "--preset", "quick", "--epochs", "1", *options])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "runs").exists()  # refused before any work


@pytest.mark.slow  # needs local_grid: a whole leaderboard run in a child process
def test_the_grid_saves_a_forest_plot_beside_the_tables(local_grid):
    pytest.importorskip("matplotlib")
    folder = local_grid / "leaderboards" / "demo"
    assert (folder / f"{IHM}.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / f"{IHM}.md").exists()


def test_local_workers_take_one_job_after_another(monkeypatch):
    monkeypatch.setattr(local_executor, "run_job", worker_probe.pid_of_worker)
    reported = []
    local_executor.run_local(["a", "b", "c", "d", "e"], ExecutorSettings(jobs=2),
                             reported.append)
    assert sorted(job for job, _ in reported) == ["a", "b", "c", "d", "e"]
    assert len({pid for _, pid in reported}) == 2  # two workers, not one per job


def test_a_dead_local_worker_is_replaced_and_its_job_retried_then_lost(monkeypatch):
    monkeypatch.setattr(local_executor, "run_job", worker_probe.pid_of_worker)
    reported = []
    local_executor.run_local(["a", "die", "b", "c"], ExecutorSettings(jobs=2, retries=1),
                             reported.append)
    finished = sorted(r[0] for r in reported if isinstance(r, tuple))
    lost = [r for r in reported if not isinstance(r, tuple)]
    assert finished == ["a", "b", "c"]
    assert [(o.job, o.status) for o in lost] == [("die", "lost")]
    assert "worker process died" in lost[0].reason
