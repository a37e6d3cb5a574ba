"""Raw MIMIC-IV (v1.0, v2.x, v3.1) -> the EHR root fusebench reads (``fusebench data extract``).

Needs the optional extra ``fusebench[extract]`` (duckdb, PyYAML). See
:mod:`fusebench.data.extract.pipeline` for the stages and ``README.md`` beside it for the two
profiles. The pipeline (pandas, numpy) is imported on first use (PEP 562), so the CLI's help
does not pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

from fusebench.data.extract.profiles import PROFILES

__all__ = ["PROFILES", "ExtractSummary", "extract_mimic_iv"]


def __getattr__(name: str) -> Any:
    if name in ("ExtractSummary", "extract_mimic_iv"):
        return getattr(importlib.import_module("fusebench.data.extract.pipeline"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
