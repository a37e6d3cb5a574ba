"""The parameter counts `fusebench plugins list` shows, cached under $FUSEBENCH_HOME."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from fusebench import testing
from fusebench.parameter_counts import CACHE_FILE, parameter_counts
from fusebench.specs import MethodSpec
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY, PHENOTYPING

PLUGIN = """
from torch import nn

def build(config):
    return nn.Linear(4, {width} * config.num_classes)
"""


@pytest.fixture
def counted_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A method whose builder lives in a module file of this test's own, and a way to edit it."""
    package = tmp_path / "counted_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    module = package / "model.py"
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(width: int, mtime_ns: int) -> MethodSpec:
        module.write_text(PLUGIN.format(width=width))
        os.utime(module, ns=(mtime_ns, mtime_ns))
        sys.modules.pop("counted_plugin.model", None)
        built = importlib.import_module("counted_plugin.model")
        return MethodSpec(name="counted", description="", reference="",
                          handles_missing_cxr=True, default_train_cohort="partial",
                          hparams={"*": {}}, build=built.build)

    yield write
    sys.modules.pop("counted_plugin.model", None)
    sys.modules.pop("counted_plugin", None)


def test_counts_equal_the_meta_build_and_are_cached_in_fusebench_home(counted_method,
                                                                       monkeypatch) -> None:
    method = counted_method(width=3, mtime_ns=1_000_000_000)
    tasks = [IN_HOSPITAL_MORTALITY, PHENOTYPING]
    expected = {task.name: testing.parameter_count_on_meta(method, task) for task in tasks}
    assert expected == {IN_HOSPITAL_MORTALITY.name: 4 * 3 + 3, PHENOTYPING.name: 4 * 75 + 75}
    assert parameter_counts([method], tasks) == {"counted": expected}
    assert (Path(os.environ["FUSEBENCH_HOME"]) / CACHE_FILE).is_file()

    def no_build(*_):
        raise AssertionError("counted again although cached")

    monkeypatch.setattr(testing, "parameter_count_on_meta", no_build)
    assert parameter_counts([method], tasks) == {"counted": expected}


def test_editing_the_plugin_counts_again(counted_method) -> None:
    tasks = [IN_HOSPITAL_MORTALITY]
    before = parameter_counts([counted_method(width=3, mtime_ns=1_000_000_000)], tasks)
    after = parameter_counts([counted_method(width=5, mtime_ns=2_000_000_000)], tasks)
    assert before["counted"][IN_HOSPITAL_MORTALITY.name] == 15
    assert after["counted"][IN_HOSPITAL_MORTALITY.name] == 25


def test_an_unreadable_cache_file_counts_as_empty(counted_method) -> None:
    home = Path(os.environ["FUSEBENCH_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / CACHE_FILE).write_text("{not json")
    counts = parameter_counts([counted_method(width=2, mtime_ns=1_000_000_000)],
                              [IN_HOSPITAL_MORTALITY])
    assert counts == {"counted": {IN_HOSPITAL_MORTALITY.name: 10}}
