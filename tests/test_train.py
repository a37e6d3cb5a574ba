"""fit(): model selection on validation macro AUROC, early stopping, ReduceLROnPlateau, resume.

The cohorts here are tiny in-memory tables served the way fit() consumes a cohort view
(``len``, ``labels``, ``batches(...)``). Most tests train a model whose validation scores a
scripted training step sets per epoch, so each epoch's validation AUROC and loss are chosen by the
test: with 4 negative and 4 positive validation rows, AUROC is the share of the 16
(positive, negative) pairs ranked correctly, so ``_scores_with_auroc(k)`` gives exactly k/16.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fusebench.steps import default_training_step
from fusebench.train import epoch_seed, fit

SEED = 7
VAL_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32)[:, None]


class TableView:
    """A cohort-like view over fixed features ``x`` and labels ``y`` (one label column).

    Each batch carries ``row`` (the row's index, for the scripted model) and ``epoch`` (the epoch
    fit() is training, recovered from the seed it passes: ``epoch_seed(SEED, epoch)``).
    """

    def __init__(self, labels: np.ndarray, features: np.ndarray | None = None) -> None:
        self.labels = labels.astype(np.float32)
        self.features = (np.zeros((len(labels), 1), np.float32) if features is None
                         else features.astype(np.float32))
        self._epoch_of_seed = {epoch_seed(SEED, epoch): epoch for epoch in range(1, 100)}

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, augment: bool = False,
                device: str = "cpu", rank: int = 0,
                world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(int(seed))
        order = (torch.randperm(len(self), generator=generator) if shuffle
                 else torch.arange(len(self)))
        epoch = self._epoch_of_seed.get(int(seed), 0)
        for start in range(0, len(order), batch_size):
            picked = order[start:start + batch_size]
            yield {"x": torch.from_numpy(self.features[picked.numpy()]),
                   "row": picked,
                   "epoch": torch.full((len(picked),), epoch),
                   "y": torch.from_numpy(self.labels[picked.numpy()])}


class ScriptedScores(nn.Module):
    """Logit of validation row i = ``scores[i]``; training only overwrites ``scores``."""

    def __init__(self) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.zeros(len(VAL_LABELS)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scores[batch["row"]].unsqueeze(1)


class ScriptedStep:
    """A training step that sets the model's validation scores to ``script[epoch - 1]``.

    Records the epochs it trained and the learning rate each epoch trained with.
    """

    def __init__(self, script: Sequence[np.ndarray]) -> None:
        self.script = script
        self.epochs: list[int] = []
        self.lrs: list[float] = []

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor],
                 optimizers: list[torch.optim.Optimizer]) -> torch.Tensor:
        epoch = int(batch["epoch"][0])
        self.epochs.append(epoch)
        self.lrs.append(optimizers[0].param_groups[0]["lr"])
        with torch.no_grad():
            model.scores.copy_(torch.from_numpy(self.script[epoch - 1]))
        return torch.tensor(0.0)


def _scores_with_auroc(pairs_right: int, shift: float = 0.0) -> np.ndarray:
    """Validation scores ranking ``pairs_right`` of the 16 (positive, negative) pairs correctly.

    Negatives score 0, 1, 2, 3; positive i scores just above ``c_i`` negatives, sum(c_i) =
    ``pairs_right``. ``shift`` moves every score (same AUROC, different weights).
    """
    counts = [min(4, max(0, pairs_right - 4 * i)) for i in range(4)]
    return np.array([0, 1, 2, 3] + [c - 0.5 for c in counts], np.float32) + shift


def _fit_scripted(script: Sequence[np.ndarray], **hparams) -> tuple:
    model = ScriptedScores()
    step = ScriptedStep(script)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train = TableView(np.array([0, 1], np.float32)[:, None])
    outcome = fit(model, train, TableView(VAL_LABELS),
                  {"epochs": len(script), "batch_size": 8, **hparams},
                  optimizers=[optimizer], step=step, device=torch.device("cpu"), seed=SEED)
    return outcome, model, step, optimizer


def test_scripted_scores_give_the_intended_auroc() -> None:
    # The helper the other tests rely on: k/16 pairs right -> macro AUROC k/16.
    from fusebench.train import macro_auroc

    for pairs_right in (0, 5, 8, 14, 16):
        scores = _scores_with_auroc(pairs_right)
        assert macro_auroc(VAL_LABELS, scores[:, None]) == pytest.approx(pairs_right / 16)


def test_fit_returns_the_weights_of_the_best_validation_epoch_not_the_last() -> None:
    # AUROC per epoch 6/16, 14/16, 10/16, 8/16, 12/16: the best is epoch 2 of 5.
    script = [_scores_with_auroc(k) for k in (6, 14, 10, 8, 12)]
    outcome, model, step, _ = _fit_scripted(script, patience=15)

    assert step.epochs == [1, 2, 3, 4, 5]
    assert outcome.epochs_run == 5
    assert outcome.best_epoch == 2
    assert outcome.best_score == pytest.approx(14 / 16)
    np.testing.assert_array_equal(outcome.best_state["scores"].numpy(), script[1])
    # The model itself ends at the last epoch: best_state is a copy, not a view of it.
    np.testing.assert_array_equal(model.scores.detach().numpy(), script[4])
    assert [row["val_auroc"] for row in outcome.history] == pytest.approx(
        [6 / 16, 14 / 16, 10 / 16, 8 / 16, 12 / 16])


def test_early_stopping_stops_after_patience_epochs_without_a_better_auroc() -> None:
    # Best at epoch 2 (12/16); epochs 3 and 4 worse; epoch 5 only equals it (ties do not count
    # as better, as in MedFuse's `if auroc > best_auroc`), so with patience 3 training stops
    # after epoch 5 and never sees epoch 6's perfect score.
    script = [_scores_with_auroc(8), _scores_with_auroc(12), _scores_with_auroc(10),
              _scores_with_auroc(10), _scores_with_auroc(12, shift=1.0), _scores_with_auroc(16),
              _scores_with_auroc(16)]
    outcome, _, step, _ = _fit_scripted(script, patience=3)

    assert step.epochs == [1, 2, 3, 4, 5]
    assert outcome.epochs_run == 5
    assert outcome.best_epoch == 2
    np.testing.assert_array_equal(outcome.best_state["scores"].numpy(), script[1])


def test_an_improvement_restarts_the_patience_count() -> None:
    # patience 2: epoch 2 is worse (1 without improvement), epoch 3 is the new best (count back
    # to 0), epochs 4 and 5 are worse: stop after 5. Without the reset it would stop after 4.
    script = [_scores_with_auroc(k) for k in (8, 6, 10, 4, 4, 16, 16)]
    outcome, _, step, _ = _fit_scripted(script, patience=2)

    assert step.epochs == [1, 2, 3, 4, 5]
    assert outcome.best_epoch == 3


def test_learning_rate_drops_by_lr_factor_after_lr_patience_epochs_without_lower_val_loss() -> None:
    # The same scores every epoch: the validation loss never improves after epoch 1.
    # torch's ReduceLROnPlateau (as in MedFuse, mode "min" on the validation loss) reduces once
    # more than `patience` epochs in a row were bad, then restarts the count
    # (https://docs.pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html):
    # with lr_patience 2, epochs 2-4 are bad -> reduced after epoch 4; epochs 5-7 -> after 7.
    script = [_scores_with_auroc(16)] * 8
    outcome, _, step, optimizer = _fit_scripted(script, patience=100, lr_patience=2,
                                                lr_factor=0.25)

    assert step.lrs == pytest.approx([0.1] * 4 + [0.025] * 3 + [0.00625])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.00625)
    assert [row["lr"][0] for row in outcome.history] == pytest.approx(step.lrs[1:] + [0.00625])


def test_learning_rate_stays_while_the_validation_loss_improves() -> None:
    # Ever more confident correct scores: the validation loss falls every epoch (AUROC is 1.0
    # throughout, so a scheduler stepped on the AUROC or on the constant training loss would
    # reduce the rate here).
    signs = np.where(VAL_LABELS[:, 0] > 0, 1.0, -1.0).astype(np.float32)
    script = [signs * epoch for epoch in range(1, 9)]
    _, _, step, optimizer = _fit_scripted(script, patience=100, lr_patience=2, lr_factor=0.25)

    assert step.lrs == [0.1] * 8
    assert optimizer.param_groups[0]["lr"] == 0.1


class Linear(nn.Module):
    """A trainable logistic regression on ``x``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(batch["x"])


class CountingStep:
    """The default training step, counting the epochs it trains."""

    def __init__(self) -> None:
        self.epochs: set[int] = set()

    def __call__(self, model, batch, optimizers) -> torch.Tensor:
        self.epochs.add(int(batch["epoch"][0]))
        return default_training_step(model, batch, optimizers)


def _real_fit(epochs: int, checkpoint: Path | None, resume: bool) -> tuple:
    torch.manual_seed(0)
    model = Linear(3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    rng = np.random.default_rng(0)
    x_train, x_val = rng.normal(size=(40, 3)), rng.normal(size=(8, 3))
    train = TableView((x_train[:, :1] + rng.normal(size=(40, 1)) > 0), x_train)
    val = TableView(VAL_LABELS, x_val)
    step = CountingStep()
    outcome = fit(model, train, val,
                  {"epochs": epochs, "batch_size": 8, "patience": 100, "lr_patience": 0},
                  optimizers=[optimizer], step=step, device=torch.device("cpu"), seed=SEED,
                  checkpoint=checkpoint, resume=resume)
    return outcome, step


def test_resumed_fit_continues_exactly_as_the_uninterrupted_one(tmp_path: Path) -> None:
    # Adam's moments make the optimizer state matter; with lr_patience 0 the validation loss
    # of epoch 4 (worse than epoch 3's in this setting) halves the rate only if the scheduler
    # remembers epoch 3's loss, so its state must be restored too.
    uninterrupted, _ = _real_fit(5, None, resume=False)
    checkpoint = tmp_path / "fit.pt"
    _real_fit(3, checkpoint, resume=False)
    resumed, step = _real_fit(5, checkpoint, resume=True)

    assert step.epochs == {4, 5}
    assert resumed.epochs_run == 5
    assert len({row["lr"][0] for row in uninterrupted.history}) > 1  # the scheduler acted
    assert resumed.best_epoch == uninterrupted.best_epoch
    for key in ("train_loss", "val_loss", "val_auroc", "lr"):
        assert [row[key] for row in resumed.history] == [
            row[key] for row in uninterrupted.history], key
    for name, tensor in uninterrupted.best_state.items():
        torch.testing.assert_close(resumed.best_state[name], tensor, rtol=0, atol=0)


def test_resume_without_a_checkpoint_starts_from_epoch_one(tmp_path: Path) -> None:
    outcome, step = _real_fit(2, tmp_path / "absent.pt", resume=True)

    assert step.epochs == {1, 2}
    assert outcome.epochs_run == 2
    assert (tmp_path / "absent.pt").exists()
