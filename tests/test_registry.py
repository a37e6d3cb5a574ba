"""Plugin discovery through real entry points: isolation, duplicates, strict mode, disable list."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusebench.cli import cli
from fusebench.errors import FusebenchError
from fusebench.registry import PluginWarning, load_registry, set_extra_plugins

GOOD = """
import torch
from fusebench import MethodSpec, hookimpl

class Model(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.head = torch.nn.Linear(config.ehr_input_dim, config.num_classes)

    def forward(self, batch):
        return self.head(batch["ehr"].mean(dim=1))

@hookimpl
def fusebench_register_methods():
    return [MethodSpec(name="{name}", description="test method", reference="-",
                       handles_missing_cxr=True, default_train_cohort="partial",
                       hparams={{"*": {{"lr": 1e-3}}}}, build=Model)]
"""


def make_distribution(site: Path, dist: str, modules: dict[str, str], version: str = "1.0") -> None:
    """Write an installed-looking distribution: modules plus a dist-info with entry points."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {name}" for name in modules)
    (info / "entry_points.txt").write_text(f"[fusebench.plugins]\n{lines}\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FUSEBENCH_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("FUSEBENCH_DISABLE_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield tmp_path
    set_extra_plugins(())
    for name in [n for n, m in sys.modules.items() if str(tmp_path) in str(getattr(m, "__file__", ""))]:
        del sys.modules[name]


def ours(problems: list[str], *names: str) -> list[str]:
    return [p for p in problems if any(repr(n) in p for n in names)]


def test_outside_distribution_is_discovered(site):
    make_distribution(site, "acme-fusion", {"acme_fusion": GOOD.format(name="acme")}, "2.3")
    registry = load_registry()
    method = registry.method("acme")
    assert (method.distribution, method.version) == ("acme-fusion", "2.3")
    assert "in-hospital-mortality" in registry.tasks


def test_broken_plugin_warns_and_others_still_work(site):
    make_distribution(site, "acme-fusion", {"acme_fusion": GOOD.format(name="acme")})
    make_distribution(site, "broken-fusion", {"broken_fusion": "raise ImportError('no cuda here')"})
    with pytest.warns(PluginWarning, match="broken_fusion.*broken-fusion.*no cuda here"):
        registry = load_registry()
    assert "acme" in registry.methods
    assert len(ours(registry.problems, "broken_fusion")) == 1


def test_plugin_raising_at_registration_is_isolated(site):
    source = "from fusebench import hookimpl\n@hookimpl\ndef fusebench_register_methods():\n    1 / 0\n"
    make_distribution(site, "zero-fusion", {"zero_fusion": source})
    make_distribution(site, "acme-fusion", {"acme_fusion": GOOD.format(name="acme")})
    with pytest.warns(PluginWarning, match="ZeroDivisionError"):
        registry = load_registry()
    assert "acme" in registry.methods


def test_misspelled_hook_is_reported(site):
    source = "from fusebench import hookimpl\n@hookimpl\ndef fusebench_register_method():\n    return []\n"
    make_distribution(site, "typo-fusion", {"typo_fusion": source})
    with pytest.warns(PluginWarning, match="typo_fusion.*fusebench_register_method"):
        registry = load_registry()
    assert ours(registry.problems, "typo_fusion")


def test_strict_mode_turns_a_broken_plugin_into_an_error(site, monkeypatch):
    make_distribution(site, "broken-fusion", {"broken_fusion": "raise ImportError('nope')"})
    monkeypatch.setenv("FUSEBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(FusebenchError, match="broken_fusion.*FUSEBENCH_STRICT_PLUGINS"):
        load_registry()


def test_duplicate_method_names_name_both_distributions(site):
    make_distribution(site, "acme-one", {"acme_one": GOOD.format(name="twin")})
    make_distribution(site, "acme-two", {"acme_two": GOOD.format(name="twin")})
    with pytest.raises(FusebenchError, match="'twin'.*acme-one.*acme-two"):
        load_registry()


def test_disable_list_skips_named_plugins(site, monkeypatch):
    make_distribution(site, "acme-one", {"acme_one": GOOD.format(name="twin")})
    make_distribution(site, "acme-two", {"acme_two": GOOD.format(name="twin")})
    monkeypatch.setenv("FUSEBENCH_DISABLE_PLUGINS", "acme_two, something_else")
    assert load_registry().method("twin").distribution == "acme-one"


def test_unknown_method_suggests_close_names(site):
    make_distribution(site, "acme-fusion", {"acme_fusion": GOOD.format(name="acme-gated")})
    with pytest.raises(FusebenchError, match="did you mean acme-gated"):
        load_registry().method("acme-gate")


def test_plugin_option_loads_a_module_that_is_not_installed(site):
    (site / "local_method.py").write_text(GOOD.format(name="local"))
    result = CliRunner().invoke(cli, ["--plugin", "local_method", "plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["methods"]}
    assert rows["local"]["distribution"].startswith("(--plugin")
    # Linear(76 -> 1) for mortality, Linear(76 -> 25) for phenotyping.
    assert rows["local"]["trainable_parameters"] == {"in-hospital-mortality": 77,
                                                      "phenotyping": 76 * 25 + 25}


def test_tasks_list_json_names_both_tasks():
    result = CliRunner().invoke(cli, ["tasks", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["tasks"]}
    assert rows["phenotyping"]["num_classes"] == 25
    assert rows["in-hospital-mortality"]["period_hours"] == 48
