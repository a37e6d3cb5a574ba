"""One training step per registered method, and batch assembly from a prepared tiny demo.

Run (and keep the figures as JSON)::

    .venv/bin/pytest tests/benchmarks/bench_train_step.py --benchmark-only \\
        --benchmark-json bench-train-step.json

Training steps run at a small size: in-hospital mortality, batch 8, 48 hourly bins, 64-px images,
the method's own optimizers and training step (MMTM's three losses included), fp32 on the CPU.
Batch assembly reads one training epoch of the paired and partial cohorts of the tiny demo at
64 px, with the training augmentation and without it (evaluation).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.data import DataConfig, prepare
from benchmark.registry import load_registry
from benchmark.specs import ModelConfig
from benchmark.steps import build_optimizers, training_step
from benchmark.throughput import synthetic_batch
from tasks.builtin import IN_HOSPITAL_MORTALITY

REGISTRY = load_registry()
BATCH_SIZE = 8
IMAGE_SIZE = 64
IHM_BINS = 48


@pytest.mark.parametrize("method_name", sorted(REGISTRY.methods))
def test_training_step(benchmark, method_name: str) -> None:
    method = REGISTRY.method(method_name)
    task = IN_HOSPITAL_MORTALITY
    hparams = method.hparams_for(task.name)
    torch.manual_seed(0)
    model = method.build(ModelConfig(task=task.name, num_classes=task.num_classes,
                                     image_size=IMAGE_SIZE, hparams=hparams))
    model.train()
    optimizers = build_optimizers(REGISTRY, method, model, hparams)
    cxr_fraction = 1.0 if method.default_train_cohort == "paired" else 0.25
    batch = synthetic_batch(task, BATCH_SIZE, ehr_bins=IHM_BINS, image_size=IMAGE_SIZE,
                            cxr_fraction=cxr_fraction)
    loss = benchmark.pedantic(training_step, args=(REGISTRY, method, model, batch, optimizers),
                              rounds=5, warmup_rounds=1)
    assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def demo_data(demo_tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    config = DataConfig(ehr_root=demo_tiny_root / "ehr", cxr_root=demo_tiny_root / "cxr",
                        image_size=IMAGE_SIZE, cache_dir=tmp_path_factory.mktemp("cache"))
    return prepare(config, IN_HOSPITAL_MORTALITY, progress=False)


@pytest.mark.parametrize("augment", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cohort", ["paired", "partial"])
def test_batch_assembly_epoch(benchmark, demo_data, cohort: str, augment: bool) -> None:
    view = demo_data.cohort("train", cohort)

    def one_epoch() -> int:
        return sum(len(batch["y"]) for batch in view.batches(16, shuffle=True, seed=0,
                                                             augment=augment))

    assert benchmark(one_epoch) == len(view)
