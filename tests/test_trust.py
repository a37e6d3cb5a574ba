"""Results that are never silently stale or lost, and submissions that are checked (issue 15 A).

Unit-level: schema ranges and limits, Markdown escaping, confined paths, predictions checksums,
differences at merge, submissions kept across rebuilds, multi-seed rows, provenance, file modes,
orphaned temporaries, locks, content fingerprints.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fusebench import leaderboard as leaderboard_module
from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_bytes, file_lock, remove_orphaned_temporaries
from fusebench.leaderboard import (
    escape_cell,
    leaderboard_path,
    load_leaderboard,
    merge_result,
    rebuild_leaderboard,
    render_markdown,
    summary_rows,
)
from fusebench.metrics import score_predictions
from fusebench.predictions import BOOTSTRAP_SEED, read_predictions, write_predictions
from fusebench.registry import load_registry
from fusebench.results import harness_provenance, read_result, validate_result, write_result

try:  # tests/ may or may not be a package
    from tests.test_results import make_result
except ImportError:  # pragma: no cover
    from test_results import make_result

IHM = "in-hospital-mortality"


# ----------------------------------------------------------------------------- schema


def _set(path: str, value):
    def mutate(result: dict) -> None:
        *parents, last = path.split(".")
        node = result
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return mutate


def _fresh_result() -> dict:
    result = make_result()
    for metric in ("auroc", "auprc"):  # make_result shares one interval object: unshare it
        result["metrics"][metric] = copy.deepcopy(result["metrics"][metric])
    return result


@pytest.mark.parametrize("mutate, message", [
    (_set("metrics.auroc.macro.value", 1.7), "greater than the maximum of 1"),
    (_set("metrics.auroc.macro.value", -3), "less than the minimum of 0"),
    (_set("metrics.auroc.macro.value", True), "is not of type"),
    (_set("metrics.auroc.macro.ci", [0.9, 0.7]), "low <= high"),
    (_set("metrics.auroc.macro.value", float("nan")), "only finite numbers"),
    (_set("training.seconds", float("inf")), "only finite numbers"),
    (_set("method.name", "a|b\n| forged | row |"), "must match"),
    (_set("method.name", "My Method"), "must match"),
    (_set("method.name", ""), "must match"),
    (_set("method.name", "x,y"), "must match"),
    (_set("method.name", "a/b"), "must match"),
    (_set("method.name", "x" * 100_000), "100000 characters long"),
    (_set("dataset.name", ".."), "'dataset.name'"),
    (_set("task", "../../x"), "'task'"),
    (_set("seeds", []), "'seeds'"),
    (_set("seeds", ["zero"]), "'seeds.0'"),
    (_set("test_cohort.n", 0), "'test_cohort.n'"),
    (_set("test_cohort.positives.y_true", -1), "positives"),
    (_set("predictions.file", "../../README.md"), "'predictions.file'"),
])
def test_schema_refuses_out_of_range_forged_and_oversized_values(mutate, message):
    result = _fresh_result()
    mutate(result)
    errors = validate_result(result)
    assert any(message in error for error in errors), errors
    assert all(len(error) < 400 for error in errors)  # a 100 kB name is not echoed back


def test_the_schema_is_shipped_as_package_data():
    from importlib import resources

    schema = json.loads(resources.files("fusebench.schemas").joinpath("result.schema.json")
                        .read_text())
    assert schema["$defs"]["name"]["pattern"] == "^[a-z0-9][a-z0-9-]*$"


def test_nan_literal_and_oversized_files_are_refused_by_validate_in_one_line(tmp_path):
    from fusebench.cli import cli

    good = tmp_path / "good.json"
    write_result(good, make_result())
    nan = tmp_path / "nan.json"
    nan.write_text(good.read_text().replace('"value": 0.8', '"value": NaN', 1))
    huge = tmp_path / "huge.json"
    huge.write_text(good.read_text().replace('"acme"', json.dumps("x" * 3_000_000)))
    for path, message in ((nan, "NaN is not a number JSON allows"), (huge, "bytes, more than")):
        with pytest.raises(FusebenchError, match=message):
            read_result(path)
    outcome = CliRunner().invoke(cli, ["results", "validate", str(good), str(nan), str(huge)])
    assert outcome.exit_code != 0
    assert "valid:" in outcome.output


# ----------------------------------------------------------------------------- paths, Markdown


@pytest.mark.parametrize("dataset, task", [("..", IHM), ("demo", "../../README"),
                                           ("demo/x", IHM), ("", IHM)])
def test_leaderboard_paths_stay_inside_the_leaderboard_folder(tmp_path, dataset, task):
    with pytest.raises(FusebenchError, match="not a plain name"):
        leaderboard_path(tmp_path, dataset, task)


def test_a_crafted_result_cannot_write_outside_through_merge(tmp_path, monkeypatch):
    from fusebench.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("mine\n")
    crafted = make_result()
    crafted["dataset"]["name"] = ".."
    crafted["task"] = "README"
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(crafted))
    with pytest.raises(SystemExit) as exit_info:
        main(["leaderboard", "merge", str(path)])
    assert exit_info.value.code == 2
    assert (tmp_path / "README.md").read_text() == "mine\n"
    assert not (tmp_path / "leaderboards").exists()


def test_markdown_cells_are_escaped_so_no_row_can_be_forged():
    assert escape_cell("a|b\n| x |") == "a\\|b \\| x \\|"
    assert escape_cell("<script>") == "&lt;script&gt;"
    board = {"schema_version": 1, "generated": "now", "task": IHM, "preset": "quick",
             "overrides": {}, "reference_method": "uni-ehr",
             "dataset": {"name": "demo", "fingerprint": "f" * 64, "is_demo": True},
             "entries": [], "other_entries": [],
             "failed": [{"method": "m", "train_cohort": "partial", "seed": 0,
                         "error": "boom\n| 1 | forged | partial |"}]}
    text = render_markdown(board)
    assert "forged" in text and "\n| 1 | forged" not in text


# ----------------------------------------------------------------------------- files and locks


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_keep_the_users_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "result.json", b"{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == mode


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid  # reaped: no process has this id now (barring reuse within a test)


def test_orphaned_temporaries_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    host = socket.gethostname().replace(".", "_")
    target = tmp_path / "board.json"
    orphan = tmp_path / f".board.json.{host}.{_dead_pid()}.0badf00d.tmp"
    live = tmp_path / f".board.json.{host}.{os.getppid()}.0badf00d.tmp"  # a running writer
    foreign = tmp_path / ".board.json.otherhost.1.0badf00d.tmp"  # recent, another machine
    other_file = tmp_path / f".other.json.{host}.{_dead_pid()}.0badf00d.tmp"
    for path in (orphan, live, foreign, other_file):
        path.write_bytes(b"half")
    atomic_write_bytes(target, b"{}")
    assert not orphan.exists()
    assert live.exists() and foreign.exists() and other_file.exists()
    assert remove_orphaned_temporaries(target) == []


def test_a_held_lock_refuses_at_once_in_one_line_and_leaves_no_lock_file(tmp_path):
    folder = tmp_path / "seed0"
    second = file_lock(folder, wait=False, holder="another fusebench run",
                       way_out="wait for it to finish")
    with file_lock(folder, wait=False), pytest.raises(FusebenchError) as error, second:
        pass
    message = str(error.value)
    assert "another fusebench run" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no stray .lock


def test_merge_leaves_no_lock_file_beside_the_board(tmp_path):
    board = tmp_path / "leaderboards" / "demo" / f"{IHM}.json"
    source = tmp_path / "r.json"
    write_result(source, make_result())
    merge_result(board, source)
    assert not [p for p in board.parent.rglob("*") if p.name.endswith(".lock")]


# ----------------------------------------------------------------------------- predictions, Δ


def _submission(folder: Path, method: str, cohort: str = "partial", seed: int = 0,
                fingerprint: str = "f" * 64, preset: str = "quick",
                shift: float = 0.0) -> Path:
    """A result with its predictions file beside it, as `fusebench run` leaves them."""
    task = load_registry().task(IHM)
    generator = np.random.default_rng(7)
    labels = (generator.random((60, 1)) < 0.3).astype(float)
    noise = np.random.default_rng(seed + 11 * len(method)).random((60, 1))
    probabilities = np.clip(0.5 * labels + 0.5 * noise + shift, 0, 1)
    folder.mkdir(parents=True, exist_ok=True)
    predictions = folder / "predictions-paired.csv"
    sha = write_predictions(predictions, np.arange(1000, 1060), probabilities, labels, task)
    scores = score_predictions(labels, probabilities, task.labels, n_resamples=50,
                               seed=BOOTSTRAP_SEED)
    result = make_result(method, fingerprint=fingerprint, seed=seed)
    result.update(train_cohort=cohort, preset=preset,
                  metrics={"auroc": scores["auroc"], "auprc": scores["auprc"]},
                  predictions={"file": predictions.name, "sha256": sha})
    result["test_cohort"].update(n=60, positives={"y_true": int(labels.sum())})
    path = folder / "result-paired.json"
    write_result(path, result)
    return path


def test_merge_computes_the_difference_to_the_reference_and_force_keeps_it(tmp_path):
    task = load_registry().task(IHM)
    board = tmp_path / "leaderboards" / "demo" / f"{IHM}.json"
    reference = _submission(tmp_path / "ref", "uni-ehr")
    mine = _submission(tmp_path / "mine", "my-method", cohort="paired", shift=0.1)
    merge_result(board, reference, task=task, n_resamples=50)
    written = merge_result(board, mine, task=task, n_resamples=50)
    entry = next(e for e in written["entries"] if e["method"] == "my-method")
    stays, labels, probabilities = read_predictions(mine.parent / "predictions-paired.csv", task)
    _, _, ref_probabilities = read_predictions(reference.parent / "predictions-paired.csv", task)
    expected = score_predictions(labels, probabilities, task.labels, n_resamples=50,
                                 seed=BOOTSTRAP_SEED, reference_prob=ref_probabilities)
    assert entry["difference_to_reference"] == expected["difference"]
    assert (board.parent / entry["predictions"]).exists()  # kept beside the board
    forced = merge_result(board, mine, force=True, task=task, n_resamples=50)
    again = next(e for e in forced["entries"] if e["method"] == "my-method")
    assert again["difference_to_reference"] == expected["difference"]
    assert "ΔAUROC vs uni-ehr" in board.with_suffix(".md").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        assert board.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # redrawn


def test_a_changed_predictions_file_is_a_one_line_error_before_any_difference(tmp_path):
    task = load_registry().task(IHM)
    board = tmp_path / "leaderboards" / "demo" / f"{IHM}.json"
    merge_result(board, _submission(tmp_path / "ref", "uni-ehr"), task=task, n_resamples=50)
    mine = _submission(tmp_path / "mine", "my-method")
    predictions = mine.parent / "predictions-paired.csv"
    predictions.write_text(predictions.read_text().replace("1000,", "1000,0.99", 1)[:-1] + "\n")
    with pytest.raises(FusebenchError, match="sha256 .* differs .* recorded") as error:
        merge_result(board, mine, task=task, n_resamples=50)
    assert "\n" not in str(error.value)
    kept = board.parent / load_leaderboard(board)["entries"][0]["predictions"]
    kept.write_bytes(kept.read_bytes() + b"1061,0.5,1\n")  # the board's copy altered
    leaderboard_module._known_differences.clear()
    with pytest.raises(FusebenchError, match="differs"):
        merge_result(board, _submission(tmp_path / "other", "other-method"), task=task,
                     n_resamples=50)


def test_a_value_its_predictions_do_not_give_is_refused_at_merge(tmp_path):
    task = load_registry().task(IHM)
    board = tmp_path / "leaderboards" / "demo" / f"{IHM}.json"
    path = _submission(tmp_path / "mine", "my-method")
    result = json.loads(path.read_text())
    result["metrics"]["auroc"]["macro"] = {"value": 0.99, "ci": [0.98, 1.0]}  # schema-valid
    path.write_text(json.dumps(result))
    with pytest.raises(FusebenchError, match="0.99 is not what its predictions give"):
        merge_result(board, path, task=task, n_resamples=50)
    assert not board.exists()


def test_an_interval_need_not_contain_its_value():
    """Percentile bootstrap intervals of AUPRC can lie above the point estimate on small test
    sets (seen on the tiny demo's phenotyping: 0.213 with [0.224, 0.333]); only order counts."""
    result = _fresh_result()
    result["metrics"]["auprc"]["macro"] = {"value": 0.213, "ci": [0.224, 0.333]}
    assert validate_result(result) == []


def test_a_rebuild_never_loses_a_merged_submission(tmp_path):
    task = load_registry().task(IHM)
    board = tmp_path / "leaderboards" / "demo" / f"{IHM}.json"
    merge_result(board, _submission(tmp_path / "mine", "my-method"), task=task, n_resamples=50)
    dataset = {"name": "demo", "fingerprint": "f" * 64, "is_demo": True}
    runs = tmp_path / "runs"
    runs.mkdir()
    same = rebuild_leaderboard(board, runs=runs, task=task, dataset=dataset, preset="quick",
                               n_resamples=50)
    assert [e["method"] for e in same["entries"]] == ["my-method"]
    other = rebuild_leaderboard(board, runs=runs, task=task, dataset=dataset, preset="paper",
                                n_resamples=50)  # `leaderboard --preset paper` after the demo
    assert other["entries"] == [] and [e["method"] for e in other["other_entries"]] == [
        "my-method"]
    board.unlink()  # the advice for a damaged board: delete it and rebuild
    restored = rebuild_leaderboard(board, runs=runs, task=task, dataset=dataset, preset="quick",
                                   n_resamples=50)
    assert [e["method"] for e in restored["entries"]] == ["my-method"]


def test_a_damaged_board_names_the_way_out_that_keeps_submissions(tmp_path):
    board = tmp_path / "leaderboards" / "demo" / f"{IHM}.json"
    merge_result(board, _submission(tmp_path / "mine", "my-method"))
    board.write_text(board.read_text()[:100])
    with pytest.raises(FusebenchError, match="damaged leaderboard.*submissions"):
        load_leaderboard(board)


# ----------------------------------------------------------------------------- seeds


def test_multi_seed_rows_show_mean_and_sd_beside_each_seeds_ci_and_rank_by_them(tmp_path):
    board = tmp_path / "board.json"
    for seed, value in enumerate((0.70, 0.80, 0.90)):
        path = tmp_path / f"a{seed}.json"
        write_result(path, make_result("several", seed=seed, auroc=value))
        merge_result(board, path)
    path = tmp_path / "b.json"
    write_result(path, make_result("single", auroc=0.85))
    merge_result(board, path)
    rows = summary_rows(load_leaderboard(board), "paired")
    assert [(r["method"], r["rank"]) for r in rows] == [("single", 1), ("several", 2)]
    several = rows[1]
    assert several["auroc"]["value"] == pytest.approx(0.8)  # what the row shows is the mean
    assert several["auroc_sd"] == pytest.approx(0.1)
    assert [s["auroc"]["value"] for s in several["per_seed"]] == [0.70, 0.80, 0.90]
    text = board.with_suffix(".md").read_text()
    assert "0.800 ± 0.100 (n=3)" in text
    assert "0: 0.700 [0.650, 0.750]; 1: 0.800 [0.750, 0.850]; 2: 0.900 [0.850, 0.950]" in text


# ----------------------------------------------------------------------------- provenance


def test_provenance_comes_from_package_metadata_not_the_current_repository(tmp_path,
                                                                          monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repository = tmp_path / "users-project"
    repository.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=repository, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repository,
                   check=True, env=env)
    users_head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repository, check=True,
                                capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repository)
    harness_provenance.cache_clear()
    try:
        assert harness_provenance()["git_commit"] != users_head
    finally:
        harness_provenance.cache_clear()


def test_provenance_of_a_vcs_install_is_the_commit_pip_recorded(monkeypatch):
    from importlib import metadata

    class Installed:
        version = "9.9.9"

        def read_text(self, name: str) -> str | None:
            return json.dumps({"url": "https://example.org/fusebench.git",
                               "vcs_info": {"vcs": "git", "commit_id": "c0ffee" * 6}}) \
                if name == "direct_url.json" else None

    monkeypatch.setattr(metadata, "distributions", lambda name: [Installed()])
    harness_provenance.cache_clear()
    try:
        record = harness_provenance()
    finally:
        harness_provenance.cache_clear()
    assert record["version"] == "9.9.9" and record["git_commit"] == "c0ffee" * 6


# ----------------------------------------------------------------------------- fingerprints


def test_byte_identical_data_get_one_fingerprint_whatever_their_timestamps(demo_tiny_root,
                                                                           tmp_path):
    from fusebench.data import DataConfig, prepare

    copy_root = tmp_path / "copy"
    shutil.copytree(demo_tiny_root, copy_root, copy_function=shutil.copyfile)  # new mtimes
    task = load_registry().task(IHM)
    prints = [prepare(DataConfig(ehr_root=root / "ehr", cxr_root=root / "cxr", image_size=32,
                                 cache_dir=tmp_path / "cache"), task, progress=False).fingerprint
              for root in (demo_tiny_root, copy_root)]
    assert prints[0] == prints[1]
    listfile = copy_root / "ehr" / IHM / "test_listfile.csv"
    lines = listfile.read_text().splitlines()
    *head, last = lines[1].split(",")
    lines[1] = ",".join([*head, "1" if last.strip() == "0" else "0"])  # one corrected label
    listfile.write_text("\n".join(lines) + "\n")
    changed = prepare(DataConfig(ehr_root=copy_root / "ehr", cxr_root=copy_root / "cxr",
                                 image_size=32, cache_dir=tmp_path / "cache"), task,
                      progress=False).fingerprint
    assert changed != prints[0]


def test_validate_prints_one_line_per_file_with_the_pattern_intact(tmp_path):
    from fusebench.cli import cli

    forged = make_result("acme")
    forged["method"]["name"] = "x | 1 | forged"
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    outcome = CliRunner().invoke(cli, ["results", "validate", str(path)])
    assert outcome.exit_code != 0
    lines = [line for line in outcome.output.splitlines() if line.startswith("invalid:")]
    assert len(lines) == 1 and "it must match ^[a-z0-9][a-z0-9-]*$" in lines[0]
