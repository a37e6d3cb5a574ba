"""The 25 phenotyping labels, exactly as the real listfile header spells them, in header order.

The names come from the packaged ``resources/phenotype_labels.json`` (MedFuse's ``CLASSES``, equal
to the header that ``mimic4extract``'s ``create_phenotyping.py`` writes), so the data layer needs
no task plugin to know them.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from fusebench.errors import FusebenchError

__all__ = ["PHENOTYPE_LABELS", "check_label_header"]


def _load_labels() -> tuple[str, ...]:
    text = resources.files("fusebench.data").joinpath("resources/phenotype_labels.json")
    return tuple(json.loads(text.read_text())["labels"])


PHENOTYPE_LABELS: tuple[str, ...] = _load_labels()


def check_label_header(columns: Sequence[str], labels: Sequence[str], path: Path) -> None:
    """Every name of ``labels`` is a column of a listfile header, spelt exactly.

    A header column that is not expected but resembles a missing label (an abbreviated or
    misspelt phenotype, say) is named beside the expected spelling, so a listfile of another
    extractor version fails with the fix in the message. Other extra columns are allowed.

    Raises:
        FusebenchError: a label column is missing.
    """
    missing = [name for name in labels if name not in columns]
    if not missing:
        return
    extra = [c for c in columns if c not in labels and c not in ("stay", "period_length", "stay_id")]
    close = difflib.get_close_matches(missing[0], extra, n=1, cutoff=0.6)
    found = f"; the header has {close[0]!r} instead" if close else ""
    raise FusebenchError(f"{path} line 1: missing label column {missing[0]!r}{found} (the "
                         f"{len(labels)} label names must be spelt as the real listfile header)")
