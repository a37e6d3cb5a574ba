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


def test_plugin_calling_sys_exit_at_import_fails_alone(site):
    # Before: SystemExit escaped the loader and every command exited 0 doing nothing.
    make_distribution(site, "exit-fusion", {"exit_fusion": "import sys\nsys.exit(0)\n"})
    make_distribution(site, "acme-fusion", {"acme_fusion": GOOD.format(name="acme")})
    with pytest.warns(PluginWarning, match=r"exit_fusion.*sys\.exit\(0\).*exit_fusion\.py:2"):
        registry = load_registry()
    assert "acme" in registry.methods
    result = CliRunner().invoke(cli, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert "acme" in {row["name"] for row in json.loads(result.stdout)["methods"]}


def test_plugin_printing_on_import_keeps_json_output_valid(site):
    # Prints both at import and inside the registration hook.
    noisy = "print('hello from the plugin')\n" + GOOD.format(name="noisy").replace(
        "    return [MethodSpec(", "    print('registering')\n    return [MethodSpec(")
    make_distribution(site, "noisy-fusion", {"noisy_fusion": noisy})
    result = CliRunner().invoke(cli, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert "noisy" in {row["name"] for row in json.loads(result.stdout)["methods"]}
    assert "hello from the plugin" in result.stderr and "registering" in result.stderr


BROKEN_AT_LINE_3 = "import torch\n\nmodel = UndefinedName\n"


def test_method_of_a_plugin_that_failed_to_import_names_the_import_error(site):
    # Before: "unknown method ... see `fusebench plugins list`", contradicting the warning.
    make_distribution(site, "acme-fusion", {"acme_fusion": BROKEN_AT_LINE_3})
    with pytest.warns(PluginWarning):
        registry = load_registry()
    with pytest.raises(FusebenchError) as caught:
        registry.method("acme-fusion")
    message = str(caught.value)
    for fragment in ("'acme-fusion' is not available", "NameError", "acme_fusion.py:3",
                     'acme_fusion = "acme_fusion"', "pyproject.toml of acme-fusion",
                     '[project.entry-points."fusebench.plugins"]'):
        assert fragment in message, message
    assert "unknown method" not in message and "\n" not in message


def test_editable_plugin_failure_names_its_pyproject_path(site):
    make_distribution(site, "acme-fusion", {"acme_fusion": BROKEN_AT_LINE_3})
    project = site / "src" / "acme-fusion"
    project.mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'acme-fusion'\n")
    (site / "acme_fusion-1.0.dist-info" / "direct_url.json").write_text(
        json.dumps({"url": project.as_uri(), "dir_info": {"editable": True}}))
    with pytest.warns(PluginWarning, match=str(project / "pyproject.toml")):
        load_registry()


def test_unknown_method_mentions_failed_plugins_instead_of_the_list_command(site):
    make_distribution(site, "broken-fusion", {"broken_fusion": BROKEN_AT_LINE_3})
    with pytest.warns(PluginWarning):
        registry = load_registry()
    with pytest.raises(FusebenchError, match=r"unknown method 'zzz'.*1 plugin\(s\) failed to "
                                             r"load.*broken_fusion\.py:3"):
        registry.method("zzz")


@pytest.mark.parametrize("name", ["a/b", "..", "", "x,y", "My Method", "-lead", "é", "n" * 65])
def test_method_names_are_restricted_at_registration(site, name):
    # Before: `a/b` never reached the board, `..` escaped its run folder, the others were kept.
    make_distribution(site, "odd-fusion", {"odd_fusion": GOOD.format(name=name)})
    make_distribution(site, "acme-fusion", {"acme_fusion": GOOD.format(name="acme")})
    with pytest.warns(PluginWarning, match=r"odd_fusion.*odd-fusion.*not allowed.*odd_fusion\.py"):
        registry = load_registry()
    assert name not in registry.methods and "acme" in registry.methods
    with pytest.raises(FusebenchError, match="odd_fusion.*not allowed") as caught:
        registry.method(name)
    assert "\n" not in str(caught.value)


def test_task_names_are_restricted_at_registration(site):
    source = textwrap.dedent("""
        from fusebench import TaskSpec, hookimpl

        @hookimpl
        def fusebench_register_tasks():
            return [TaskSpec(name="../escape", description="-", labels=("y_true",),
                             period_hours=48.0, default_cxr_window="48h")]
    """)
    make_distribution(site, "odd-task", {"odd_task": source})
    with pytest.warns(PluginWarning, match=r"odd_task.*task name '\.\./escape' is not allowed"):
        registry = load_registry()
    assert "../escape" not in registry.tasks
