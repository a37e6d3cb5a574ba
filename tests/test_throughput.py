"""`fusebench throughput`: records, JSON output, hardware, both modes, OOM halving, CUDA path.

This module is also a plugin (loaded by its dotted name): it registers two tiny methods so the
measurements run in milliseconds, one with a custom training step and one that raises a fake
CUDA out-of-memory error above a batch size.
"""

from __future__ import annotations

import dataclasses
import io
import json
import mmap
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console
from torch import nn

from fusebench.cli.throughput import throughput
from fusebench.data import DataConfig, prepare
from fusebench.errors import FusebenchError
from fusebench.hookspecs import hookimpl
from fusebench.registry import Registry, load_registry, set_extra_plugins
from fusebench.specs import MethodSpec, ModelConfig
from fusebench.steps import default_training_step
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY, PHENOTYPING
from fusebench.throughput import (
    PHENOTYPING_BINS,
    _PeakMemory,
    _reset_peak_rss,
    hardware_info,
    leaderboard_record,
    measure_throughput,
    parse_batch_sizes,
    render_tables,
    synthetic_batch,
    write_records,
)

FAST = {"warmup": 1, "iters": 2, "image_size": 32, "progress": False}
STEP_CALLS: Counter[str] = Counter()


class TinyFusion(nn.Module):
    """Mean EHR bin + pooled conv feature; one frozen layer so trainable < total parameters."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ehr = nn.Linear(76, config.num_classes)
        self.cxr = nn.Conv2d(3, 4, kernel_size=3)
        self.head = nn.Linear(4, config.num_classes)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)
        self.oom_above = config.hparams.get("oom_above")

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.oom_above is not None and batch["ehr"].shape[0] > self.oom_above:
            raise torch.cuda.OutOfMemoryError("fake: CUDA out of memory")
        image = self.head(self.cxr(batch["cxr"]).mean(dim=(2, 3)))
        return self.ehr(batch["ehr"].mean(dim=1)) + image * batch["has_cxr"][:, None]


def counted_default_step(model: nn.Module, batch: Mapping, optimizers: Sequence) -> torch.Tensor:
    STEP_CALLS["tiny-fusion"] += 1
    return default_training_step(model, batch, optimizers)


def _spec(name: str, cohort: str, hparams: Mapping, **extra: Any) -> MethodSpec:
    return MethodSpec(name=name, description="test method", reference="-",
                      handles_missing_cxr=cohort == "partial", default_train_cohort=cohort,
                      hparams=hparams, build=TinyFusion, **extra)


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    return [_spec("tiny-fusion", "partial", {"*": {"batch_size": 6}},
                  training_step=counted_default_step),
            _spec("tiny-paired", "paired", {}),
            _spec("tiny-oom", "paired", {"*": {"oom_above": 4}})]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(extra_modules=[__name__], strict=True)


@pytest.fixture
def cli_registry() -> Iterator[None]:
    """The process registry (used by the command) with this module's methods."""
    set_extra_plugins([__name__])
    yield
    set_extra_plugins(())


def _measure(registry: Registry, name: str, **options) -> list[dict]:
    task = options.pop("task", IN_HOSPITAL_MORTALITY)
    return measure_throughput(registry.method(name), task, registry=registry,
                              **{**FAST, **options})


def _built(registry: Registry, name: str, task=IN_HOSPITAL_MORTALITY) -> nn.Module:
    method = registry.method(name)
    return method.build(ModelConfig(task=task.name, num_classes=task.num_classes,
                                    hparams=method.hparams_for(task.name)))


def test_model_mode_records_are_complete_and_sane(registry: Registry) -> None:
    records = _measure(registry, "tiny-fusion", batch_sizes=(4, 8))
    model = _built(registry, "tiny-fusion")
    assert [r["batch_size"] for r in records] == [4, 8]
    for record in records:
        assert record["requested_batch_size"] == record["batch_size"]
        assert record["oom_halvings"] == 0
        assert record["parameters"] == {
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters()),
        }
        assert record["parameters"]["trainable"] < record["parameters"]["total"]
        assert (record["mode"], record["task"], record["image_size"]) == (
            "model", IN_HOSPITAL_MORTALITY.name, 32)
        assert (record["precision"], record["memory_format"], record["compile"]) == (
            "fp32", "contiguous", False)
        # IHM: 48 hourly bins; partial-cohort method: one stay in four has an image.
        assert record["ehr_bins"] == 48
        assert record["cxr_present_fraction"] == 0.25
        for phase in ("inference", "training"):
            figures = record[phase]
            assert figures["samples_per_s"] > 0
            steps = figures["ms_per_step"]
            assert 0 < steps["q1"] <= steps["median"] <= steps["q3"]
            assert steps["iqr"] == pytest.approx(steps["q3"] - steps["q1"])
            assert figures["data_ms"] is None
            assert figures["first_call_ms"] > 0
            assert isinstance(figures["peak_memory_mib"], float)  # measured on the CPU too
        assert record["memory_measure"].startswith("cpu:")
        assert record["compile_s"] is None
    json.dumps(records, allow_nan=False)


def test_cpu_peak_memory_is_the_rss_growth_of_the_phase() -> None:
    # On Linux the kernel's peak-RSS mark is reset at the phase's start, so 64 MiB written
    # inside the phase (and freed before its end) must show, whatever the process used before.
    # The figure is peak minus starting RSS: pages the process releases meanwhile lower it a
    # little (measured: ~0.1 MiB after the record test above), hence "most of" the 64 MiB.
    if not _reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs: the figure is only a lower bound here")
    # Fresh anonymous pages: malloc could serve 64 MiB from heap memory already resident after
    # earlier tests (measured in a full run: 0.07 MiB of growth), which is correctly not growth.
    with _PeakMemory(torch.device("cpu")) as memory, mmap.mmap(-1, 64 * 2**20) as block:
        np.frombuffer(block, dtype=np.uint8)[:] = 1
    assert "VmHWM" in memory.method
    assert 48 * 2**20 <= memory.peak_bytes < 256 * 2**20
    with _PeakMemory(torch.device("cpu")) as idle:
        pass
    assert idle.peak_bytes < 16 * 2**20


def test_hardware_and_software_are_recorded(registry: Registry) -> None:
    record = _measure(registry, "tiny-paired")[0]
    hardware, software = record["hardware"], record["software"]
    assert hardware["device_type"] == "cpu"
    assert hardware["cpu_model"] and hardware["device_name"]
    assert hardware["torch_threads"] == torch.get_num_threads()
    assert hardware["device_count"] == 1
    assert software["torch"] == torch.__version__
    assert software["python"].count(".") == 2
    assert record["hardware_key"] == hardware_info("cpu")["hardware_key"]
    assert hardware["cpu_model"] in record["hardware_key"]


def test_custom_training_step_is_what_gets_timed(registry: Registry) -> None:
    STEP_CALLS.clear()
    _measure(registry, "tiny-fusion", batch_sizes=(2, 3))
    # Per batch size: the first call, 1 warm-up step and 2 timed steps.
    assert STEP_CALLS["tiny-fusion"] == 2 * (1 + 1 + 2)


def test_phenotyping_uses_the_fixed_length_and_paired_methods_all_images(
    registry: Registry,
) -> None:
    record = _measure(registry, "tiny-paired", task=PHENOTYPING)[0]
    assert record["ehr_bins"] == PHENOTYPING_BINS
    assert record["cxr_present_fraction"] == 1.0
    assert record["cohort"] == "paired"


def test_out_of_memory_halves_the_batch_size_and_says_so(registry: Registry) -> None:
    record = _measure(registry, "tiny-oom", batch_sizes=(16,))[0]
    assert (record["requested_batch_size"], record["batch_size"], record["oom_halvings"]) == (
        16, 4, 2)
    assert record["training"]["samples_per_s"] > 0


def test_out_of_memory_at_batch_size_one_is_an_error(registry: Registry) -> None:
    method = dataclasses.replace(registry.method("tiny-oom"), hparams={"*": {"oom_above": 0}})
    with pytest.raises(FusebenchError, match="batch size 1"):
        measure_throughput(method, IN_HOSPITAL_MORTALITY, registry=registry, batch_sizes=(2,),
                           **FAST)


def test_synthetic_batch_follows_the_contract() -> None:
    batch = synthetic_batch(PHENOTYPING, 8, ehr_bins=10, image_size=16, cxr_fraction=0.25)
    assert batch["ehr"].shape == (8, 10, 76)
    assert batch["ehr_lengths"].tolist() == [10] * 8
    assert batch["cxr"].shape == (8, 3, 16, 16)
    assert batch["has_cxr"].tolist() == [True, False, False, False] * 2
    assert not batch["cxr"][~batch["has_cxr"]].any()
    assert batch["y"].shape == (8, 25)


@pytest.mark.parametrize("text", ["16,x", "0", "", "16,,32", "-4"])
def test_bad_batch_size_lists_are_one_line_errors(text: str) -> None:
    with pytest.raises(FusebenchError, match="--batch-size"):
        parse_batch_sizes(text)


def test_batch_size_list_is_parsed() -> None:
    assert parse_batch_sizes(" 16, 64") == (16, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_device_is_a_one_line_error(registry: Registry,
                                                   cli_registry: None) -> None:
    with pytest.raises(FusebenchError, match="no CUDA device"):
        _measure(registry, "tiny-paired", device="cuda")
    result = CliRunner().invoke(throughput, ["--method", "tiny-paired",
                                                     "--device", "cuda"])
    assert isinstance(result.exception, FusebenchError)
    assert "--device cuda" in str(result.exception)


def test_end_to_end_needs_data(registry: Registry) -> None:
    with pytest.raises(FusebenchError, match="end-to-end"):
        _measure(registry, "tiny-paired", mode="end-to-end")


def test_command_prints_a_table_and_writes_json_atomically(tmp_path: Path,
                                                           cli_registry: None) -> None:
    out = tmp_path / "records.json"
    result = CliRunner().invoke(throughput, [
        "--method", "tiny-fusion,tiny-paired", "--device", "cpu", "--batch-size", "2,4",
        "--warmup", "0", "--iters", "2", "--image-size", "32", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "in-hospital-mortality throughput (model mode)" in result.output
    payload = json.loads(out.read_text())
    assert payload["schema_version"] == 1
    assert [(r["method"], r["batch_size"]) for r in payload["records"]] == [
        ("tiny-fusion", 2), ("tiny-fusion", 4), ("tiny-paired", 2), ("tiny-paired", 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.json"]


def test_failed_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    out = tmp_path / "records.json"
    write_records(out, [{"method": "a"}])
    with pytest.raises(ValueError, match="not JSON compliant: nan"):
        write_records(out, [{"method": "b", "samples_per_s": float("nan")}])
    assert json.loads(out.read_text())["records"] == [{"method": "a"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.json"]


def test_command_rejects_bad_input_before_measuring(tmp_path: Path, cli_registry: None) -> None:
    runner = CliRunner()
    unknown = runner.invoke(throughput, ["--method", "tiny-fusio", "--device", "cpu"])
    assert isinstance(unknown.exception, FusebenchError)
    assert "tiny-fusion" in str(unknown.exception)  # the suggestion
    bad_json = runner.invoke(throughput, ["--method", "tiny-paired", "--device", "cpu",
                                                  "--json", str(tmp_path)])
    assert bad_json.exit_code != 0
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    unwritable = runner.invoke(throughput, ["--method", "tiny-paired", "--device", "cpu",
                                                    "--json", str(not_a_folder / "x.json")])
    assert isinstance(unwritable.exception, FusebenchError)
    assert "--json" in str(unwritable.exception)


def test_tables_never_mix_hardware(registry: Registry) -> None:
    record = _measure(registry, "tiny-paired")[0]
    other = {**record, "hardware_key": "cuda: Some GPU (cc 9.0) x1, host X"}
    buffer = io.StringIO()
    render_tables([record, other, record], Console(file=buffer, width=250))
    text = buffer.getvalue()
    assert text.count("throughput (model mode) on") == 2
    first, second = text.split("throughput (model mode) on")[1:]
    assert record["hardware_key"] in first and "Some GPU" not in first
    assert "Some GPU" in second


def test_leaderboard_record_uses_the_methods_batch_size(cli_registry: None) -> None:
    from fusebench.registry import get_registry

    method = get_registry().method("tiny-fusion")
    record = leaderboard_record(method, IN_HOSPITAL_MORTALITY, device="cpu", image_size=32)
    assert record["batch_size"] == 6
    assert record["iters"] == 5


@pytest.fixture(scope="module")
def demo_data(demo_tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    config = DataConfig(ehr_root=demo_tiny_root / "ehr", cxr_root=demo_tiny_root / "cxr",
                        image_size=32, cache_dir=tmp_path_factory.mktemp("cache"))
    return prepare(config, IN_HOSPITAL_MORTALITY, progress=False)


def test_end_to_end_reports_data_time_from_the_pipeline(registry: Registry, demo_data) -> None:
    record = _measure(registry, "tiny-fusion", mode="end-to-end", data=demo_data,
                      batch_sizes=(4,), image_size=224)[0]
    assert record["image_size"] == 32  # the data's, not the argument
    assert record["dataset"]["fingerprint"] == demo_data.fingerprint
    assert 0 <= record["cxr_present_fraction"] <= 1
    assert 1 <= record["ehr_bins"] <= 48
    for phase in ("inference", "training"):
        data_ms, compute_ms = record[phase]["data_ms"], record[phase]["compute_ms"]
        assert data_ms["median"] > 0 and data_ms["iqr"] >= 0
        assert record[phase]["ms_per_step"]["median"] >= compute_ms["q1"]


def test_end_to_end_command_on_the_demo(demo_tiny_root: Path, tmp_path: Path,
                                        cli_registry: None) -> None:
    out = tmp_path / "e2e.json"
    result = CliRunner().invoke(throughput, [
        "--method", "tiny-paired", "--device", "cpu", "--mode", "end-to-end",
        "--data-root", str(demo_tiny_root), "--cache-dir", str(tmp_path / "cache"),
        "--image-size", "32", "--warmup", "0", "--iters", "2", "--batch-size", "4",
        "--json", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(out.read_text())["records"]
    assert record["mode"] == "end-to-end"
    assert record["training"]["data_ms"]["median"] > 0
    assert record["dataset"]["is_demo"] is True


@pytest.mark.slow
def test_compile_time_is_reported_apart(registry: Registry) -> None:
    record = _measure(registry, "tiny-paired", compile=True)[0]
    assert record["compile"] is True
    assert record["compile_s"] > 0
    assert record["training"]["first_call_ms"] > record["training"]["ms_per_step"]["median"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_records_device_memory_and_the_gpu(registry: Registry) -> None:
    record = _measure(registry, "tiny-paired", device="cuda", amp="bf16", channels_last=True,
                      batch_sizes=(8,))[0]
    hardware = record["hardware"]
    assert hardware["device_type"] == "cuda"
    assert hardware["device_name"] == torch.cuda.get_device_name(0)
    assert hardware["compute_capability"] and hardware["cuda_version"] == torch.version.cuda
    assert record["memory_measure"].startswith("cuda:")
    assert record["training"]["peak_memory_mib"] > 0
    assert (record["precision"], record["memory_format"]) == ("bf16 autocast", "channels_last")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_medfuse_on_cuda() -> None:
    real = load_registry()
    record = measure_throughput(real.method("medfuse"), IN_HOSPITAL_MORTALITY, device="cuda",
                                batch_sizes=(16,), image_size=64, warmup=1, iters=3,
                                progress=False, registry=real)[0]
    assert record["training"]["samples_per_s"] > 0
