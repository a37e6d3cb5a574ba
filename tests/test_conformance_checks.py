"""The conformance suite names what is wrong: probabilities, crashes, NaN, masked gradients."""

from __future__ import annotations

import inspect

import pytest
from click.testing import CliRunner

from fusebench.cli import cli
from fusebench.errors import FusebenchError
from fusebench.registry import load_registry, set_extra_plugins
from fusebench.testing import check_method
from tests.fixtures import conformance_faults

PLUGIN = "tests.fixtures.conformance_faults"
IHM = "in-hospital-mortality"


@pytest.fixture(scope="module")
def registry():
    return load_registry([PLUGIN])


def _results(registry, method: str) -> dict[str, object]:
    return {r.name: r for r in check_method(registry.method(method), registry, tasks=[IHM])}


def test_probabilities_fail_with_return_logits(registry):
    # Before: a sigmoid output passed all checks and trained to exit 0.
    results = _results(registry, "prob-ehr")
    assert not results["returns-logits"].passed
    assert "return logits" in results["returns-logits"].reason
    assert all(r.passed for name, r in results.items() if name != "returns-logits")


def test_logits_of_a_working_method_pass_every_check(registry):
    assert all(r.passed for r in _results(registry, "mean-logits").values())


def test_crash_names_batch_case_file_line_and_keeps_the_traceback(registry):
    # Before: only "IndexError: ..." and the traceback was lost even with --debug.
    result = _results(registry, "crash-ehr")["output-shape"]
    line = next(n for n, text in enumerate(inspect.getsource(conformance_faults).splitlines(), 1)
                if "# crash-line" in text)
    assert not result.passed
    assert "IndexError: stay 1 of 1 is out of range" in result.reason
    assert "batch of 1" in result.reason and "eval mode" in result.reason
    assert result.reason.endswith(f"conformance_faults.py:{line}")
    assert result.traceback.startswith("Traceback") and "crash-line" not in result.reason


def test_nan_is_reported_once_as_the_cause_of_the_checks_it_breaks(registry):
    # Before: five failures, one of them a false "absent images must not be used".
    results = _results(registry, "nan-logits")
    assert not results["finite"].passed and not results["finite"].blocked_by
    blocked = {name for name, r in results.items() if r.blocked_by == "finite"}
    assert blocked == {"returns-logits", "deterministic", "state-dict-round-trip",
                       "training-step", "ignores-absent-cxr"}
    assert all("see `finite`" in results[name].reason and not results[name].passed
               for name in blocked)
    assert results["output-shape"].passed and results["pretraining-stages"].passed
    assert not any("absent images" in r.reason for r in results.values())


def test_zero_gradient_hint_names_both_causes(registry):
    # Before: a masking bug was reported as "unused modules must not be built".
    reason = _results(registry, "masked-cxr")["training-step"].reason
    assert "cxr_head" in reason and "gradient is zero" in reason
    assert "never used" in reason and "masked or detached" in reason


def test_cli_check_shows_tracebacks_only_with_debug():
    runner = CliRunner()
    try:
        plain = runner.invoke(cli, ["--plugin", PLUGIN, "plugins", "check", "crash-ehr",
                                    "--task", IHM])
        debug = runner.invoke(cli, ["--debug", "--plugin", PLUGIN, "plugins", "check",
                                    "crash-ehr", "--task", IHM])
    finally:
        set_extra_plugins(())
    for result in (plain, debug):
        assert isinstance(result.exception, FusebenchError)
    assert "--debug" in str(plain.exception) and "Traceback" not in plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    assert "crash-line" in debug.stderr  # the plugin's source line is in the traceback


def test_cli_marks_checks_blocked_by_nan_as_not_checked():
    try:
        result = CliRunner().invoke(cli, ["--plugin", PLUGIN, "plugins", "check", "nan-logits",
                                          "--task", IHM])
    finally:
        set_extra_plugins(())
    message = str(result.exception)
    assert "1 of 9 conformance checks failed: finite" in message
    assert "5 more not checked because of them" in message
