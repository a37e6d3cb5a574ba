"""torchrun: one run over two CPU processes (gloo) matches a single-process run.

This module doubles as the plugin the child processes load (``--plugin tests.test_distributed``):
two dropout-free EHR methods, ``mean-ehr`` (the default training step, through DDP) and
``two-step-ehr`` (its own training-step hook with two optimizers, fed the plain module, whose
optimizers average the gradients across ranks). Without dropout, two ranks that each step on half
of every global batch compute the single process's gradients up to float rounding (see
``test_torchrun_matches_a_single_process``), so a broken shard, gradient average or gather shows
as a difference far above the tolerance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fusebench import MethodSpec, distributed, hookimpl
from fusebench.checkpoints import load_checkpoint
from fusebench.data import DataConfig, PreparedData, prepare
from fusebench.errors import FusebenchError
from fusebench.registry import get_registry
from fusebench.results import read_result

PLUGIN = "tests.test_distributed"
ROOT = Path(__file__).resolve().parents[1]
# Phenotyping, not in-hospital mortality: the tiny demo's IHM validation cohort has no positive,
# so its validation AUROC is undefined and every run would keep epoch 1; phenotyping's is defined,
# so early stopping and the learning-rate schedule take real decisions on the gathered metrics.
TASK = "phenotyping"
# See test_torchrun_matches_a_single_process for why these.
AUROC_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-4


class MeanEHR(nn.Module):
    """Time-averaged EHR features through a two-layer MLP, without dropout (deterministic)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(config.ehr_input_dim, 16), nn.ReLU())
        self.head = nn.Linear(16, config.num_classes)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ehr = batch["ehr"]
        return self.head(self.hidden(ehr.sum(dim=1) / batch["ehr_lengths"][:, None].to(ehr)))


class TwoStepEHR(MeanEHR):
    """:class:`MeanEHR` trained by a custom step: hidden layer, then head, one optimizer each.

    ``custom_steps`` counts the hook's steps, in the checkpoint's model state.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.register_buffer("custom_steps", torch.zeros((), dtype=torch.int64))


def two_step_optimizers(model: TwoStepEHR, hparams: Mapping[str, Any]) -> list[torch.optim.Adam]:
    return [torch.optim.Adam(part.parameters(), lr=float(hparams["lr"]))
            for part in (model.hidden, model.head)]


def two_step_training_step(model: nn.Module, batch: Mapping[str, torch.Tensor],
                           optimizers: Sequence[torch.optim.Optimizer]) -> torch.Tensor:
    # Were it handed the DDP wrapper, this would fail (DDP has no custom_steps attribute).
    model.custom_steps += 1
    for optimizer in optimizers:
        model.zero_grad(set_to_none=True)
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), batch["y"])
        loss.backward()
        optimizer.step()
    return loss.detach()


@hookimpl
def fusebench_register_methods() -> list[MethodSpec]:
    common = {"description": "test method", "reference": "-", "handles_missing_cxr": True,
              "default_train_cohort": "partial", "train_cohorts": ("partial",),
              "hparams": {"*": {}}}
    return [
        MethodSpec(name="mean-ehr", build=MeanEHR, **common),
        MethodSpec(name="two-step-ehr", build=TwoStepEHR,
                   configure_optimizers=two_step_optimizers,
                   training_step=two_step_training_step, **common),
    ]


def fusebench_run(processes: int, method: str, data: Path, out: Path, *extra: str,
                  task: str = TASK) -> None:
    """``fusebench run`` on the tiny demo, in one process or under torchrun with ``processes``."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                 str(processes), "--standalone"] if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "fusebench", "--plugin", PLUGIN, "run", "--task", task,
               "--method", method, "--data-root", str(data), "--out", str(out),
               "--preset", "quick", "--device", "cpu", "--n-resamples", "50", *extra]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert process.returncode == 0, process.stderr[-3000:]


def tiny_data(root: Path, task: str) -> PreparedData:
    """The tiny demo's data for ``task`` as the quick preset prepares it."""
    return prepare(DataConfig(root / "ehr", root / "cxr", image_size=48, is_demo=True),
                   get_registry().task(task), progress=False)


def files_under(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mean-ehr", "two-step-ehr"])
def test_torchrun_matches_a_single_process(demo_tiny_root, tmp_path, method):
    """Two gloo ranks score every test stay once, write what one process writes, and match it.

    Each rank steps on ``batch_size // 2`` rows of its shard, so a global batch holds the rows of
    the single process's batch: gradients, validation decisions and test predictions agree up to
    float rounding. Tolerance: macro AUROC and every probability within 1e-4. Measured (both
    methods, both test cohorts): equal AUROCs, probabilities equal to the 1e-7 the CSV keeps;
    with the gradient averaging switched off (each rank trains on its own shard) they differ by
    up to 5.8e-3 and 1.5e-2. 1e-4 leaves room for other CPUs' and BLAS builds' rounding and stays
    50x below that broken case.
    """
    single, dual = tmp_path / "single", tmp_path / "dual"
    fusebench_run(1, method, demo_tiny_root, single)
    fusebench_run(2, method, demo_tiny_root, dual)
    assert files_under(dual) == files_under(single)  # rank 1 wrote nothing of its own
    folder = Path("demo") / TASK / method / "partial" / "seed0"
    for cohort in ("paired", "partial"):
        expected = pd.read_csv(single / folder / f"predictions-{cohort}.csv")
        actual = pd.read_csv(dual / folder / f"predictions-{cohort}.csv")
        assert actual["stay_id"].is_unique
        assert actual["stay_id"].tolist() == expected["stay_id"].tolist()
        pd.testing.assert_frame_equal(actual.filter(like="true:"), expected.filter(like="true:"))
        probabilities = actual.filter(like="prob:").to_numpy()
        assert np.abs(probabilities - expected.filter(like="prob:").to_numpy()).max() \
            <= PROBABILITY_TOLERANCE
        one, two = (read_result(out / folder / f"result-{cohort}.json") for out in (single, dual))
        assert (one["training"]["world_size"], two["training"]["world_size"]) == (1, 2)
        assert two["test_cohort"]["n"] == len(actual) == one["test_cohort"]["n"]
        assert two["training"]["best_epoch"] == one["training"]["best_epoch"]
        assert two["training"]["epochs_run"] == one["training"]["epochs_run"]
        macro = [result["metrics"]["auroc"]["macro"]["value"] for result in (one, two)]
        assert abs(macro[0] - macro[1]) <= AUROC_TOLERANCE, macro
    states = [load_checkpoint(out / folder / "checkpoint.pt")["model"] for out in (single, dual)]
    if method == "two-step-ehr":  # the hook ran on the plain module, as many times
        assert states[1]["custom_steps"] == states[0]["custom_steps"] > 0


@pytest.mark.slow
def test_mmtm_with_its_pretraining_stages_runs_under_torchrun(demo_tiny_root, tmp_path):
    """MMTM under two ranks: its three-optimizer step (gradients averaged by the optimizers), the
    ResNet's batch-norm buffers, and two pretraining stages that both ranks train and rank 0 saves
    (the radiology cache built by rank 0 first). One epoch at 48 px: about 30 s on 2 cores."""
    task = "in-hospital-mortality"
    fusebench_run(2, "mmtm", demo_tiny_root, tmp_path, "--epochs", "1", task=task)
    assert len(list((tmp_path / "stages").rglob("*.pt"))) == 2
    data = tiny_data(demo_tiny_root, task)
    folder = tmp_path / "demo" / task / "mmtm" / "paired" / "seed0"
    for cohort in ("paired", "partial"):
        predictions = pd.read_csv(folder / f"predictions-{cohort}.csv")
        assert predictions["stay_id"].tolist() == data.cohort("test", cohort).stay_ids.tolist()
        assert read_result(folder / f"result-{cohort}.json")["training"]["world_size"] == 2


@pytest.mark.parametrize("size", [12, 13, 1, 0])
def test_shards_cover_every_index_with_padding_from_the_start(size):
    order = np.random.default_rng(0).permutation(size)
    shards = [distributed.shard_indices(order, rank, 4) for rank in range(4)]
    per_rank = -(-size // 4)
    assert all(len(shard) == per_rank for shard in shards)
    taken = np.concatenate(shards)
    assert sorted(set(taken.tolist())) == sorted(order.tolist())
    padding = per_rank * 4 - size
    interleaved = np.stack(shards, axis=1).reshape(-1)  # how gather_shards reassembles them
    np.testing.assert_array_equal(interleaved[:size], order)
    np.testing.assert_array_equal(interleaved[size:], np.tile(order, 4)[:padding])  # cyclic


def test_each_rank_draws_the_same_order_and_takes_its_own_rows(demo_tiny_root):
    data = tiny_data(demo_tiny_root, TASK)
    view = data.cohort("train", "partial")
    by_rank = [[batch["stay_id"].tolist() for batch in
                view.batches(16, shuffle=True, seed=3, rank=rank, world_size=2)]
               for rank in range(2)]
    assert len(by_rank[0]) == len(by_rank[1])  # DDP needs as many steps on every rank
    rows = [stay for batches in by_rank for batch in batches for stay in batch]
    assert len(view) % 2 == 0 and sorted(rows) == sorted(view.stay_ids.tolist())
    # Rank batches of 16 make up the single process's batches of 32, row for row.
    global_batches = [set(a) | set(b) for a, b in zip(*by_rank, strict=True)]
    assert global_batches == [set(batch["stay_id"].tolist())
                              for batch in view.batches(32, shuffle=True, seed=3)]


@pytest.mark.parametrize("device, message", [
    ("mps", "cpu \\(gloo\\) and cuda \\(nccl\\) only"),
    ("cuda:1", "use --device cuda"),
])
def test_devices_torchrun_cannot_use_are_one_line_errors(monkeypatch, device, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FusebenchError, match=message), distributed.process_group(device):
        pass


def test_a_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group("cpu"):
        assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
        assert distributed.from_main(json.dumps, [1]) == "[1]"
