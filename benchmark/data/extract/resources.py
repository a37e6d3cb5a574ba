"""The extractor's resource files (MIT, mimic3-benchmarks / MedFuse ``mimic4extract``; see LICENSE).

- ``itemid_to_variable_map.csv``: item id -> benchmark variable (``LEVEL2``; rows with
  ``STATUS == ready`` and ``COUNT > 0`` are used, as the original does).
- ``icd_9_10_definitions_2.yaml``: phenotype groups (ICD-9 codes plus forward-GEM ICD-10 codes).
- ``testset_iv.csv`` / ``valset_iv.csv``: ``subject_id,flag`` fixed subject splits of MIMIC-IV v1.0.
- ``2018_I9gem.txt`` / ``2018_I10gem.txt``: CMS 2018 forward / backward GEMs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import pandas as pd

__all__ = [
    "PhenotypeDefinitions",
    "hash_split",
    "phenotype_definitions",
    "resource_path",
    "split_lists",
    "variable_map",
]

# Fractions of the original's random splits (testset_iv: 20% of subjects; valset_iv: 10% of the
# training subjects), used for subjects the fixed lists do not name (corrected profile).
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1


def resource_path(name: str) -> Path:
    """Path of a packaged resource file."""
    return Path(str(resources.files("fusebench.data.extract") / "resources" / name))


@cache
def variable_map() -> pd.DataFrame:
    """The ready rows: ``itemid`` (int), ``variable``, ``mimic_label`` (one row per item id)."""
    frame = pd.read_csv(resource_path("itemid_to_variable_map.csv"), dtype=str,
                        keep_default_na=False)
    count = pd.to_numeric(frame["COUNT"], errors="coerce").fillna(0)
    ready = frame[(frame["LEVEL2"] != "") & (count > 0) & (frame["STATUS"] == "ready")]
    return pd.DataFrame({"itemid": ready["ITEMID"].astype("int64").to_numpy(),
                         "variable": ready["LEVEL2"].to_numpy(),
                         "mimic_label": ready["MIMIC LABEL"].to_numpy()})


@cache
def all_mapped_item_ids() -> tuple[int, ...]:
    """Every item id of the map file, any status: the original keeps all of them from the tables."""
    frame = pd.read_csv(resource_path("itemid_to_variable_map.csv"), dtype=str,
                        keep_default_na=False)
    ids = pd.to_numeric(frame["ITEMID"], errors="coerce").dropna().astype("int64")
    return tuple(sorted(set(ids.tolist())))


@dataclass(frozen=True)
class PhenotypeDefinitions:
    """The phenotype groups.

    Attributes:
        labels: the 25 benchmark groups, in listfile header order (sorted names).
        group_of_code: code string -> group (any group, benchmark or not), ICD version ignored.
        in_benchmark: group -> ``use_in_benchmark``.
        icd9: group -> its ICD-9 codes (the YAML codes that are ICD-9-CM codes).
        icd10: group -> ICD-10-CM codes whose backward GEM maps to one of the group's ICD-9 codes.
    """

    labels: tuple[str, ...]
    group_of_code: dict[str, str]
    in_benchmark: dict[str, bool]
    icd9: dict[str, frozenset[str]]
    icd10: dict[str, frozenset[str]]


def _read_gem(name: str) -> pd.DataFrame:
    return pd.read_csv(resource_path(name), sep=r"\s+", header=None, dtype=str,
                       names=["source", "target", "flags"], keep_default_na=False)


@cache
def phenotype_definitions() -> PhenotypeDefinitions:
    """Parse the YAML groups and expand them through the 2018 GEMs."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(resource_path("icd_9_10_definitions_2.yaml"), encoding="utf-8") as handle:
        definitions = yaml.load(handle, Loader=loader)
    group_of_code: dict[str, str] = {}
    for group, body in definitions.items():
        for code in body["codes"]:
            group_of_code.setdefault(str(code), group)
    in_benchmark = {group: bool(body["use_in_benchmark"]) for group, body in definitions.items()}
    labels = tuple(group for group in sorted(definitions) if in_benchmark[group])
    forward = _read_gem("2018_I9gem.txt")     # ICD-9 -> ICD-10
    backward = _read_gem("2018_I10gem.txt")   # ICD-10 -> ICD-9
    icd9_codes = set(forward["source"]) | set(backward["target"])
    icd9 = {group: frozenset(str(c) for c in body["codes"] if str(c) in icd9_codes)
            for group, body in definitions.items()}
    group_of_icd9: dict[str, set[str]] = {}
    for group, codes in icd9.items():
        for code in codes:
            group_of_icd9.setdefault(code, set()).add(group)
    icd10: dict[str, set[str]] = {group: set() for group in definitions}
    for source, target in zip(backward["source"], backward["target"], strict=True):
        for group in group_of_icd9.get(target, ()):
            icd10[group].add(source)
    return PhenotypeDefinitions(labels, group_of_code, in_benchmark, icd9,
                                {group: frozenset(codes) for group, codes in icd10.items()})


@cache
def split_lists() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    """(test subjects, validation subjects, every subject either list names)."""
    sets = []
    listed: set[int] = set()
    for name in ("testset_iv.csv", "valset_iv.csv"):
        frame = pd.read_csv(resource_path(name), header=None, names=["subject_id", "flag"],
                            dtype="int64")
        sets.append(frozenset(frame.loc[frame["flag"] == 1, "subject_id"].tolist()))
        listed |= set(frame["subject_id"].tolist())
    return sets[0], sets[1], frozenset(listed)


def hash_split(subject_id: int, seed: int = 0) -> str:
    """``train``, ``val`` or ``test`` for a subject the fixed lists do not name.

    A seeded hash of the subject id: the same subject always lands in the same split, whichever
    other subjects the download holds.
    """
    digest = hashlib.sha256(f"fusebench-split:{seed}:{int(subject_id)}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    if draw < TEST_FRACTION:
        return "test"
    return "val" if draw < TEST_FRACTION + (1 - TEST_FRACTION) * VAL_FRACTION else "train"
