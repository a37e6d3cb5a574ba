"""One training step per registered method, and batch assembly from a prepared tiny demo.

Run (and keep the figures as JSON)::

    .venv/bin/pytest tests/benchmarks/bench_train_step.py --benchmark-only \\
        --benchmark-json bench-train-step.json

Training steps run at a small size: in-hospital mortality, batch 8, 48 hourly bins, 64-px images,
the method's own optimizers and training step (MMTM's three losses included), fp32 on the CPU.
Batch assembly reads one training epoch of the paired and partial cohorts of the tiny demo at
64 px, with the training augmentation and without it (evaluation). The EHR encoder benchmark
compares our length-grouped padded LSTM run with the original's packed one on a phenotyping-length batch.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from fusebench.data import DataConfig, prepare
from fusebench.plugins.encoders import EHREncoder
from fusebench.registry import load_registry
from fusebench.specs import ModelConfig
from fusebench.steps import build_optimizers, training_step
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY
from fusebench.throughput import synthetic_batch
from tests.fixtures.packed_lstm import packed_lstm_features

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


@pytest.mark.parametrize("layout", ["ours", "packed"])
def test_ehr_encoder_phenotyping_batch(benchmark, layout: str) -> None:
    """Forward and backward of the phenotyping EHR encoder (2 x 256 LSTM) over one batch of 32
    whole stays, lengths drawn like the demo's (log-normal, median 46 h, 6-300 h): ours runs
    padded, in groups of similar length; the original over a packed batch (same values and
    gradients: tests/test_methods.py)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    lengths = (46 * torch.exp(0.75 * torch.randn(32, generator=generator))).clamp(6, 300).long()
    ehr = torch.randn(32, int(lengths.max()), 76, generator=generator)
    encoder = EHREncoder(76, 256, 2, dropout=0.0)
    encode = encoder if layout == "ours" else partial(packed_lstm_features, encoder)

    def step() -> None:
        encoder.zero_grad()
        encode(ehr, lengths).sum().backward()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
