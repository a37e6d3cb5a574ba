"""The fit loop: seeded epochs, ReduceLROnPlateau, early stopping, per-epoch checkpoints, resume.

Every epoch adds a row to the run's training curves (train loss, validation loss, macro AUROC
and AUPRC, learning rates), which :func:`save_history` writes beside the run's results.

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
import csv
import io
import math
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
from fusebench.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from fusebench.metrics import auroc, average_precision
from fusebench.progress import RunProgress
from fusebench.steps import batch_to_device

__all__ = [
    "HISTORY_FILES",
    "FitOutcome",
    "StepFunction",
    "epoch_seed",
    "fit",
    "macro_auprc",
    "macro_auroc",
    "predict",
    "save_history",
]

HISTORY_FILES = ("history.json", "history.csv", "history.png")

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
        history: per epoch: train loss, validation loss, macro AUROC and AUPRC, learning
            rates (one per parameter group of every optimizer, after the epoch's scheduler
            step).
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
        logits = model(batch_to_device(batch, device))
        probabilities.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(batch["y"].numpy())
    width = view.labels.shape[1]
    if not probabilities:
        return np.zeros((0, width), np.float32), np.zeros((0, width), np.float32)
    return (distributed.gather_shards(np.concatenate(probabilities), len(view)),
            distributed.gather_shards(np.concatenate(labels), len(view)))


def macro_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Unweighted mean AUROC over the labels that have both classes (NaN if none has)."""
    return _macro(auroc, labels, probabilities)


def macro_auprc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Unweighted mean AUPRC over the labels that have both classes (NaN if none has)."""
    return _macro(average_precision, labels, probabilities)


def _macro(metric: Callable[[np.ndarray, np.ndarray], float], labels: np.ndarray,
           probabilities: np.ndarray) -> float:
    values = [
        metric(labels[:, c], probabilities[:, c])
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
            the validation loss; ``lr_factor`` 1.0: constant learning rate, no scheduler, as
            the original's MMTM and DAFT trainers).
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
    lr_factor = float(hparams.get("lr_factor", 0.5))
    schedulers = [] if lr_factor == 1.0 else [
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=lr_factor, patience=int(hparams.get("lr_patience", 10)),
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
        val_auprc = macro_auprc(labels, probabilities)
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
            "val_auprc": None if np.isnan(val_auprc) else val_auprc,
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
        loss = step(model, batch_to_device(batch, device), optimizers)
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


def save_history(history: list[dict[str, Any]], folder: Path, title: str = "") -> list[Path]:
    """Write the training curves of a run into ``folder``, each file atomically.

    ``history.json`` (the rows of :attr:`FitOutcome.history`), ``history.csv`` (one row per
    epoch; ``lr`` is the first parameter group's, ``lr_all`` every group's joined by ``;``) and,
    when matplotlib is installed, ``history.png`` (losses, validation AUROC/AUPRC, learning rate
    per epoch, the best epoch marked).

    Args:
        history: per-epoch rows as :func:`fit` records them.
        folder: the run folder.
        title: heading of the plot, e.g. the method, task and cohort.

    Returns:
        The files written.
    """
    json_path, csv_path, png_path = (folder / name for name in HISTORY_FILES)
    atomic_write_json(json_path, history)
    buffer = io.StringIO()
    columns = ["epoch", "train_loss", "val_loss", "val_auroc", "val_auprc", "lr", "lr_all"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        rates = list(row.get("lr", []))
        writer.writerow({**{key: row.get(key) for key in columns[:5]},
                         "lr": rates[0] if rates else None,
                         "lr_all": ";".join(f"{rate:.6g}" for rate in rates)})
    atomic_write_text(csv_path, buffer.getvalue())
    written = [json_path, csv_path]
    if history and _plot_history(history, png_path, title):
        written.append(png_path)
    return written


def _plot_history(history: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Draw the curves into ``path``; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False

    def series(key: str) -> list[float]:
        return [math.nan if row.get(key) is None else float(row[key]) for row in history]

    epochs = [row["epoch"] for row in history]
    auroc_values = series("val_auroc")
    best = epochs[int(np.nanargmax(auroc_values))] if not np.all(np.isnan(auroc_values)) else None
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(epochs, series("train_loss"), marker="o", label="train")
    axes[0].plot(epochs, series("val_loss"), marker="o", label="validation")
    axes[0].set_title("BCE loss")
    axes[1].plot(epochs, auroc_values, marker="o", label="AUROC")
    axes[1].plot(epochs, series("val_auprc"), marker="o", label="AUPRC")
    axes[1].set_title("validation (macro)")
    axes[2].plot(epochs, [row["lr"][0] if row.get("lr") else math.nan for row in history],
                 marker="o")
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", linewidth=1)
    axes[0].legend()
    axes[1].legend()
    figure.suptitle(title + (f" (best epoch {best}, dotted)" if best is not None else ""))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return True
