"""Reliability (issue 9): killed jobs, concurrent writers, damaged files, broken plugins, bad input.

Most tests drive the console entry point on the tiny demo data: in a child process where it must
be killed or must race another one, in this process otherwise (same code, no start-up cost).
Kills are deterministic: a fixture method SIGKILLs its own process at a training batch, or a small
wrapper around the entry point SIGKILLs the process at the moment a given file is about to be
atomically replaced (``os.replace``), which is the instant a dying writer leaves the most behind
(a complete temporary file, a held lock, a checksum that no longer matches the data on disk).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from fusebench.checkpoints import load_checkpoint, save_checkpoint
from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_json
from fusebench.leaderboard import load_leaderboard, merge_result
from fusebench.registry import extra_plugins, set_extra_plugins
from fusebench.results import read_result, write_result
from tests.fixtures.cli import fusebench_in_process

try:  # tests/ may or may not be a package
    from tests.test_data_helpers import make_dataset
    from tests.test_results import make_result
except ImportError:
    from test_data_helpers import make_dataset
    from test_results import make_result

PLUGIN = "tests.fixtures.faulty_methods"
ROOT = Path(__file__).resolve().parents[1]
IHM = "in-hospital-mortality"
KILLED = -9  # returncode of a child that died of SIGKILL

# Runs the console entry point after making os.replace SIGKILL the process when it is about to
# replace a file named argv[1] with content holding argv[2], on the argv[3]-th such replacement.
KILL_ON_REPLACE = """
import os, signal, sys
name, marker, count = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
real_replace, seen = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == name:
        with open(src, "rb") as stream:
            if marker in stream.read():
                seen[0] += 1
                if seen[0] == count:
                    os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
from fusebench.cli import main
main(sys.argv[4:])
"""


@pytest.fixture(autouse=True)
def _restore_plugins():
    """In-process runs load the fixture plugin; later tests must not see it."""
    before = extra_plugins()
    yield
    set_extra_plugins(before)


def fusebench(*args: str, env: dict | None = None, check: bool = True,
              kill_on_replace: tuple[str, str, int] | None = None,
              **popen: object) -> subprocess.CompletedProcess:
    """The real console entry point in a child process (``python -m fusebench``)."""
    if kill_on_replace is None:
        command = [sys.executable, "-m", "fusebench"]
    else:
        name, marker, count = kill_on_replace
        command = [sys.executable, "-c", KILL_ON_REPLACE, name, marker, str(count)]
    process = subprocess.run([*command, "--plugin", PLUGIN, *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=300, env={**os.environ, **(env or {})}, **popen)
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({process.returncode}):\n"
                             f"{process.stderr[-3000:]}")
    return process


in_process = fusebench_in_process


def in_process_ok(capsys: pytest.CaptureFixture, *args: object) -> str:
    status, err = in_process(capsys, *args)
    assert status == 0, err[-3000:]
    return err


def grid_args(data: Path, tmp: Path, methods: str, out: str = "runs") -> list[str]:
    return ["leaderboard", "--methods", methods, "--tasks", IHM, "--data-root", str(data),
            "--out", str(tmp / out), "--leaderboard-dir", str(tmp), "--preset", "quick",
            "--epochs", "1", "--n-resamples", "50"]


def run_args(data: Path, out: Path, method: str, *extra: str) -> list[str]:
    return ["run", "--task", IHM, "--method", method, "--data-root", str(data), "--out", str(out),
            "--preset", "quick", "--n-resamples", "50", *extra]


def run_folder(out: Path, method: str, cohort: str = "partial") -> Path:
    return out / "demo" / IHM / method / cohort / "seed0"


def board_path(tmp: Path) -> Path:
    return tmp / "leaderboards" / "demo" / f"{IHM}.json"


def board_entries(tmp: Path) -> set[tuple[str, str, str]]:
    board = load_leaderboard(board_path(tmp))  # validates every entry's result
    return {(e["method"], e["train_cohort"], e["test_cohort"]) for e in board["entries"]}


def both(method: str, *cohorts: str) -> set[tuple[str, str, str]]:
    """Entries of ``method`` trained on ``cohorts``, tested on both test cohorts."""
    return {(method, c, t) for c in cohorts for t in ("paired", "partial")}


def result_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("result-*.json"))}


# --- a killed grid -----------------------------------------------------------------------------

@pytest.mark.parametrize("kill", ["during-training", "during-leaderboard-write"])
@pytest.mark.slow
def test_killed_grid_keeps_leaderboard_and_finished_results_then_resumes(demo_tiny_root,
                                                                        tmp_path, capsys, kill):
    """ok-ehr (1 entry) then kill-ehr (partial, paired). The grid dies in its 2nd entry's epoch,
    or while replacing the leaderboard with the one that adds the 2nd entry."""
    args = grid_args(demo_tiny_root, tmp_path, "ok-ehr,kill-ehr")
    runs = tmp_path / "runs"
    if kill == "during-training":
        dying = fusebench(*args, env={"FUSEBENCH_TEST_KILL_AT_BATCH": "2"}, check=False)
    else:
        dying = fusebench(*args, kill_on_replace=(board_path(tmp_path).name, '"kill-ehr"', 1),
                          check=False)
    assert dying.returncode == KILLED, dying.stderr[-2000:]

    # The leaderboard on disk is the valid one written before the kill: ok-ehr only.
    assert board_entries(tmp_path) == both("ok-ehr", "partial")
    assert "ok-ehr" in board_path(tmp_path).with_suffix(".md").read_text()
    strays = list(board_path(tmp_path).parent.glob(f".{board_path(tmp_path).name}.*.tmp"))
    finished = {"ok-ehr": result_bytes(run_folder(runs, "ok-ehr"))}
    if kill == "during-leaderboard-write":
        # It died holding the lock with the next leaderboard complete but not yet in place.
        assert len(strays) == 1 and b'"kill-ehr"' in strays[0].read_bytes()
        finished["kill-ehr"] = result_bytes(run_folder(runs, "kill-ehr"))
    else:
        assert not strays and not result_bytes(run_folder(runs, "kill-ehr"))
    for method, files in finished.items():
        assert len(files) == 2
        for name in files:
            read_result(run_folder(runs, method) / name)  # intact and valid

    again = in_process_ok(capsys, *args)
    assert again.count("done already") == len(finished), again
    assert board_entries(tmp_path) == both("ok-ehr", "partial") | both("kill-ehr", "partial",
                                                                       "paired")
    markdown = board_path(tmp_path).with_suffix(".md").read_text()
    assert "ok-ehr" in markdown and "kill-ehr" in markdown
    for method, files in finished.items():  # finished work is kept, not recomputed
        assert result_bytes(run_folder(runs, method)) == files


def test_damaged_result_file_makes_the_grid_rerun_that_entry(demo_tiny_root, tmp_path, capsys):
    args = grid_args(demo_tiny_root, tmp_path, "ok-ehr")
    in_process_ok(capsys, *args)
    damaged = run_folder(tmp_path / "runs", "ok-ehr") / "result-partial.json"
    damaged.write_text(damaged.read_text()[:150])  # a truncated copy, a disk error
    again = in_process_ok(capsys, *args)
    assert "done already" not in again and "finished:" in again
    read_result(damaged)
    assert board_entries(tmp_path) == both("ok-ehr", "partial")


# --- concurrent writers ------------------------------------------------------------------------

def _blocked_on_flock(pids: set[int]) -> set[int]:
    """Which of ``pids`` wait for the lock. filelock polls (a non-blocking flock, then a sleep),
    and nothing else on a merge's path sleeps, so a waiting merge's main thread sleeps in the
    kernel's ``hrtimer_nanosleep``; seen twice in a row to skip a sleep of start-up."""
    def sleeping() -> set[int]:
        found = set()
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/wchan").read_text().strip() == "hrtimer_nanosleep":
                    found.add(pid)
            except OSError:
                continue
        return found

    first = sleeping()
    time.sleep(0.2)
    return first & sleeping()


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc/PID/wchan")
@pytest.mark.slow
def test_concurrent_merge_commands_wait_for_the_lock_and_keep_every_entry(tmp_path):
    """Two `leaderboard merge` processes are made to overlap for certain: the test holds the
    leaderboard's lock until both are blocked on it, and meanwhile adds an entry itself, which a
    merge that read the leaderboard before taking the lock would drop."""
    board = tmp_path / "board.json"
    files = {}
    for name in ("first", "held", "merge-a", "merge-b"):
        files[name] = tmp_path / f"{name}.json"
        write_result(files[name], make_result(name))
    merge_result(board, files["first"])
    lock = open(board.parent / f".{board.name}.lock", "a")  # noqa: SIM115 - held below
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merges = [subprocess.Popen([sys.executable, "-m", "fusebench", "leaderboard", "merge",
                                    str(files[name]), "--leaderboard-file", str(board)],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for name in ("merge-a", "merge-b")]
        pids = {p.pid for p in merges}
        deadline = time.monotonic() + 120  # a bound on waiting, not a timing assertion
        while _blocked_on_flock(pids) != pids:
            exited = [Path(p.args[5]).stem for p in merges if p.poll() is not None]
            assert not exited, f"merge of {exited} finished without waiting for the lock"
            assert time.monotonic() < deadline, "the merges never blocked on the lock"
            time.sleep(0.05)
        scratch = tmp_path / "scratch.json"
        scratch.write_bytes(board.read_bytes())
        merge_result(scratch, files["held"])
        atomic_write_json(board, load_leaderboard(scratch))  # a writer inside the lock
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    for process in merges:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    methods = sorted(e["method"] for e in load_leaderboard(board)["entries"])
    assert methods == ["first", "held", "merge-a", "merge-b"]
    markdown = board.with_suffix(".md").read_text()
    assert all(name in markdown for name in methods)


@pytest.mark.slow
def test_two_grids_at_once_on_one_leaderboard_keep_both(demo_tiny_root, tmp_path):
    """Two grid processes with their own run folders write the same leaderboard at the same
    time (and build the same data cache at the same time)."""
    env = {**os.environ, "FUSEBENCH_CACHE": str(tmp_path / "cache")}
    grids = [subprocess.Popen([sys.executable, "-m", "fusebench", "--plugin", PLUGIN,
                               *grid_args(demo_tiny_root, tmp_path, method, out=f"runs-{method}")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for method in ("ok-ehr", "kill-ehr")]
    for grid in grids:
        _, stderr = grid.communicate(timeout=300)
        assert grid.returncode == 0, stderr[-3000:]
    assert board_entries(tmp_path) == both("ok-ehr", "partial") | both("kill-ehr", "partial",
                                                                       "paired")


def test_full_disk_while_merging_leaves_the_leaderboard_intact_and_says_what_to_do(tmp_path):
    """A merge that cannot write (file size limit: the process sees EFBIG, as it would ENOSPC)."""
    board = tmp_path / "board.json"
    for name in ("first", "second"):
        write_result(tmp_path / f"{name}.json", make_result(name))
    merge_result(board, tmp_path / "first.json")
    before = board.read_bytes(), board.with_suffix(".md").read_bytes()
    limit = len(before[0]) + 64

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = fusebench("leaderboard", "merge", str(tmp_path / "second.json"),
                        "--leaderboard-file", str(board), check=False, preexec_fn=small_disk)
    assert process.returncode == 2, process.stderr
    message = process.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert str(board) in message and "rerun" in message
    assert (board.read_bytes(), board.with_suffix(".md").read_bytes()) == before
    assert not list(tmp_path.glob(".board.*.tmp"))


# --- damaged and interrupted checkpoints -------------------------------------------------------

@pytest.mark.slow
def test_damaged_checkpoint_met_by_resume_is_one_line_with_the_way_out(demo_tiny_root, tmp_path,
                                                                       capsys):
    args = run_args(demo_tiny_root, tmp_path, "kill-ehr", "--epochs", "2")
    dying = fusebench(*args, env={"FUSEBENCH_TEST_KILL_AT_BATCH": "3"}, check=False)  # epoch 2
    assert dying.returncode == KILLED
    checkpoint = run_folder(tmp_path, "kill-ehr") / "checkpoint.pt"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    status, err = in_process(capsys, *args, "--resume")
    assert status == 2
    message = err.strip()
    assert "\n" not in message and "Traceback" not in message
    assert str(checkpoint) in message and "damaged" in message
    assert "delete" in message and "without --resume" in message
    assert not list(checkpoint.parent.glob("result-*.json"))
    in_process_ok(capsys, *args)  # the way out works
    assert len([read_result(p) for p in checkpoint.parent.glob("result-*.json")]) == 2


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_then_resume_matches_an_uninterrupted_run(
        demo_tiny_root, tmp_path, capsys):
    """Killed between the checkpoint's checksum file and its data (epoch 2's save): the epoch 1
    checkpoint on disk must still be accepted, not reported as damaged."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    in_process_ok(capsys, *run_args(demo_tiny_root, clean, "ok-ehr", "--epochs", "2"))
    args = run_args(demo_tiny_root, killed, "ok-ehr", "--epochs", "2")
    dying = fusebench(*args, kill_on_replace=("checkpoint.pt", "", 2), check=False)
    assert dying.returncode == KILLED
    checkpoint = run_folder(killed, "ok-ehr") / "checkpoint.pt"
    sidecar = json.loads(checkpoint.with_name("checkpoint.pt.sha256.json").read_text())
    assert sidecar["sha256"] != hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    in_process_ok(capsys, *args, "--resume")
    for cohort in ("paired", "partial"):
        name = f"predictions-{cohort}.csv"
        pd.testing.assert_frame_equal(pd.read_csv(run_folder(clean, "ok-ehr") / name),
                                      pd.read_csv(run_folder(killed, "ok-ehr") / name))


def test_crash_between_checksum_and_data_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import fusebench.checkpoints as checkpoints

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    real_write = checkpoints.atomic_write_bytes

    def crash(target: Path, data: bytes) -> None:
        raise KeyboardInterrupt  # the process dies before the new data replaces the old

    monkeypatch.setattr(checkpoints, "atomic_write_bytes", crash)
    for epoch in (2, 3):  # crashed twice in a row, resuming from epoch 1 each time
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"epoch": epoch})
        assert load_checkpoint(path) == {"epoch": 1}
    monkeypatch.setattr(checkpoints, "atomic_write_bytes", real_write)
    save_checkpoint(path, {"epoch": 4})
    assert load_checkpoint(path) == {"epoch": 4}
    other = tmp_path / "other.pt"  # bytes no checksum ever vouched for are still refused
    save_checkpoint(other, {"epoch": 1, "weights": torch.zeros(3)})
    path.write_bytes(other.read_bytes())
    with pytest.raises(FusebenchError, match="damaged"):
        load_checkpoint(path)


# --- broken plugins ----------------------------------------------------------------------------

def test_wrong_output_shape_is_recorded_as_failed_and_the_grid_goes_on(demo_tiny_root, tmp_path,
                                                                        capsys):
    err = in_process_ok(capsys, *grid_args(demo_tiny_root, tmp_path,
                                           "shape-ehr,eval-shape-ehr,ok-ehr"))
    assert err.count("failed:") == 2
    board = load_leaderboard(board_path(tmp_path))
    assert board_entries(tmp_path) == both("ok-ehr", "partial")
    failed = {f["method"]: f["error"] for f in board["failed"]}
    assert set(failed) == {"shape-ehr", "eval-shape-ehr"}
    assert "size" in failed["shape-ehr"]  # torch's loss refuses (B, 2) logits for (B, 1) labels
    assert "shape" in failed["eval-shape-ehr"] and "expected (B, 1)" in failed["eval-shape-ehr"]
    for method in failed:  # nothing that looks like a result is left behind
        assert not list(run_folder(tmp_path / "runs", method).glob("result-*.json"))


# --- bad command-line input --------------------------------------------------------------------

BAD_INPUT = {
    "run --out under a file": (["run", "--task", IHM, "--method", "ok-ehr", "--data-root", "{data}",
                                "--out", "{file}/runs"], "not writable"),
    "leaderboard --out under a file": (["leaderboard", "--methods", "ok-ehr", "--data-root",
                                        "{data}", "--out", "{file}/runs"], "not writable"),
    "leaderboard --leaderboard-dir under a file": (
        ["leaderboard", "--methods", "ok-ehr", "--data-root", "{data}", "--out", "{tmp}/runs",
         "--leaderboard-dir", "{file}/boards"], "not writable"),
    "score --n-resamples 0": (["score", "--n-resamples", "0", "{file}", "--task", IHM],
                              "--n-resamples"),
    "leaderboard --seeds 0": (["leaderboard", "--seeds", "0", "--methods", "ok-ehr"], "--seeds"),
    "run --seed -1": (["run", "--seed", "-1", "--task", IHM, "--method", "ok-ehr"], "--seed"),
    "run --lr 0": (["run", "--lr", "0", "--task", IHM, "--method", "ok-ehr"], "--lr"),
    "leaderboard unknown method": (["leaderboard", "--methods", "ok-eh", "--tasks", IHM,
                                    "--data-root", "{data}", "--out", "{tmp}/runs"],
                                   "did you mean ok-ehr"),
    "leaderboard unknown task": (["leaderboard", "--methods", "ok-ehr", "--tasks",
                                  "in-hospital-mortalty", "--data-root", "{data}", "--out",
                                  "{tmp}/runs"], "did you mean in-hospital-mortality"),
    "leaderboard missing data root": (["leaderboard", "--methods", "ok-ehr", "--data-root",
                                       "/nonexistent/x"], "/nonexistent/x"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_without_traceback(case, demo_tiny_root, tmp_path, capsys):
    args, expected = BAD_INPUT[case]
    a_file = tmp_path / "a-file.csv"
    a_file.write_text("stay_id,prob:y_true,true:y_true\n1,0.5,1\n2,0.5,0\n")
    places = {"data": demo_tiny_root, "file": a_file, "tmp": tmp_path}
    status, err = in_process(capsys, *(a.format(**places) for a in args))
    assert status != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if expected in line]
    assert len(lines) == 1 and "rror" in lines[0], err
    assert not list(tmp_path.glob("runs/demo/*"))  # refused before any work


def test_debug_shows_the_traceback():
    process = fusebench("--debug", "run", "--task", IHM, "--method", "medfus", check=False)
    assert process.returncode != 0
    assert "Traceback" in process.stderr and "did you mean medfuse" in process.stderr


# --- security ----------------------------------------------------------------------------------

class _Payload:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickled_result_file_is_refused_and_never_unpickled(tmp_path, capsys):
    marker, evil = tmp_path / "unpickled", tmp_path / "result.json"
    evil.write_bytes(pickle.dumps({"schema_version": 1, "x": _Payload(marker)}))
    board = tmp_path / "board.json"
    status, err = in_process(capsys, "leaderboard", "merge", evil, "--leaderboard-file", board)
    assert status == 2 and "not valid JSON" in err and "rerun" in err
    status, err = in_process(capsys, "results", "validate", evil)
    assert status == 2 and "not valid JSON" in " ".join(err.split())
    assert not marker.exists() and not board.exists()


def test_checkpoint_that_would_run_code_is_refused_and_never_unpickled(tmp_path):
    marker, path = tmp_path / "unpickled", tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "model": _Payload(marker)})  # valid checksum
    with pytest.raises(FusebenchError, match="cannot be loaded"):
        load_checkpoint(path)
    assert not marker.exists()


def test_merge_command_keeps_a_result_from_other_data_apart_and_says_so(tmp_path, capsys):
    board = tmp_path / "board.json"
    write_result(tmp_path / "a.json", make_result("acme"))
    write_result(tmp_path / "b.json", make_result("beta", fingerprint="e" * 64))
    merge_result(board, tmp_path / "a.json")
    status, err = in_process(capsys, "leaderboard", "merge", tmp_path / "b.json",
                             "--leaderboard-file", board)
    assert status == 0 and "other data or settings" in err
    written = load_leaderboard(board)
    assert [e["method"] for e in written["entries"]] == ["acme"]
    assert [e["method"] for e in written["other_entries"]] == ["beta"]


def test_image_paths_from_the_metadata_stay_inside_the_data_root(tmp_path):
    from fusebench.data import DataConfig, prepare
    from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY

    ehr, cxr = make_dataset(tmp_path / "data")
    metadata = cxr / "mimic-cxr-2.0.0-metadata.csv"
    frame = pd.read_csv(metadata, dtype=str)
    outside = tmp_path / "outside.jpg"  # a readable image outside the data root
    outside.write_bytes((cxr / "resized" / f"{frame.loc[0, 'dicom_id']}.jpg").read_bytes())
    frame.loc[0, "dicom_id"] = "../../../outside"
    frame.to_csv(metadata, index=False)
    with pytest.raises(FusebenchError, match="outside"):
        prepare(DataConfig(ehr, cxr, image_size=16, cache_dir=tmp_path / "cache"),
                IN_HOSPITAL_MORTALITY, progress=False)
