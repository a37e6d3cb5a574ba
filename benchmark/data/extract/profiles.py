"""The extraction profiles and their rules, one line each (shown by ``--help``, written to
``extract.json``); no heavy imports, so ``fusebench data --help`` stays fast."""

from __future__ import annotations

__all__ = ["PROFILES"]

# What each profile does differently, one line each (printed by --help and written to
# extract.json).
PROFILES: dict[str, tuple[str, ...]] = {
    "medfuse-2022": (
        "reproduces MedFuse's mimic4extract on MIMIC-IV v1.0, documented behaviour included",
        "phenotypes: ICD code string matched without its ICD version (icd_9_10_definitions_2.yaml)",
        "units by label: 'lb' labels to kg; every FiO2 value divided by 100 (fractions too); "
        "Fahrenheit only when >= 79; inch heights stay inches",
        "in-hospital mortality: dod or deathtime within the admission",
        "splits: testset_iv/valset_iv subjects; subjects they do not name go to train",
        "duplicate values at one time: the largest kept, compared as text when the subject has "
        "any text value ('100' < '80')",
    ),
    "corrected": (
        "phenotypes: (ICD version, code) matched; ICD-10 codes expanded through the backward GEM",
        "units by unit: valueuom degF -> Celsius, lb/oz -> kg, Inch -> cm; FiO2 above 1 is a "
        "percentage (divided by 100), at most 1 a fraction (kept)",
        "in-hospital mortality on v2+: hospital_expire_flag or deathtime within the admission "
        "(v2+ dod includes deaths after discharge)",
        "splits: subjects the v1.0 lists do not name assigned by a seeded hash of subject_id "
        "(20% test, 10% of the rest validation), count reported",
        "duplicate values at one time: the largest kept, compared as numbers",
    ),
}
