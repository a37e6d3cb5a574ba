"""Result schema, atomic files, verified checkpoints, leaderboard merge under concurrency."""

from __future__ import annotations

import copy
import json
import multiprocessing
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fusebench.checkpoints import load_checkpoint, save_checkpoint
from fusebench.errors import FusebenchError
from fusebench.leaderboard import load_leaderboard, merge_result, render_markdown
from fusebench.results import SCHEMA_VERSION, read_result, validate_result, write_result


def make_result(method: str = "acme", fingerprint: str = "f" * 64, seed: int = 0,
                cohort: str = "paired", auroc: float = 0.8) -> dict:
    interval = {"value": auroc, "ci": [auroc - 0.05, auroc + 0.05]}
    return {
        "schema_version": SCHEMA_VERSION,
        "created": "2026-11-24T00:00:00+00:00",
        "harness": {"version": "0.1.0", "git_commit": "abc"},
        "dataset": {"name": "demo", "fingerprint": fingerprint, "is_demo": True},
        "task": "in-hospital-mortality",
        "method": {"name": method, "distribution": "acme-fusion", "version": "1.0",
                   "hparams": {"lr": 0.001}, "trainable_parameters": 10},
        "train_cohort": "paired",
        "test_cohort": {"name": cohort, "n": 100, "positives": {"y_true": 12}},
        "cxr_window": "48h",
        "metrics": {"auroc": {"macro": interval, "per_label": {"y_true": interval}},
                    "auprc": {"macro": interval, "per_label": {"y_true": interval}}},
        "ci": {"method": "percentile", "level": 0.95, "n_resamples": 1000, "seed": 0},
        "seeds": [seed],
        "training": {"seconds": 1.5, "best_epoch": 2, "epochs_run": 3},
        "predictions": {"file": "predictions-paired.csv", "sha256": "0" * 64},
        "environment": {"python": "3.11", "torch": "2.14.1", "device": "cpu"},
        "status": "ok",
    }


def test_valid_result_round_trips(tmp_path):
    path = tmp_path / "result.json"
    write_result(path, make_result())
    assert read_result(path)["method"]["name"] == "acme"


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("metrics"), "missing key 'metrics'"),
    (lambda r: r["method"].pop("trainable_parameters"), "method.trainable_parameters"),
    (lambda r: r.update(schema_version=99), "schema_version 99"),
    (lambda r: r["metrics"]["auroc"]["macro"].update(ci=[0.1]), "macro.ci': [0.1] is too short"),
    (lambda r: r.update(train_cohort="everything"), "train_cohort"),
    (lambda r: r["dataset"].update(is_demo="yes"), "dataset.is_demo"),
])
def test_schema_violations_are_named(mutate, message):
    result = make_result()
    mutate(result)
    assert any(message in error for error in validate_result(result))


def test_truncated_result_file_is_reported_with_the_way_out(tmp_path):
    path = tmp_path / "result.json"
    write_result(path, make_result())
    path.write_text(path.read_text()[:200])
    with pytest.raises(FusebenchError, match="not valid JSON.*rerun"):
        read_result(path)


def test_results_validate_command_exit_status(tmp_path):
    from fusebench.cli import cli

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    write_result(good, make_result())
    bad.write_text(json.dumps({"schema_version": 1}))
    ok = CliRunner().invoke(cli, ["results", "validate", str(good)])
    assert ok.exit_code == 0
    failed = CliRunner().invoke(cli, ["results", "validate", str(good), str(bad)])
    assert failed.exit_code != 0


def test_checkpoint_round_trip_and_corruption(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 3, "weights": torch.arange(5.0)})
    assert torch.equal(load_checkpoint(path)["weights"], torch.arange(5.0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FusebenchError, match="damaged.*rerun without --resume"):
        load_checkpoint(path)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(FusebenchError, match="damaged"):
        load_checkpoint(path)


def test_checkpoint_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"callable": Path})  # not a tensor/primitive: weights_only refuses
    with pytest.raises(FusebenchError, match="cannot be loaded"):
        load_checkpoint(path)


def _write(tmp_path: Path, name: str, result: dict) -> Path:
    path = tmp_path / name
    write_result(path, result)
    return path


def test_merge_keeps_other_data_apart_and_refuses_duplicates(tmp_path):
    board = tmp_path / "leaderboards" / "demo" / "in-hospital-mortality.json"
    merge_result(board, _write(tmp_path, "a.json", make_result("acme")))
    merge_result(board, _write(tmp_path, "b.json", make_result("beta", fingerprint="e" * 64)))
    written = load_leaderboard(board)
    assert [e["method"] for e in written["entries"]] == ["acme"]
    assert [e["method"] for e in written["other_entries"]] == ["beta"]  # kept, not ranked
    assert "## Entries on other data or settings" in board.with_suffix(".md").read_text()
    with pytest.raises(FusebenchError, match="already has acme.*--force"):
        merge_result(board, _write(tmp_path, "c.json", make_result("acme", auroc=0.9)))
    merge_result(board, tmp_path / "c.json", force=True)
    entries = load_leaderboard(board)["entries"]
    assert [(e["method"], e["auroc"]["value"]) for e in entries] == [("acme", 0.9)]
    assert "acme" in board.with_suffix(".md").read_text()


def _merge_in_child(board: str, result: str) -> None:
    merge_result(Path(board), Path(result))


@pytest.mark.slow  # six spawned processes, each importing torch (48 s wall on the shared machine)
def test_concurrent_merges_keep_both_entries(tmp_path):
    board = tmp_path / "board.json"
    files = [_write(tmp_path, f"r{i}.json", make_result(f"method-{i}")) for i in range(6)]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_merge_in_child, args=(str(board), str(f))) for f in files]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert all(worker.exitcode == 0 for worker in workers)
    methods = sorted(e["method"] for e in load_leaderboard(board)["entries"])
    assert methods == [f"method-{i}" for i in range(6)]


def test_markdown_ranks_by_auroc_and_marks_demo(tmp_path):
    board = tmp_path / "board.json"
    for name, value in (("low", 0.6), ("high", 0.9)):
        merge_result(board, _write(tmp_path, f"{name}.json", make_result(name, auroc=value)))
    text = render_markdown(load_leaderboard(board))
    assert "synthetic demo data, not MIMIC" in text
    assert text.index("| 1 | high") < text.index("| 2 | low")


def test_result_metrics_must_not_be_nan(tmp_path):
    result = copy.deepcopy(make_result())
    result["metrics"]["auroc"]["macro"]["value"] = float("nan")
    with pytest.raises(ValueError, match=r"'metrics\.auroc\.macro\.value' is nan: only finite"):
        write_result(tmp_path / "x.json", result)
