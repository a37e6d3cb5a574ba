"""A run without a terminal prints one line per epoch; Ctrl-C prints the command that resumes."""

from __future__ import annotations

import re
import shlex

import pytest
from click.testing import CliRunner

from fusebench.cli import cli
from fusebench.progress import RunProgress, format_duration, make_progress
from fusebench.registry import set_extra_plugins

PLUGIN = "tests.fixtures.interrupting_method"
SCORE = r"(\d\.\d{4}|n/a)"  # n/a: the tiny demo's validation set may hold one class
EPOCH_LINE = re.compile(rf"epoch (\d)/3 loss \d+\.\d{{4}} val AUROC {SCORE} \(best {SCORE}\) "
                        r"elapsed \d+s ETA \d+s$")


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 65, 3 * 3600 + 7 * 60 + 5, float("nan"))] == [
        "4s", "1m05s", "3h07m", "?"]


def test_one_line_per_epoch_without_a_terminal(capsys: pytest.CaptureFixture[str]):
    with RunProgress() as progress:  # stderr is captured: not a terminal
        progress.start_fit("uni-ehr", epochs=4, steps_per_epoch=2)
        for epoch in (1, 2):
            progress.advance_batch(0.5)
            progress.advance_batch(0.25)
            progress.end_epoch(epoch, 0.7, 0.7)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "uni-ehr: up to 4 epochs of 2 batches"
    assert re.fullmatch(r"uni-ehr: epoch 1/4 loss 0\.3750 val AUROC 0\.7000 \(best 0\.7000\) "
                        r"elapsed \d+s ETA \d+s", lines[1]), lines[1]
    assert len(lines) == 3 and lines[2].startswith("uni-ehr: epoch 2/4 loss 0.3750")


def test_undefined_auroc_is_shown_as_not_available(capsys: pytest.CaptureFixture[str]):
    with RunProgress() as progress:
        progress.start_fit("uni-ehr", epochs=1, steps_per_epoch=1)
        progress.end_epoch(1, float("nan"), float("-inf"))
    assert "val AUROC n/a (best n/a)" in capsys.readouterr().err


def test_no_lines_on_a_terminal_display(capsys: pytest.CaptureFixture[str]):
    with RunProgress(make_progress(), lines=False) as progress:
        progress.start_fit("uni-ehr", epochs=2, steps_per_epoch=1)
        progress.advance_batch(0.5)
        progress.end_epoch(1, 0.7, 0.7)
    assert "epoch 1/2" not in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_command_which_finishes_the_run(demo_tiny_root, tmp_path,
                                                                  monkeypatch):
    # Before: nothing printed without a TTY, and Ctrl-C said only "aborted".
    out = tmp_path / "runs"
    args = ["--plugin", PLUGIN, "run", "--task", "in-hospital-mortality", "--method",
            "interrupt-ehr", "--preset", "quick", "--data-root", str(demo_tiny_root),
            "--out", str(out), "--image-size", "16", "--n-resamples", "20"]
    monkeypatch.setenv("FUSEBENCH_TEST_INTERRUPT", "1")
    try:
        interrupted = CliRunner().invoke(cli, args)
        assert interrupted.exit_code != 0
        lines = interrupted.stderr.strip().splitlines()
        assert EPOCH_LINE.search(next(line for line in lines if "epoch 1/3" in line))
        notice = next(line for line in lines if line.startswith("interrupted"))
        assert notice.startswith("interrupted (the last finished epoch is saved); continue with: "
                                 "fusebench --plugin tests.fixtures.interrupting_method run ")
        command = shlex.split(notice.split("continue with: ", 1)[1])
        assert command[-1] == "--resume" and str(out) in command
        monkeypatch.delenv("FUSEBENCH_TEST_INTERRUPT")
        resumed = CliRunner().invoke(cli, command[1:])
    finally:
        set_extra_plugins(())
    assert resumed.exit_code == 0, resumed.output + resumed.stderr
    assert "(resumed after epoch 1)" in resumed.stderr
    assert [int(m.group(1)) for line in resumed.stderr.splitlines()
            if (m := EPOCH_LINE.search(line))] == [2, 3]
