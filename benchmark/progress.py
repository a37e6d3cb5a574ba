"""Live progress of long work: rich bars with ETA for runs, epochs and batches.

Without a terminal (``nohup``, CI logs, ``| tee``) rich draws no bars, so a run prints one line
per epoch instead: training loss, validation AUROC, elapsed time and ETA.
"""

from __future__ import annotations

import math
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["RunProgress", "format_duration", "make_progress"]


def make_progress(console: Console | None = None, *, transient: bool = False) -> Progress:
    """A rich progress display with count, elapsed time and ETA columns."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True),
        transient=transient,
    )


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a log line."""
    if not math.isfinite(seconds):
        return "?"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _score(value: float) -> str:
    """An AUROC to 4 places; ``n/a`` when undefined (a validation set with one class)."""
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


class RunProgress:
    """Epoch and batch bars of one training run, with live validation AUROC.

    Args:
        progress: a display to share (the grid's); default a new one on stderr.
        lines: print one line per epoch; default when the display's console is not a terminal
            (where rich draws nothing until the end).
    """

    def __init__(self, progress: Progress | None = None, *, lines: bool | None = None) -> None:
        self.progress = progress or make_progress(transient=True)
        self._owns = progress is None
        self._lines = not self.progress.console.is_terminal if lines is None else lines
        self._epochs: int | None = None
        self._batches: int | None = None
        self._loss = float("nan")
        self._description = ""
        self._total_epochs = 0
        self._first_epoch = 0
        self._started = 0.0
        self._epoch_losses: list[float] = []

    def __enter__(self) -> RunProgress:
        if self._owns:
            self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
        if self._owns:
            self.progress.stop()

    def close(self) -> None:
        """Remove this run's bars (a shared display keeps running)."""
        for task in (self._epochs, self._batches):
            if task is not None:
                self.progress.remove_task(task)
        self._epochs = self._batches = None

    def start_fit(self, description: str, epochs: int, steps_per_epoch: int,
                  completed: int = 0) -> None:
        """Show the bars of a new fit (``completed`` epochs already done when resuming)."""
        self.close()
        self._epochs = self.progress.add_task(f"{description} epochs", total=epochs,
                                              completed=completed, status="")
        self._batches = self.progress.add_task("  batches", total=steps_per_epoch, status="")
        self._description, self._total_epochs, self._first_epoch = description, epochs, completed
        self._started, self._epoch_losses = time.monotonic(), []
        if self._lines:
            resumed = f" (resumed after epoch {completed})" if completed else ""
            self._print(f"{description}: up to {epochs} epochs of {steps_per_epoch} batches"
                        f"{resumed}")

    def advance_batch(self, loss: float) -> None:
        """One training batch done."""
        self._loss = loss
        self._epoch_losses.append(loss)
        self.progress.update(self._batches, advance=1, status=f"loss {loss:.4f}")

    def end_epoch(self, epoch: int, val_auroc: float, best: float) -> None:
        """An epoch with its validation done."""
        scores = f"val AUROC {_score(val_auroc)} (best {_score(best)})"
        self.progress.update(self._epochs, completed=epoch, status=scores)
        self.progress.reset(self._batches, status="")
        if self._lines:
            elapsed = time.monotonic() - self._started
            per_epoch = elapsed / max(epoch - self._first_epoch, 1)
            loss = (sum(self._epoch_losses) / len(self._epoch_losses) if self._epoch_losses
                    else float("nan"))
            # An upper bound: early stopping may end the run sooner.
            eta = per_epoch * max(self._total_epochs - epoch, 0)
            self._print(f"{self._description}: epoch {epoch}/{self._total_epochs} loss "
                        f"{loss:.4f} {scores} elapsed {format_duration(elapsed)} ETA "
                        f"{format_duration(eta)}")
        self._epoch_losses = []

    def _print(self, line: str) -> None:
        # soft_wrap: a console that is not a terminal is 80 columns wide; a log line stays whole.
        self.progress.console.print(line, highlight=False, markup=False, soft_wrap=True)
