"""Live progress of long work: rich bars with ETA for runs, epochs and batches."""

from __future__ import annotations

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

__all__ = ["RunProgress", "make_progress"]


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


class RunProgress:
    """Epoch and batch bars of one training run, with live validation AUROC."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress or make_progress(transient=True)
        self._owns = progress is None
        self._epochs: int | None = None
        self._batches: int | None = None
        self._loss = float("nan")

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

    def advance_batch(self, loss: float) -> None:
        """One training batch done."""
        self._loss = loss
        self.progress.update(self._batches, advance=1, status=f"loss {loss:.4f}")

    def end_epoch(self, epoch: int, val_auroc: float, best: float) -> None:
        """An epoch with its validation done."""
        self.progress.update(self._epochs, completed=epoch,
                             status=f"val AUROC {val_auroc:.4f} (best {best:.4f})")
        self.progress.reset(self._batches, status="")
