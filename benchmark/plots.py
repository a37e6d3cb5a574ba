"""Forest plots of a leaderboard: AUROC and AUPRC with their 95% CIs per method and test cohort.

matplotlib is an optional extra (``pip install 'fusebench[plot]'``); without it no plot is drawn
and nothing else changes: the JSON and Markdown tables never depend on it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fusebench.fileio import atomic_write_bytes
from fusebench.leaderboard import summary_rows
from fusebench.specs import COHORTS

__all__ = ["save_forest_plot"]

_METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"))


def save_forest_plot(board: dict[str, Any], path: Path) -> Path | None:
    """Draw ``board`` as a forest plot into ``path`` (PNG), atomically.

    One panel per test cohort (rows) and metric (columns); one line per method and training
    cohort, ranked as in the tables, with the point estimate and its bootstrap 95% CI. With
    several seeds, each seed's CI is drawn faintly and the marker is the mean across seeds.

    Args:
        board: a leaderboard as written by :func:`fusebench.leaderboard.rebuild_leaderboard`.
        path: the PNG file to write.

    Returns:
        ``path``, or None when matplotlib is not installed or the board has no entry.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = {cohort: summary_rows(board, cohort) for cohort in COHORTS}
    height = max(len(rows) for rows in panels.values())
    if height == 0:
        return None
    figure, axes = plt.subplots(len(COHORTS), len(_METRICS), squeeze=False,
                                figsize=(10, 1.2 + 0.35 * height * len(COHORTS)))
    for row, cohort in enumerate(COHORTS):
        entries = panels[cohort]
        names = [f"{r['method']} ({r['train_cohort']})" for r in entries]
        for column, (key, title) in enumerate(_METRICS):
            ax = axes[row][column]
            for y, entry in enumerate(entries):
                several = len(entry["per_seed"]) > 1
                for seed in entry["per_seed"]:
                    if seed[key]["value"] is not None and seed[key]["ci"] is not None:
                        ax.plot(seed[key]["ci"], [y, y], color="tab:blue",
                                linewidth=1.0 if several else 1.5,
                                alpha=0.35 if several else 1.0)
                if entry[f"{key}_mean"] is not None:
                    ax.plot([entry[f"{key}_mean"]], [y], "o", color="tab:blue", markersize=4)
            ax.set_yticks(range(len(entries)), names if column == 0 else [""] * len(entries))
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{title}, test cohort {cohort}", fontsize=9)
    demo = " (synthetic demo data, not MIMIC)" if board["dataset"].get("is_demo") else ""
    figure.suptitle(f"{board['task']} on {board['dataset']['name']}{demo}", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path
