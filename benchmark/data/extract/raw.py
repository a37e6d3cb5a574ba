"""The raw MIMIC-IV download: where each table is, which version it is, its columns by name.

PhysioNet ships MIMIC-IV as ``.csv.gz`` files (plain ``.csv`` is accepted as well)::

    v1.0:       core/{patients,admissions,transfers}  hosp/...  icu/...
    v2.0-v3.1:  hosp/{patients,admissions,transfers,diagnoses_icd,d_icd_diagnoses,labevents,...}
                icu/{icustays,chartevents,d_items,...}

Columns are always looked up by name in each file's header, never by position: the versions
differ in column names (``ethnicity`` became ``race`` in v2.0) and in extra columns (v2.2 added
provider ids and ``caregiver_id``).
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

from fusebench.errors import FusebenchError

__all__ = ["RawMimic", "TABLE_FOLDERS", "open_raw"]

# Folder of each table per layout ("core" exists in v1.0 only).
TABLE_FOLDERS: dict[str, dict[str, str]] = {
    "v1": {"patients": "core", "admissions": "core", "icustays": "icu", "chartevents": "icu",
           "labevents": "hosp", "diagnoses_icd": "hosp", "d_icd_diagnoses": "hosp",
           "d_labitems": "hosp"},
    "v2": {"patients": "hosp", "admissions": "hosp", "icustays": "icu", "chartevents": "icu",
           "labevents": "hosp", "diagnoses_icd": "hosp", "d_icd_diagnoses": "hosp",
           "d_labitems": "hosp"},
}

# Lab item ids of the benchmark variables (glucose, pH, O2 saturation) as v1.0-v2.2 and v3.1
# number them. MIMIC-IV v3.0 renumbered lab items and v3.1 restored the old ids, so a download
# whose d_labitems lacks all of them is v3.0.
_BENCHMARK_LAB_ITEMS = {50809, 50817, 50820, 50831, 50931, 51094, 51478, 51491}

_REQUIRED: dict[str, tuple[str, ...]] = {
    "patients": ("subject_id", "gender", "anchor_age", "dod"),
    "admissions": ("subject_id", "hadm_id", "admittime", "dischtime", "deathtime"),
    "icustays": ("subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit",
                 "intime", "outtime", "los"),
    "chartevents": ("subject_id", "hadm_id", "stay_id", "charttime", "itemid", "value",
                    "valueuom"),
    "labevents": ("subject_id", "hadm_id", "charttime", "itemid", "value", "valueuom"),
    "diagnoses_icd": ("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"),
    "d_icd_diagnoses": ("icd_code", "icd_version", "long_title"),
    "d_labitems": ("itemid",),
}


@dataclass(frozen=True)
class RawMimic:
    """A located raw MIMIC-IV download.

    Attributes:
        root: the folder given (holding ``hosp/`` and ``icu/``, and ``core/`` for v1.0).
        version: ``"1.0"``, ``"2.0-2.1"``, ``"2.2+"`` (v2.2 or v3.1, same tables) or the
            version in the folder name (``.../mimiciv/3.1``).
        evidence: what the version was recognised by (said to the user).
        paths: table name -> file.
        headers: table name -> column names of its header, in file order.
    """

    root: Path
    version: str
    evidence: str
    paths: dict[str, Path]
    headers: dict[str, tuple[str, ...]]

    @property
    def major(self) -> int:
        """1, 2 or 3 (2 for ``"2.2+"``: v3.1 reads exactly as v2.2)."""
        return int(self.version[0])

    @property
    def race_column(self) -> str:
        """``ethnicity`` (v1.0) or ``race`` (v2.0 on)."""
        return "ethnicity" if "ethnicity" in self.headers["admissions"] else "race"


def _find_table(root: Path, folder: str, table: str) -> Path | None:
    for suffix in (".csv.gz", ".csv"):
        path = root / folder / f"{table}{suffix}"
        if path.is_file():
            return path
    return None


def read_header(path: Path) -> tuple[str, ...]:
    """Column names of a CSV or CSV.GZ file's first line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            line = handle.readline()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise FusebenchError(f"{path}: cannot read the header ({error}); is the file complete? "
                             "Re-download it from PhysioNet") from error
    columns = tuple(name.strip().strip('"') for name in line.rstrip("\r\n").split(","))
    if not line or columns == ("",):
        raise FusebenchError(f"{path} line 1: empty file; re-download it from PhysioNet")
    return columns


def _named_version(root: Path) -> re.Match[str] | None:
    """The version a PhysioNet download names: its folder (``mimiciv/3.1``) or its LICENSE.txt."""
    named = re.search(r"(?:^|/)(\d)\.(\d)(?:/|$)", root.resolve().as_posix())
    license_file = root / "LICENSE.txt"
    if named is None and license_file.is_file():
        named = re.search(r"MIMIC-IV v?(\d)\.(\d)", license_file.read_text(errors="replace")[:4096])
    return named


def _lab_item_ids(path: Path, header: tuple[str, ...]) -> set[int]:
    column = header.index("itemid")
    opener = gzip.open if path.name.endswith(".gz") else open
    ids: set[int] = set()
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)  # labels hold quoted commas ("Glucose, Urine")
        next(rows, None)
        for row in rows:
            cell = row[column].strip() if len(row) > column else ""
            if cell.isdigit():
                ids.add(int(cell))
    return ids


def open_raw(root: Path) -> RawMimic:
    """Locate every table the extractor reads, check its columns and detect the version.

    Args:
        root: the MIMIC-IV folder as downloaded (``.../mimiciv/3.1``).

    Returns:
        The located download.

    Raises:
        FusebenchError: a missing folder, table or column (one line naming it), or v3.0.
    """
    root = Path(root)
    if not root.is_dir():
        raise FusebenchError(f"--mimic-iv {root}: no such folder; give the MIMIC-IV folder "
                             "holding hosp/ and icu/")
    layout = "v1" if (root / "core").is_dir() else "v2"
    paths: dict[str, Path] = {}
    for table, folder in TABLE_FOLDERS[layout].items():
        path = _find_table(root, folder, table)
        if path is None:
            raise FusebenchError(f"--mimic-iv {root}: {folder}/{table}.csv.gz (or .csv) not "
                                 "found; give the MIMIC-IV folder as PhysioNet ships it "
                                 "(hosp/ and icu/, plus core/ for v1.0)")
        paths[table] = path
    headers = {table: read_header(path) for table, path in paths.items()}
    for table, needed in _REQUIRED.items():
        missing = [column for column in needed if column not in headers[table]]
        if missing:
            raise FusebenchError(f"{paths[table]} line 1: missing column {missing[0]!r} "
                                 f"(a MIMIC-IV {table} table has {', '.join(needed)})")
    admissions = headers["admissions"]
    if layout == "v1":
        if "ethnicity" not in admissions:
            raise FusebenchError(f"{paths['admissions']} line 1: a v1.0 (core/) admissions table "
                                 "has an 'ethnicity' column")
        return RawMimic(root, "1.0", "core/ folder, admissions.ethnicity", paths, headers)
    if "race" not in admissions:
        raise FusebenchError(f"{paths['admissions']} line 1: missing column 'race' (MIMIC-IV "
                             "v2.0 and later name it race)")
    named = _named_version(root)
    if "admit_provider_id" not in admissions:
        return RawMimic(root, "2.0-2.1", "hosp/ tables, admissions.race, no provider ids",
                        paths, headers)
    lab_ids = _lab_item_ids(paths["d_labitems"], headers["d_labitems"])
    if not lab_ids & _BENCHMARK_LAB_ITEMS:
        raise FusebenchError(f"{paths['d_labitems']}: none of the benchmark lab item ids "
                             f"({', '.join(map(str, sorted(_BENCHMARK_LAB_ITEMS)))}): this is "
                             "MIMIC-IV v3.0, whose lab item ids changed; download v3.1, which "
                             "restored them")
    if named and named.group(1) == "3" and named.group(2) == "0":
        raise FusebenchError(f"--mimic-iv {root}: MIMIC-IV v3.0 (folder name) changed the lab "
                             "item ids; download v3.1, which restored them")
    if named and named.group(1) in "23":
        version = f"{named.group(1)}.{named.group(2)}"
        return RawMimic(root, version, f"admissions.admit_provider_id; the folder name or "
                        f"LICENSE.txt says {version}", paths, headers)
    # v2.2, v3.1 (and v3.2) have the same tables and columns for what the extractor reads.
    return RawMimic(root, "2.2+", "hosp/ tables, admissions.race and admit_provider_id, lab "
                    "item ids of v2.2/v3.1 (no version in the folder name)", paths, headers)
