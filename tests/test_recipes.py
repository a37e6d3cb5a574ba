"""Training recipes: presets scale each method's own learning rate, the original's constant-rate
methods, per-epoch training curves in the run folder, and ``--cxr-weights imagenet``."""

from __future__ import annotations

import csv
import json
import urllib.error

import pytest
import torch
from click.testing import CliRunner

from fusebench.cli import cli
from fusebench.errors import FusebenchError
from fusebench.plugins import encoders
from fusebench.presets import PRESETS, Preset, get_preset
from fusebench.registry import load_registry
from fusebench.specs import ModelConfig
from fusebench.train import HISTORY_FILES, save_history
from tests.test_run import run_args, run_folder

REGISTRY = load_registry(strict=False)
PHENO = "phenotyping"


def test_quick_preset_keeps_each_methods_learning_rate_relative_to_the_others():
    quick = get_preset("quick")
    rates = {name: quick.apply(REGISTRY.method(name).hparams_for(PHENO))["lr"]
             for name in ("medfuse", "uni-ehr", "joint")}
    own = {name: REGISTRY.method(name).hparams_for(PHENO)["lr"] for name in rates}
    assert rates["medfuse"] / rates["uni-ehr"] == pytest.approx(own["medfuse"] / own["uni-ehr"])
    assert rates["joint"] == pytest.approx(quick.lr_scale * own["joint"])
    assert PRESETS["paper"].apply({"lr": 7e-5})["lr"] == 7e-5


def test_a_preset_cannot_overwrite_every_methods_learning_rate():
    with pytest.raises(ValueError, match="lr_scale"):
        Preset(name="flat", description="", image_size=48, overrides={"lr": 1e-3})


@pytest.mark.parametrize("method", ["mmtm", "daft"])
def test_mmtm_and_daft_train_at_a_constant_rate_as_the_original(method):
    for task in ("in-hospital-mortality", PHENO):
        assert REGISTRY.method(method).hparams_for(task)["lr_factor"] == 1.0
    assert REGISTRY.method("medfuse").hparams_for(PHENO)["lr_factor"] == 0.5


HISTORY = [
    {"epoch": 1, "train_loss": 0.5, "val_loss": 0.45, "val_auroc": 0.6, "val_auprc": 0.3,
     "lr": [2e-4, 2e-4]},
    {"epoch": 2, "train_loss": 0.4, "val_loss": 0.47, "val_auroc": None, "val_auprc": None,
     "lr": [1e-4, 1e-4]},
]


@pytest.mark.slow  # matplotlib's first import
def test_history_is_written_as_json_csv_and_plot(tmp_path):
    written = save_history(HISTORY, tmp_path, title="medfuse phenotyping (partial)")
    pytest.importorskip("matplotlib")
    assert [path.name for path in written] == list(HISTORY_FILES)
    assert json.loads((tmp_path / "history.json").read_text()) == HISTORY
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0]["lr"] == "0.0002" and rows[0]["lr_all"] == "0.0002;0.0002"
    assert rows[1]["val_auroc"] == ""
    assert (tmp_path / "history.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_run_saves_its_training_curves(demo_tiny_root, tmp_path):
    result = CliRunner().invoke(cli, ["--plugin", "tests.fixtures.faulty_methods",
                                      *run_args(demo_tiny_root, tmp_path, "kill-ehr",
                                                "--epochs", "2")])
    assert result.exit_code == 0, result.output
    folder = run_folder(tmp_path)
    history = json.loads((folder / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert all({"train_loss", "val_loss", "val_auroc", "val_auprc", "lr"} <= set(row)
               for row in history), history
    assert all((row["val_auroc"] is None) == (row["val_auprc"] is None) for row in history)
    recorded = json.loads((folder / "result-paired.json").read_text())["training"]["history"]
    assert recorded == history


def test_cxr_weights_imagenet_offline_is_one_line_naming_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FusebenchError, match=r"offline, pass --cxr-weights PATH") as error:
        encoders.resolve_cxr_weights("imagenet")
    assert "\n" not in str(error.value)
    result = CliRunner().invoke(cli, ["run", "--task", PHENO, "--method", "uni-cxr",
                                      "--cxr-weights", "imagenet", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, FusebenchError)  # printed as one line by the CLI
    assert "--cxr-weights PATH" in str(result.exception)


def test_cxr_weights_imagenet_uses_the_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached by an earlier download")
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("downloaded although cached"))
    assert encoders.resolve_cxr_weights("imagenet") == cached
    with pytest.raises(FusebenchError, match="no such file"):
        encoders.resolve_cxr_weights(tmp_path / "missing.pth")


@pytest.mark.slow  # writes and reads a whole ResNet34
def test_the_model_records_the_imagenet_file_it_started_from(tmp_path):
    weights = tmp_path / "resnet34-b627a593.pth"
    network = encoders.CXREncoder()
    torch.save(network.state_dict() | {"fc.weight": torch.zeros(1000, 512),
                                       "fc.bias": torch.zeros(1000)}, weights)
    model = REGISTRY.method("uni-cxr").build(
        ModelConfig(task=PHENO, num_classes=25, cxr_weights=weights))
    assert model.init_info == {"cxr": "imagenet:resnet34-b627a593.pth"}
    torch.testing.assert_close(model.cxr.conv1.weight, network.conv1.weight)
