"""The forest plot beside the leaderboard tables: drawn with matplotlib, skipped without it."""

from __future__ import annotations

import sys

import pytest

from fusebench.plots import save_forest_plot


def entry(method: str, test_cohort: str, auroc: float) -> dict:
    return {"method": method, "train_cohort": "paired", "test_cohort": test_cohort, "seed": 0,
            "auroc": {"value": auroc, "ci": [auroc - 0.1, auroc + 0.05]},
            "auprc": {"value": auroc / 2, "ci": [auroc / 2 - 0.1, auroc / 2 + 0.1]},
            "difference_to_reference": None}


BOARD = {"task": "in-hospital-mortality", "dataset": {"name": "demo", "is_demo": True},
         "entries": [entry(m, c, a) for m, a in (("late", 0.8), ("joint", 0.7))
                     for c in ("paired", "partial")]}


def test_forest_plot_is_a_png_written_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    path = save_forest_plot(BOARD, tmp_path / "board.png")
    assert path == tmp_path / "board.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["board.png"]  # no temporary file left


def test_without_matplotlib_nothing_is_drawn(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    assert save_forest_plot(BOARD, tmp_path / "board.png") is None
    assert not any(tmp_path.iterdir())


def test_an_empty_board_draws_nothing(tmp_path):
    assert save_forest_plot({**BOARD, "entries": []}, tmp_path / "board.png") is None
