"""Raw MIMIC-IV (v1.0, v2.x, v3.1) -> the EHR root fusebench reads (``fusebench data extract``).

Needs the optional extra ``fusebench[extract]`` (duckdb, PyYAML). See
:mod:`fusebench.data.extract.pipeline` for the stages and the two profiles.
"""

from __future__ import annotations

from fusebench.data.extract.pipeline import PROFILES, ExtractSummary, extract_mimic_iv

__all__ = ["PROFILES", "ExtractSummary", "extract_mimic_iv"]
