"""The fit loop: seeded epochs, ReduceLROnPlateau, early stopping, per-epoch checkpoints, resume.

Each epoch re-seeds torch from ``(seed, epoch)`` and the batch order from the same pair, so a run
resumed from the checkpoint of epoch k continues exactly as the uninterrupted run would have.
Validation computes point metrics only (macro AUROC and loss); the bootstrap runs once, on the
test predictions.

Under torchrun (see :mod:`fusebench.distributed`) the ranks train one model: each epoch's order is
sharded over the ranks, each rank steps on ``batch_size // world_size`` rows (at least 1) so that
one optimisation step sees the recipe's global batch and an epoch takes as many steps as in a
single process (the learning rate stays the recipe's); validation is gathered so that every rank
takes the same early-stopping and learning-rate decisions; rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusebench import distributed
from fusebench.checkpoints import load_checkpoint_if_exists, save_checkpoint
from fusebench.metrics import auroc
from fusebench.progress import RunProgress

__all__ = ["FitOutcome", "StepFunction", "epoch_seed", "fit", "macro_auroc", "predict"]

# step(model, batch, optimizers) -> detached loss; under torchrun the model is DDP-wrapped
StepFunction = Callable[[nn.Module, Mapping[str, torch.Tensor], list], torch.Tensor]


@dataclass
class FitOutcome:
    """What :func:`fit` returns.

    Attributes:
        best_state: model state dict at the best validation epoch.
        best_epoch: that epoch (1-based; 0 when no epoch ran).
        best_score: its validation macro AUROC.
        epochs_run: epochs completed, including those before a resume.
        seconds: training wall time, including time before a resume.
        history: per epoch: train loss, validation loss and AUROC, learning rates.
    """

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: distinct per (seed, epoch), independent of what ran before."""
    return seed * 100_003 + epoch


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    # Lengths stay on the CPU: pack_padded_sequence requires it.
    return {
        key: value if key == "ehr_lengths" else value.to(device, non_blocking=True)
        for key, value in batch.items()
    }


@torch.inference_mode()
def predict(
    model: nn.Module, view: Any, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and labels of every row of ``view``, in the view's order.

    Under torchrun each rank predicts its shard and every rank returns all rows, each once.
    """
    model.eval()
    rank, world_size = distributed.rank(), distributed.world_size()
    probabilities, labels = [], []
    for batch in view.batches(batch_size, shuffle=False, augment=False, rank=rank,
                              world_size=world_size):
        logits = model(_to_device(batch, device))
        probabilities.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(batch["y"].numpy())
    width = view.labels.shape[1]
    if not probabilities:
        return np.zeros((0, width), np.float32), np.zeros((0, width), np.float32)
    return (distributed.gather_shards(np.concatenate(probabilities), len(view)),
            distributed.gather_shards(np.concatenate(labels), len(view)))


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Unweighted mean AUROC over the labels that have both classes (NaN if none has)."""
    values = [
        auroc(labels[:, c], probabilities[:, c])
        for c in range(labels.shape[1])
        if 0 < labels[:, c].sum() < len(labels)
    ]
    return float(np.mean(values)) if values else float("nan")


def _validation_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit(
    model: nn.Module,
    train: Any,
    val: Any,
    hparams: Mapping[str, Any],
    *,
    optimizers: list[torch.optim.Optimizer],
    step: StepFunction,
    device: torch.device,
    seed: int,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: RunProgress | None = None,
    description: str = "training",
) -> FitOutcome:
    """Train ``model`` on ``train``, selecting the epoch with the best validation macro AUROC.

    Args:
        model: the model, already on ``device``; under torchrun ``step`` gets it wrapped by
            :func:`fusebench.distributed.wrap_model`.
        train: a cohort view with ``batches(...)``, ``labels``.
        val: the validation view.
        hparams: ``epochs``, ``batch_size``, ``patience`` (early stopping, epochs without a
            better validation AUROC), ``lr_patience`` and ``lr_factor`` (ReduceLROnPlateau on
            the validation loss).
        optimizers: the optimizers ``step`` uses; each gets its own scheduler.
        step: one training step, returning the detached loss.
        device: where the model lives.
        seed: run seed; every epoch is seeded from it.
        checkpoint: where the state after each epoch is saved (atomically, by rank 0);
            None: nowhere.
        resume: continue from ``checkpoint`` if it exists.
        progress: live progress display.
        description: label of the progress bar.

    Returns:
        The :class:`FitOutcome`.
    """
    epochs = int(hparams.get("epochs", 50))
    batch_size = int(hparams.get("batch_size", 16))
    patience = int(hparams.get("patience", 15))
    schedulers = [
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=float(hparams.get("lr_factor", 0.5)),
            patience=int(hparams.get("lr_patience", 10)),
        )
        for optimizer in optimizers
    ]
    state = {
        "epoch": 0, "best_score": -np.inf, "best_epoch": 0, "since_best": 0, "seconds": 0.0,
        "history": [], "best_state": copy.deepcopy(model.state_dict()),
    }
    if resume and checkpoint is not None:
        saved = distributed.from_main(load_checkpoint_if_exists, checkpoint)
        if saved is not None:
            state = _restore(saved, model, optimizers, schedulers)
    trained = distributed.wrap_model(model)
    world_size = distributed.world_size()
    rank_batch_size = max(1, batch_size // world_size)
    rows_per_rank = -(-len(train) // world_size)
    steps_per_epoch = -(-rows_per_rank // rank_batch_size)
    if progress is not None:
        progress.start_fit(description, epochs, steps_per_epoch, completed=state["epoch"])
    while state["epoch"] < epochs and state["since_best"] < patience:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        train_loss = _train_epoch(trained, train, rank_batch_size, optimizers, step, device,
                                  epoch_seed(seed, epoch), progress)
        # The ranks' losses are means over equally many batches: their mean is the epoch's.
        train_loss = float(np.mean(distributed.all_gather_object(train_loss)))
        distributed.broadcast_buffers(model)
        probabilities, labels = predict(model, val, batch_size, device)
        val_loss = _validation_loss(labels, probabilities)
        val_auroc = macro_auroc(labels, probabilities)
        for scheduler in schedulers:
            scheduler.step(val_loss)
        score = -np.inf if np.isnan(val_auroc) else val_auroc
        if score > state["best_score"] or state["best_epoch"] == 0:
            state.update(best_score=score, best_epoch=epoch, since_best=0,
                         best_state=copy.deepcopy(model.state_dict()))
        else:
            state["since_best"] += 1
        state["seconds"] += time.perf_counter() - started
        state["epoch"] = epoch
        state["history"].append({
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_auroc": None if np.isnan(val_auroc) else val_auroc,
            "lr": [group["lr"] for o in optimizers for group in o.param_groups],
        })
        if checkpoint is not None:
            distributed.from_main(_save, checkpoint, state, model, optimizers, schedulers)
        if progress is not None:
            progress.end_epoch(epoch, val_auroc, state["best_score"])
    return FitOutcome(
        best_state=state["best_state"],
        best_epoch=state["best_epoch"],
        best_score=float(state["best_score"]),
        epochs_run=state["epoch"],
        seconds=state["seconds"],
        history=state["history"],
    )


def _train_epoch(
    model: nn.Module, train: Any, batch_size: int, optimizers: list, step: StepFunction,
    device: torch.device, seed: int, progress: RunProgress | None,
) -> float:
    model.train()
    rank, world_size = distributed.rank(), distributed.world_size()
    torch.manual_seed(distributed.shard_seed(seed, rank, world_size))
    losses = []
    for batch in train.batches(batch_size, shuffle=True, seed=seed, augment=True, rank=rank,
                               world_size=world_size):
        loss = step(model, _to_device(batch, device), optimizers)
        losses.append(float(loss))
        if progress is not None:
            progress.advance_batch(losses[-1])
    return float(np.mean(losses)) if losses else float("nan")


def _save(path: Path, state: dict, model: nn.Module, optimizers: list, schedulers: list) -> None:
    save_checkpoint(path, {
        **state,
        "model": model.state_dict(),
        "optimizers": [o.state_dict() for o in optimizers],
        "schedulers": [s.state_dict() for s in schedulers],
    })


def _restore(saved: dict, model: nn.Module, optimizers: list, schedulers: list) -> dict:
    model.load_state_dict(saved.pop("model"))
    for optimizer, optimizer_state in zip(optimizers, saved.pop("optimizers"), strict=True):
        optimizer.load_state_dict(optimizer_state)
    for scheduler, scheduler_state in zip(schedulers, saved.pop("schedulers"), strict=True):
        scheduler.load_state_dict(scheduler_state)
    return saved
