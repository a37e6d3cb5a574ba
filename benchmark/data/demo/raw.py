"""A synthetic RAW download: MIMIC-IV tables and a MIMIC-CXR-JPG tree as PhysioNet ships them.

``fusebench data demo --raw --out DIR [--mimic-iv-version 1.0|2.2|3.1]`` writes::

    DIR/mimic-iv/        v1.0: core/{patients,admissions,transfers}  hosp/...  icu/...
                         v2.2, v3.1: hosp/{patients,admissions,transfers,...,provider}  icu/...
    DIR/mimic-cxr-jpg/   files/pNN/pSUBJECT/sSTUDY/DICOM.jpg + mimic-cxr-2.0.0-*.csv.gz
    DIR/planted.json     which subject / admission / stay carries which planted quirk

Every table is a ``.csv.gz`` with the real column names in the real order of its version
(``ethnicity`` became ``race`` in v2.0; v2.2 added ``admit_provider_id``, ``order_provider_id``
and ``caregiver_id`` plus the ``provider``/``caregiver`` tables; v3.1 keeps the v2.2 columns and
the v1.0 lab item ids that v3.0 had renumbered). Item ids, ICD codes and subject ids are the real
ones of ``mimic4extract``'s resource files, so an extractor maps them: subjects of the EHR test and
validation splits are drawn from ``testset_iv.csv`` / ``valset_iv.csv``.

The stays, their latent state, labels and time series come from the demo's patient model
(:mod:`fusebench.data.demo.model`, :func:`fusebench.data.demo.ehr.chunk_timeseries`); each charted
cell becomes a ``chartevents`` or ``labevents`` row. On top, the quirks real data has are planted
and listed in ``planted.json`` so an extractor's tests can assert where each one lands. Nothing
here is real patient data. Same version, size and seed -> byte-identical files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.data.demo.cxr import (
    chexpert_labels,
    cxr_tables,
    draw_films,
    film_findings,
    render_film,
    studies,
)
from fusebench.data.demo.ehr import chunk_timeseries
from fusebench.data.demo.model import (
    GCS_EYE,
    GCS_MOTOR,
    GCS_VERBAL,
    DemoSize,
    draw_stays,
    part_rng,
    timestamps,
)
from fusebench.data.labels import PHENOTYPE_LABELS
from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_bytes

__all__ = ["MIMIC_IV_VERSIONS", "PLANTED", "RAW_SIZES", "generate_raw_demo"]

MIMIC_IV_VERSIONS: tuple[str, ...] = ("1.0", "2.2", "3.1")
PLANTED = "planted.json"
RAW_SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(n_stays=60, image_width=64, extra_images=1.0),
    "small": DemoSize(n_stays=300, image_width=96, extra_images=1.0),
}



def resource_path(name: str) -> Path:
    """A resource file of the extractor (item ids, ICD groups, split lists: the real ones)."""
    from fusebench.data.extract.resources import resource_path as extract_resource

    return extract_resource(name)


# ----------------------------------------------------------------------------- table columns

_V1 = "1.0"
_COLUMNS_V1: dict[str, tuple[str, ...]] = {
    "patients": ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"),
    "admissions": ("subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                   "admission_type", "admission_location", "discharge_location", "insurance",
                   "language", "marital_status", "ethnicity", "edregtime", "edouttime",
                   "hospital_expire_flag"),
    "transfers": ("subject_id", "hadm_id", "transfer_id", "eventtype", "careunit", "intime",
                  "outtime"),
    "diagnoses_icd": ("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"),
    "d_icd_diagnoses": ("icd_code", "icd_version", "long_title"),
    "labevents": ("labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "charttime",
                  "storetime", "value", "valuenum", "valueuom", "ref_range_lower",
                  "ref_range_upper", "flag", "priority", "comments"),
    "d_labitems": ("itemid", "label", "fluid", "category", "loinc_code"),
    "icustays": ("subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit",
                 "intime", "outtime", "los"),
    "chartevents": ("subject_id", "hadm_id", "stay_id", "charttime", "storetime", "itemid",
                    "value", "valuenum", "valueuom", "warning"),
    "outputevents": ("subject_id", "hadm_id", "stay_id", "charttime", "storetime", "itemid",
                     "value", "valueuom"),
    "d_items": ("itemid", "label", "abbreviation", "linksto", "category", "unitname",
                "param_type", "lownormalvalue", "highnormalvalue"),
}


def _columns(version: str) -> dict[str, tuple[str, ...]]:
    """Column names in file order of each table of ``version``."""
    if version == _V1:
        return _COLUMNS_V1
    columns = dict(_COLUMNS_V1)
    admissions = list(columns["admissions"])
    admissions[admissions.index("ethnicity")] = "race"
    admissions.insert(admissions.index("admission_type") + 1, "admit_provider_id")
    columns["admissions"] = tuple(admissions)
    labevents = list(columns["labevents"])
    labevents.insert(labevents.index("itemid") + 1, "order_provider_id")
    columns["labevents"] = tuple(labevents)
    columns["d_labitems"] = ("itemid", "label", "fluid", "category")
    for table in ("chartevents", "outputevents"):
        names = list(columns[table])
        names.insert(names.index("stay_id") + 1, "caregiver_id")
        columns[table] = tuple(names)
    columns["provider"] = ("provider_id",)
    columns["caregiver"] = ("caregiver_id",)
    return columns


def _folders(version: str) -> dict[str, str]:
    """Folder of each table: v1.0 keeps patients/admissions/transfers in core/."""
    hosp = ("patients", "admissions", "transfers", "diagnoses_icd", "d_icd_diagnoses",
            "labevents", "d_labitems", "provider")
    folders = {t: "hosp" for t in hosp}
    folders.update({t: "icu" for t in ("icustays", "chartevents", "outputevents", "d_items",
                                       "caregiver")})
    if version == _V1:
        folders.update({t: "core" for t in ("patients", "admissions", "transfers")})
    return folders


# ----------------------------------------------------------------------------- item ids

# Benchmark channel -> (table, itemid, label, unit) of the metavision items that carry it.
_CHART_ITEMS: dict[str, tuple[int, str, str]] = {
    "Diastolic blood pressure": (220180, "Non Invasive Blood Pressure diastolic", "mmHg"),
    "Systolic blood pressure": (220179, "Non Invasive Blood Pressure systolic", "mmHg"),
    "Mean blood pressure": (220181, "Non Invasive Blood Pressure mean", "mmHg"),
    "Heart Rate": (220045, "Heart Rate", "bpm"),
    "Respiratory rate": (220210, "Respiratory Rate", "insp/min"),
    "Oxygen saturation": (220277, "O2 saturation pulseoxymetry", "%"),
    "Temperature": (223762, "Temperature Celsius", "°C"),
    "Fraction inspired oxygen": (223835, "Inspired O2 Fraction", ""),
    "Weight": (224639, "Daily Weight", "kg"),
    "Height": (226730, "Height (cm)", "cm"),
    "Glascow coma scale eye opening": (220739, "GCS - Eye Opening", ""),
    "Glascow coma scale motor response": (223901, "GCS - Motor Response", ""),
    "Glascow coma scale verbal response": (223900, "GCS - Verbal Response", ""),
}
_EXTRA_CHART_ITEMS: dict[int, tuple[str, str]] = {
    223761: ("Temperature Fahrenheit", "°F"),
    226707: ("Height", "Inch"),
    226531: ("Admission Weight (lbs.)", "lbs"),
    220048: ("Heart Rhythm", ""),  # not a benchmark variable: an extractor drops it
}
_LAB_ITEMS: dict[str, tuple[int, str, str, str, str]] = {
    # channel: (itemid, label, fluid, category, unit)
    "Glucose": (50931, "Glucose", "Blood", "Chemistry", "mg/dL"),
    "pH": (50820, "pH", "Blood", "Blood Gas", "units"),
}
_EXTRA_LAB_ITEMS: dict[int, tuple[str, str, str, str]] = {
    50817: ("Oxygen Saturation", "Blood", "Blood Gas", "%"),
    50912: ("Creatinine", "Blood", "Chemistry", "mg/dL"),  # not a benchmark variable
}
_OUTPUT_ITEM = (226559, "Foley", "mL")
_UNITS = ("Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
          "Cardiac Vascular Intensive Care Unit (CVICU)", "Coronary Care Unit (CCU)")
# A code string that is both an ICD-9 and an ICD-10 code (the CMS 2018 GEM files list it in both).
_CODE_IN_BOTH_VERSIONS = "E030"
_OTHER_CODES = (("4280", 9), ("I10", 10), ("V5861", 9), ("Z7901", 10), ("2859", 9))


def _gcs_lookup(channel: str) -> dict[str, tuple[str, int]]:
    """A demo GCS string of ``channel`` (MIMIC-IV or CareVue style) -> (MIMIC-IV text, score).

    MIMIC-IV's metavision items chart the MIMIC-IV texts only, so CareVue-style demo strings
    become their MIMIC-IV equivalent (per component: "1 No Response" differs by component).
    """
    table = {"Glascow coma scale eye opening": GCS_EYE,
             "Glascow coma scale motor response": GCS_MOTOR,
             "Glascow coma scale verbal response": GCS_VERBAL}[channel]
    lookup = {}
    for score, (metavision, carevue) in table.items():
        lookup[metavision] = lookup[carevue] = (metavision, max(score, 1))
    return lookup


# ----------------------------------------------------------------------------- the cohort


def _split_subjects(count: int, which: str, rng: np.random.Generator) -> np.ndarray:
    """``count`` real subject ids of the v1.0 ``which`` split (train/val/test lists)."""
    test = pd.read_csv(resource_path("testset_iv.csv"), header=None,
                       names=["subject_id", "flag"])
    val = pd.read_csv(resource_path("valset_iv.csv"), header=None, names=["subject_id", "flag"])
    val_ids = set(val.loc[val["flag"] == 1, "subject_id"])
    if which == "test":
        pool = test.loc[test["flag"] == 1, "subject_id"]
    elif which == "val":
        pool = test.loc[(test["flag"] == 0) & test["subject_id"].isin(val_ids), "subject_id"]
    else:
        pool = test.loc[(test["flag"] == 0) & ~test["subject_id"].isin(val_ids), "subject_id"]
    return np.sort(rng.choice(np.sort(pool.to_numpy()), count, replace=False))


def _unlisted_subjects(count: int) -> list[int]:
    """Subject ids in neither split list (new subjects of a later MIMIC-IV release)."""
    listed = set(pd.read_csv(resource_path("testset_iv.csv"), header=None)[0].tolist())
    found: list[int] = []
    candidate = 19_999_990
    while len(found) < count:
        if candidate not in listed:
            found.append(candidate)
        candidate -= 1
    return found


def _cohort(size: DemoSize, seed: int, planted: dict) -> pd.DataFrame:
    """Demo stays with real split-list subject ids and the planted cohort quirks."""
    stays = draw_stays(size, seed)
    rng = part_rng(seed, "raw-cohort")
    # Real subject ids of each demo split, so the v1.0 split lists put them where the demo did.
    mapping: dict[int, int] = {}
    for which in ("train", "val", "test"):
        subjects = np.unique(stays.loc[stays["split"] == which, "subject_id"])
        mapping.update(zip(subjects.tolist(), _split_subjects(len(subjects), which, rng).tolist(),
                           strict=True))
    stays["subject_id"] = stays["subject_id"].map(mapping)
    stays["los_seconds"] = stays["los_minutes"] * 60
    stays["first_careunit"] = np.array(_UNITS)[rng.integers(0, len(_UNITS), len(stays))]
    stays["last_careunit"] = stays["first_careunit"]
    stays["anchor_age"] = np.clip(np.round(65 + 12 * stays["age"]), 18, 89).astype(int)
    single = stays.groupby("subject_id")["stay_id"].transform("size") == 1
    long_single = stays.index[single & (stays["los_minutes"] >= 52 * 60)].tolist()
    short_single = stays.index[single & (stays["los_minutes"] < 40 * 60)].tolist()
    if len(long_single) < 7 or len(short_single) < 3:
        raise FusebenchError("the raw demo needs more stays to plant every quirk; use a larger "
                             "--size")
    pick = iter(long_single)

    def stay_record(index: int) -> dict:
        row = stays.loc[index]
        return {"subject_id": int(row["subject_id"]), "hadm_id": int(row["hadm_id"]),
                "stay_id": int(row["stay_id"])}

    index = next(pick)
    stays.loc[index, "last_careunit"] = "Medical/Surgical Intensive Care Unit (MICU/SICU)"
    planted["icu_transfer"] = stay_record(index)

    for name, seconds in (("stay_47_99h", 47.99 * 3600), ("stay_48_01h", 48.01 * 3600)):
        index = next(pick)
        stays.loc[index, "los_seconds"] = round(seconds)
        stays.loc[index, "los_minutes"] = round(seconds) // 60
        planted[name] = {**stay_record(index), "hours": round(seconds) / 3600}

    # Two ICU stays in one admission: a second stay 12 h after the first, same hadm_id.
    index = next(pick)
    second = stays.loc[[index]].copy()
    second["stay_id"] = int(stays["stay_id"].max()) + 1
    second["episode"] += 1
    second["intime"] += pd.to_timedelta(second["los_seconds"] + 12 * 3600, unit="s")
    second["los_minutes"], second["los_seconds"] = 30 * 60, 30 * 3600
    stays = pd.concat([stays, second], ignore_index=True)
    planted["two_stays_one_admission"] = {
        **{k: v for k, v in stay_record(index).items() if k != "stay_id"},
        "stay_ids": [int(stays.loc[index, "stay_id"]), int(second["stay_id"].iloc[0])]}

    index = next(pick)
    stays.loc[index, "mortality"] = 0
    planted["death_on_discharge_day_without_deathtime"] = stay_record(index)
    index = next(pick)
    stays.loc[index, "anchor_age"] = 91
    planted["anchor_age_91"] = stay_record(index)
    index = short_single[0]
    stays.loc[index, "anchor_age"] = 16
    planted["under_18"] = {**stay_record(index), "anchor_age": 16}
    unlisted = _unlisted_subjects(2)
    for index, subject in zip(short_single[1:3], unlisted, strict=True):
        stays.loc[index, "subject_id"] = subject
    planted["subjects_missing_from_split_lists"] = unlisted
    index = next(pick)
    stays.loc[index, "mortality"] = 0  # survives the admission; v2+ dod records a later death
    planted["mortality_on_v2_dod_after_discharge"] = stay_record(index)
    return stays.sort_values(["subject_id", "intime"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- hospital tables


def _admissions(stays: pd.DataFrame, version: str, rng: np.random.Generator,
                planted: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """patients, admissions and transfers tables."""
    intime = stays["intime"].to_numpy().astype("datetime64[s]")
    outtime = intime + stays["los_seconds"].to_numpy().astype("timedelta64[s]")
    stays["outtime"] = outtime
    n = len(stays)
    by_hadm = stays.groupby("hadm_id", sort=False)
    first_in = by_hadm["intime"].transform("min").to_numpy().astype("datetime64[s]")
    last_out = pd.Series(outtime).groupby(stays["hadm_id"].to_numpy()).transform("max")
    last_out = last_out.to_numpy().astype("datetime64[s]")
    admittime = first_in - (rng.integers(2, 48, n) * 3600).astype("timedelta64[s]")
    died = stays["mortality"].to_numpy() == 1
    in_unit = died & (rng.random(n) < 0.6)
    after = np.where(in_unit, 0, rng.integers(3600, 10 * 86400, n)).astype("timedelta64[s]")
    dischtime = last_out + after
    deathtime = np.where(died, timestamps(dischtime), "")
    dod = np.where(died, np.char.partition(deathtime.astype(str), " ")[:, 0], "")
    quirk = planted["death_on_discharge_day_without_deathtime"]["stay_id"]
    at = np.flatnonzero(stays["stay_id"].to_numpy() == quirk)[0]
    dod[at] = str(dischtime[at].astype("datetime64[D]"))
    if version != _V1:  # v2.0 on: dod also holds deaths after discharge (state records)
        late = planted["mortality_on_v2_dod_after_discharge"]["stay_id"]
        at = np.flatnonzero(stays["stay_id"].to_numpy() == late)[0]
        dod[at] = str((dischtime[at] + np.timedelta64(120, "D")).astype("datetime64[D]"))
    stays["admittime"], stays["dischtime"] = admittime, dischtime
    race = np.array(["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO", "ASIAN", "OTHER",
                     "UNKNOWN"])[rng.integers(0, 6, n)]
    admissions = pd.DataFrame({
        "subject_id": stays["subject_id"], "hadm_id": stays["hadm_id"],
        "admittime": timestamps(admittime), "dischtime": timestamps(dischtime),
        "deathtime": deathtime,
        "admission_type": np.array(["EW EMER.", "URGENT", "ELECTIVE"])[rng.integers(0, 3, n)],
        "admit_provider_id": [f"P{v:05d}" for v in rng.integers(0, 99999, n).tolist()],
        "admission_location": "EMERGENCY ROOM",
        "discharge_location": np.where(died, "DIED", "HOME"),
        "insurance": np.array(["Medicare", "Medicaid", "Other"])[rng.integers(0, 3, n)],
        "language": "ENGLISH",
        "marital_status": np.array(["MARRIED", "SINGLE", "WIDOWED", ""])[rng.integers(0, 4, n)],
        "ethnicity": race, "race": race,
        "edregtime": timestamps(admittime - np.timedelta64(3, "h")),
        "edouttime": timestamps(admittime),
        "hospital_expire_flag": died.astype(int),
    }).drop_duplicates("hadm_id")
    anchor_year = intime.astype("datetime64[Y]").astype(int) + 1970
    patients = pd.DataFrame({
        "subject_id": stays["subject_id"],
        "gender": np.array(["F", "M"])[rng.integers(0, 2, n)],
        "anchor_age": stays["anchor_age"], "anchor_year": anchor_year,
        "anchor_year_group": np.array(["2008 - 2010", "2011 - 2013", "2014 - 2016",
                                       "2017 - 2019"])[rng.integers(0, 4, n)],
        "dod": dod,
    })
    # One patients row per subject: the death date of the subject's last stay.
    patients = patients.groupby("subject_id", as_index=False).agg(
        {"gender": "first", "anchor_age": "first", "anchor_year": "first",
         "anchor_year_group": "first", "dod": "last"})
    transfers = []
    for row, admit, disch in zip(stays.itertuples(index=False), admittime, dischtime,
                                 strict=True):
        stay_in = np.datetime64(row.intime, "s")
        stay_out = np.datetime64(row.outtime, "s")
        if row.first_careunit != row.last_careunit:  # moved between ICUs halfway
            middle = stay_in + (stay_out - stay_in) // 2
            icu = [(row.first_careunit, stay_in, middle), (row.last_careunit, middle, stay_out)]
        else:
            icu = [(row.first_careunit, stay_in, stay_out)]
        transfers += [(row.subject_id, row.hadm_id, "admit", "Emergency Department", admit,
                       stay_in)]
        transfers += [(row.subject_id, row.hadm_id, "transfer", unit, start, end)
                      for unit, start, end in icu]
        transfers += [(row.subject_id, row.hadm_id, "transfer", "Medicine", stay_out, disch),
                      (row.subject_id, row.hadm_id, "discharge", "", disch, None)]
    frame = pd.DataFrame(transfers, columns=["subject_id", "hadm_id", "eventtype", "careunit",
                                             "intime", "outtime"])
    frame.insert(2, "transfer_id", 30_000_000 + np.arange(len(frame)) * 7)
    for column in ("intime", "outtime"):
        moments = pd.to_datetime(frame[column])
        frame[column] = moments.dt.strftime("%Y-%m-%d %H:%M:%S").fillna("")
    return patients, admissions, frame.drop_duplicates(["hadm_id", "eventtype", "careunit",
                                                        "intime"])


def _diagnoses(stays: pd.DataFrame, rng: np.random.Generator,
               planted: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """diagnoses_icd from the phenotype labels (ICD-9 or ICD-10 per admission), d_icd_diagnoses."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: 30x faster
    definitions = yaml.load(resource_path("icd_9_10_definitions_2.yaml").read_text(),
                            Loader=loader)
    icd9 = {line.split()[0] for line in resource_path("2018_I9gem.txt").open()}
    icd10 = {line.split()[0] for line in resource_path("2018_I10gem.txt").open()}
    rows = []
    titles: dict[tuple[str, int], str] = {}
    version_of = {h: 9 if rng.random() < 0.6 else 10 for h in stays["hadm_id"].unique().tolist()}
    admissions = stays.drop_duplicates("hadm_id")
    positives = admissions[list(PHENOTYPE_LABELS)].to_numpy() == 1
    for row, labels in zip(admissions.itertuples(index=False), positives, strict=True):
        version = version_of[row.hadm_id]
        known = icd9 if version == 9 else icd10
        codes = []
        for label, positive in zip(PHENOTYPE_LABELS, labels, strict=True):
            if positive:
                candidates = sorted(c for c in definitions[label]["codes"] if c in known)
                codes.append((candidates[int(rng.integers(0, len(candidates)))], label))
        other = [c for c in _OTHER_CODES if c[1] == version]
        codes.append((other[int(rng.integers(0, len(other)))][0], None))
        for seq, (code, label) in enumerate(codes, start=1):
            rows.append((row.subject_id, row.hadm_id, seq, code, version))
            titles[(code, version)] = label or "other diagnosis (synthetic)"
    diagnoses = pd.DataFrame(rows, columns=["subject_id", "hadm_id", "seq_num", "icd_code",
                                            "icd_version"])
    # Leading zero: septicemia 0389 (ICD-9) on a v9 admission; a code of both versions.
    v9 = [h for h, v in version_of.items() if v == 9]
    hadm = sorted(v9)[0]
    subject = int(stays.loc[stays["hadm_id"] == hadm, "subject_id"].iloc[0])
    seq = int(diagnoses.loc[diagnoses["hadm_id"] == hadm, "seq_num"].max())
    extra = [(subject, hadm, seq + 1, "0389", 9), (subject, hadm, seq + 2,
                                                      _CODE_IN_BOTH_VERSIONS, 9)]
    diagnoses = pd.concat([diagnoses, pd.DataFrame(extra, columns=diagnoses.columns)],
                          ignore_index=True)
    titles[("0389", 9)] = "Unspecified septicemia"
    titles[(_CODE_IN_BOTH_VERSIONS, 9)] = "Activity, unspecified"  # an ICD-9 E code
    titles[(_CODE_IN_BOTH_VERSIONS, 10)] = "Congenital hypothyroidism with diffuse goiter"
    planted["icd_leading_zero"] = {"subject_id": subject, "hadm_id": int(hadm),
                                   "icd_code": "0389", "icd_version": 9,
                                   "phenotype": "Septicemia (except in labor)"}
    planted["icd_code_in_both_versions"] = {"subject_id": subject, "hadm_id": int(hadm),
                                            "icd_code": _CODE_IN_BOTH_VERSIONS, "icd_version": 9,
                                            "d_icd_diagnoses_rows": 2}
    d_icd = pd.DataFrame([(c, v, t) for (c, v), t in sorted(titles.items())],
                         columns=["icd_code", "icd_version", "long_title"])
    return diagnoses, d_icd


# ----------------------------------------------------------------------------- events


def _events(stays: pd.DataFrame, seed: int, planted: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """chartevents and labevents rows (common columns) from the demo time series + quirks."""
    rng = part_rng(seed, "raw-events")
    series = chunk_timeseries(stays, part_rng(seed, "raw-series"))
    stay_rows = stays.iloc[series["_stay"].to_numpy()]
    base = pd.DataFrame({
        "subject_id": stay_rows["subject_id"].to_numpy(),
        "hadm_id": stay_rows["hadm_id"].to_numpy().astype(object),
        "stay_id": stay_rows["stay_id"].to_numpy(),
        "charttime": (stay_rows["intime"].to_numpy().astype("datetime64[s]")
                      + np.round(series["Hours"].to_numpy() * 3600).astype("timedelta64[s]")),
    })
    chart, lab = [], []
    for channel, (itemid, _, unit) in _CHART_ITEMS.items():
        cells = series[channel]
        seen = cells.notna() & (cells.astype(str) != "")
        part = base[seen.to_numpy()].copy()
        part["itemid"] = itemid
        if channel.startswith("Glascow"):
            gcs = _gcs_lookup(channel)
            mapped = [gcs[v] for v in cells[seen].tolist()]
            part["value"] = [m[0] for m in mapped]
            part["valuenum"] = [float(m[1]) for m in mapped]
        else:
            numbers = cells[seen].astype(float).to_numpy()
            if channel == "Fraction inspired oxygen":
                numbers = np.round(numbers * 100)  # MIMIC-IV charts FiO2 in percent
            part["valuenum"] = numbers
            part["value"] = [_number(v) for v in numbers.tolist()]
        part["valueuom"] = unit
        chart.append(part)
    for channel, (itemid, _, _, _, unit) in _LAB_ITEMS.items():
        seen = series[channel].notna().to_numpy()
        part = base[seen].copy()
        part["itemid"] = itemid
        part["valuenum"] = series.loc[seen, channel].astype(float).to_numpy()
        part["value"] = [_number(v) for v in part["valuenum"].tolist()]
        part["valueuom"] = unit
        lab.append(part.drop(columns="stay_id"))
    chart_frame = pd.concat(chart, ignore_index=True)
    lab_frame = pd.concat(lab, ignore_index=True)
    chart_frame, lab_frame = _plant_event_quirks(stays, chart_frame, lab_frame, rng, planted)
    return chart_frame, lab_frame


def _number(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def _plant_event_quirks(stays: pd.DataFrame, chart: pd.DataFrame, lab: pd.DataFrame,
                        rng: np.random.Generator,
                        planted: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Extra rows carrying the event quirks; each recorded in ``planted``."""
    by_id = stays.set_index("stay_id")
    chart_rows, lab_rows = [], []

    def at(stay_id: int, hours: float) -> dict:
        row = by_id.loc[stay_id]
        when = np.datetime64(row["intime"], "s") + np.timedelta64(round(hours * 3600), "s")
        return {"subject_id": int(row["subject_id"]), "hadm_id": int(row["hadm_id"]),
                "stay_id": stay_id, "charttime": when}

    def chart_event(stay_id: int, hours: float, itemid: int, value: str | float,
                    valuenum: float | None, unit: str) -> None:
        chart_rows.append({**at(stay_id, hours), "itemid": itemid, "value": value,
                           "valuenum": valuenum, "valueuom": unit})

    edge = planted["stay_48_01h"]["stay_id"]
    chart_event(edge, 0.0, 220045, "88", 88.0, "bpm")
    chart_event(edge, 48.0, 220045, "92", 92.0, "bpm")
    planted["events_at_intime_and_48h"] = {"stay_id": edge, "itemid": 220045,
                                           "hours": [0.0, 48.0], "values": [88.0, 92.0]}
    ordinary = [int(s) for s in stays.loc[stays["los_minutes"] >= 24 * 60, "stay_id"]]
    ordinary = [s for s in ordinary if s not in _planted_stays(planted)]
    pick = iter(ordinary)

    stay = next(pick)
    chart_event(stay, 5.5, 223761, "101.3", 101.3, "°F")
    planted["temperature_fahrenheit"] = {"stay_id": stay, "hours": 5.5, "value_f": 101.3,
                                         "celsius": round((101.3 - 32) * 5 / 9, 4)}
    stay = next(pick)
    chart_event(stay, 3.25, 226707, "70", 70.0, "Inch")
    chart_event(stay, 3.25, 226730, "178", 178.0, "cm")
    planted["height_inch_and_cm_same_time"] = {"stay_id": stay, "hours": 3.25, "inch": 70.0,
                                               "cm": 178.0, "inch_in_cm": 177.8}
    stay = next(pick)
    chart_event(stay, 2.0, 226531, "176", 176.0, "lbs")
    planted["weight_pounds"] = {"stay_id": stay, "hours": 2.0, "pounds": 176.0,
                                "kg": round(176.0 * 0.453592, 4)}
    stay = next(pick)
    chart_event(stay, 7.0, 223835, "0.5", 0.5, "")
    chart_event(stay, 9.0, 223835, "50", 50.0, "")
    planted["fio2_fraction_and_percent"] = {"stay_id": stay, "fraction": {"hours": 7.0,
                                            "value": 0.5}, "percent": {"hours": 9.0,
                                                                       "value": 50.0}}
    stay = next(pick)
    chart_event(stay, 4.5, 220277, "0.96", 0.96, "%")
    planted["spo2_fraction"] = {"stay_id": stay, "hours": 4.5, "value": 0.96, "percent": 96.0}
    stay = next(pick)
    chart_event(stay, 6.0, 220045, "101", 101.0, "bpm")
    chart_event(stay, 6.0, 220045, "97", 97.0, "bpm")
    planted["duplicate_values_same_time"] = {"stay_id": stay, "hours": 6.0, "itemid": 220045,
                                             "values_in_file_order": [101.0, 97.0]}
    stay = next(pick)
    chart_event(stay, 1.0, 220048, "SR (Sinus Rhythm)", None, "")
    planted["unmapped_item"] = {"stay_id": stay, "itemid": 220048}
    stay = next(pick)
    chart_event(stay, 8.0, 220739, "To Pain", 2.0, "")
    chart_event(stay, 8.0, 223900, "No Response-ETT", 1.0, "")
    planted["gcs_text_values"] = {"stay_id": stay, "hours": 8.0,
                                  "values": ["To Pain", "No Response-ETT"]}

    def lab_event(stay_id: int, hours: float, itemid: int, value: str, valuenum: float | None,
                  unit: str, hadm: bool = True) -> None:
        record = at(stay_id, hours)
        record.pop("stay_id")
        if not hadm:
            record["hadm_id"] = None
        lab_rows.append({**record, "itemid": itemid, "value": value, "valuenum": valuenum,
                         "valueuom": unit})

    stay = next(pick)
    lab_event(stay, 2.5, 50931, "ERROR", None, "mg/dL")
    planted["lab_text_error"] = {"stay_id": stay, "hours": 2.5, "itemid": 50931,
                                 "value": "ERROR"}
    stay = next(pick)
    los = float(by_id.loc[stay, "los_seconds"]) / 3600
    lab_event(stay, -1.5, 50931, "143", 143.0, "mg/dL")
    lab_event(stay, los + 2.0, 50931, "151", 151.0, "mg/dL")
    planted["labs_outside_the_stay"] = {"stay_id": stay, "hours": [-1.5, los + 2.0],
                                        "itemid": 50931}
    stay = next(pick)
    lab_event(stay, 3.0, 50820, "7.31", 7.31, "units", hadm=False)
    planted["lab_without_hadm_id"] = {"stay_id": stay, "hours": 3.0, "itemid": 50820,
                                      "value": 7.31}
    stay = next(pick)
    lab_event(stay, 4.0, 50912, "1.4", 1.4, "mg/dL")
    lab_event(stay, 4.0, 50817, "93", 93.0, "%")
    planted["lab_oxygen_saturation"] = {"stay_id": stay, "hours": 4.0, "itemid": 50817,
                                        "value": 93.0}
    chart = pd.concat([chart, pd.DataFrame(chart_rows)], ignore_index=True)
    lab = pd.concat([lab, pd.DataFrame(lab_rows)], ignore_index=True)
    return chart, lab


def _planted_stays(planted: dict) -> set[int]:
    found: set[int] = set()
    for entry in planted.values():
        if isinstance(entry, dict):
            found.update(v for k, v in entry.items() if k == "stay_id")
            found.update(entry.get("stay_ids", []))
    return found


def _finish_events(chart: pd.DataFrame, lab: pd.DataFrame, stays: pd.DataFrame, version: str,
                   rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """chartevents, labevents and outputevents in their version's columns, file order."""
    chart = chart.sort_values(["subject_id", "stay_id", "charttime"], kind="stable")
    chart["storetime"] = chart["charttime"] + (rng.integers(1, 90, len(chart)) * 60).astype(
        "timedelta64[s]")
    chart["warning"] = 0
    chart["caregiver_id"] = rng.integers(1000, 99999, len(chart))
    lab = lab.sort_values(["subject_id", "charttime"], kind="stable").reset_index(drop=True)
    lab["labevent_id"] = np.arange(1, len(lab) + 1)
    lab["specimen_id"] = 70_000_000 + np.arange(len(lab)) * 3
    lab["storetime"] = lab["charttime"] + np.timedelta64(47, "m")
    lab["order_provider_id"] = [f"P{v:05d}" for v in rng.integers(0, 99999, len(lab)).tolist()]
    lab["ref_range_lower"], lab["ref_range_upper"] = "", ""
    lab["flag"], lab["priority"], lab["comments"] = "", "ROUTINE", ""
    lab["hadm_id"] = lab["hadm_id"].astype("Int64")
    outputs = stays[["subject_id", "hadm_id", "stay_id", "intime"]].copy()
    outputs["charttime"] = outputs["intime"].to_numpy().astype("datetime64[s]") + np.timedelta64(
        2, "h")
    outputs["storetime"] = outputs["charttime"] + np.timedelta64(5, "m")
    outputs["caregiver_id"] = rng.integers(1000, 99999, len(outputs))
    outputs["itemid"], outputs["valueuom"] = _OUTPUT_ITEM[0], _OUTPUT_ITEM[2]
    outputs["value"] = rng.integers(20, 400, len(outputs))
    for frame in (chart, lab, outputs):
        for column in ("charttime", "storetime"):
            frame[column] = timestamps(frame[column].to_numpy().astype("datetime64[s]"))
    columns = _columns(version)
    return (chart[list(columns["chartevents"])], lab[list(columns["labevents"])],
            outputs[list(columns["outputevents"])])


def _dictionaries(version: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """d_items and d_labitems of the items used."""
    items = [(itemid, label, label, "chartevents", "Routine Vital Signs", unit,
              "Text" if channel.startswith("Glascow") else "Numeric", "", "")
             for channel, (itemid, label, unit) in _CHART_ITEMS.items()]
    items += [(itemid, label, label, "chartevents", "Routine Vital Signs", unit,
               "Text" if not unit else "Numeric", "", "")
              for itemid, (label, unit) in _EXTRA_CHART_ITEMS.items()]
    items.append((_OUTPUT_ITEM[0], _OUTPUT_ITEM[1], _OUTPUT_ITEM[1], "outputevents", "Output",
                  _OUTPUT_ITEM[2], "Numeric", "", ""))
    d_items = pd.DataFrame(sorted(items), columns=list(_COLUMNS_V1["d_items"]))
    labs = [(itemid, label, fluid, category, "") for itemid, label, fluid, category, _ in
            _LAB_ITEMS.values()]
    labs += [(itemid, label, fluid, category, "") for itemid, (label, fluid, category, _) in
             _EXTRA_LAB_ITEMS.items()]
    d_labitems = pd.DataFrame(sorted(labs), columns=list(_COLUMNS_V1["d_labitems"]))
    return d_items, d_labitems[list(_columns(version)["d_labitems"])]


# ----------------------------------------------------------------------------- CXR


def _write_cxr(stays: pd.DataFrame, size: DemoSize, seed: int, out: Path, planted: dict,
               add_bar: Callable[[str, int], Callable[[int], None]]) -> int:
    """The raw MIMIC-CXR-JPG 2.0.0 tree; returns the number of images."""
    stays = stays.assign(intime=stays["intime"].to_numpy().astype("datetime64[s]"))
    films = draw_films(stays, size, seed)
    findings = film_findings(films, stays, seed)
    labels = chexpert_labels(findings, part_rng(seed, "chexpert"))
    images = studies(films, stays, seed)
    # A tie: a second AP image of one early study at the same StudyDate/StudyTime, placed right
    # after it in the metadata file but with a smaller dicom_id.
    early = images.index[(images["view"] == "AP") & (images["stay"] >= 0)]
    first = images.loc[early[0]]
    twin = first.copy()
    twin["dicom_id"] = "0" * 8 + first["dicom_id"][8:]
    position = int(early[0]) + 1
    images = pd.concat([images.iloc[:position], twin.to_frame().T, images.iloc[position:]],
                       ignore_index=True)
    stay = stays.iloc[int(first["stay"])]
    planted["cxr_equal_study_time"] = {
        "subject_id": int(first["subject_id"]), "stay_id": int(stay["stay_id"]),
        "study_id": int(first["study_id"]), "dicom_ids_in_file_order": [first["dicom_id"],
                                                                        twin["dicom_id"]],
        "last_in_file": twin["dicom_id"]}
    images = images.astype({"Rows": np.int64, "Columns": np.int64, "frontal": np.int64,
                            "subject_id": np.int64, "study_id": np.int64})
    metadata, chexpert, split = cxr_tables(images, labels, seed)
    chexpert = chexpert.drop_duplicates("study_id")
    out.mkdir(parents=True)
    for name, frame in (("metadata", metadata), ("chexpert", chexpert), ("split", split)):
        _write_gzip_csv(out / f"mimic-cxr-2.0.0-{name}.csv.gz", frame)
    advance = add_bar("raw CXR images", len(images))
    for row in images.itertuples(index=False):
        subject = str(row.subject_id)
        folder = out / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{row.study_id}"
        folder.mkdir(parents=True, exist_ok=True)
        picture = render_film(row, findings, size.image_width, seed)
        picture.save(folder / f"{row.dicom_id}.jpg", format="JPEG", quality=90)
        advance(1)
    return len(images)


# ----------------------------------------------------------------------------- writing


def _write_gzip_csv(path: Path, frame: pd.DataFrame) -> None:
    """``frame`` as a gzip CSV without a timestamp in its header (byte-identical reruns)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as stream:
        stream.write(frame.to_csv(index=False, lineterminator="\n").encode())
    atomic_write_bytes(path, buffer.getvalue())


def _generate_into(root: Path, version: str, size_name: str, seed: int,
                   progress: Callable[[str, int], Callable[[int], None]]) -> dict:
    size = RAW_SIZES[size_name]
    planted: dict = {}
    stays = _cohort(size, seed, planted)
    rng = part_rng(seed, "raw-tables")  # the same patients in every version
    patients, admissions, transfers = _admissions(stays, version, rng, planted)
    diagnoses, d_icd = _diagnoses(stays, part_rng(seed, "raw-icd"), planted)
    chart, lab = _events(stays, seed, planted)
    chart, lab, outputs = _finish_events(chart, lab, stays, version, rng)
    d_items, d_labitems = _dictionaries(version)
    icustays = pd.DataFrame({
        "subject_id": stays["subject_id"], "hadm_id": stays["hadm_id"],
        "stay_id": stays["stay_id"], "first_careunit": stays["first_careunit"],
        "last_careunit": stays["last_careunit"],
        "intime": timestamps(stays["intime"].to_numpy().astype("datetime64[s]")),
        "outtime": timestamps(stays["outtime"].to_numpy().astype("datetime64[s]")),
        "los": stays["los_seconds"] / 86400.0,
    })
    tables = {"patients": patients, "admissions": admissions, "transfers": transfers,
              "diagnoses_icd": diagnoses, "d_icd_diagnoses": d_icd, "labevents": lab,
              "d_labitems": d_labitems, "icustays": icustays, "chartevents": chart,
              "outputevents": outputs, "d_items": d_items}
    columns, folders = _columns(version), _folders(version)
    if version != _V1:
        tables["provider"] = pd.DataFrame({"provider_id": sorted(set(
            admissions["admit_provider_id"]) | set(lab["order_provider_id"]))})
        tables["caregiver"] = pd.DataFrame({"caregiver_id": sorted(set(
            chart["caregiver_id"]) | set(outputs["caregiver_id"]))})
    mimic = root / "mimic-iv"
    advance = progress(f"raw MIMIC-IV v{version} tables", len(tables))
    for name, frame in tables.items():
        (mimic / folders[name]).mkdir(parents=True, exist_ok=True)
        _write_gzip_csv(mimic / folders[name] / f"{name}.csv.gz", frame[list(columns[name])])
        advance(1)
    _write_physionet_files(mimic, version)
    cxr_root = root / "mimic-cxr-jpg"
    count = _write_cxr(stays, size, seed, cxr_root, planted, progress)
    manifest = {
        "generator": "fusebench synthetic raw MIMIC-IV / MIMIC-CXR-JPG (not real data)",
        "mimic_iv_version": version, "size": size_name, "seed": seed,
        "stays": len(stays), "subjects": int(stays["subject_id"].nunique()), "images": count,
        "planted": planted,
    }
    atomic_write_bytes(root / PLANTED, (json.dumps(manifest, indent=2, sort_keys=True)
                                        + "\n").encode())
    return manifest


def _write_physionet_files(mimic: Path, version: str) -> None:
    """LICENSE.txt and SHA256SUMS.txt at the top, as the PhysioNet download has them."""
    atomic_write_bytes(mimic / "LICENSE.txt", (
        f"MIMIC-IV v{version} layout: synthetic fusebench demo data, not real patients.\n"
        "The real data are under the PhysioNet Credentialed Health Data License 1.5.0.\n"
    ).encode())
    sums = []
    for path in sorted(p for p in mimic.rglob("*.csv.gz")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sums.append(f"{digest} {path.relative_to(mimic).as_posix()}\n")
    atomic_write_bytes(mimic / "SHA256SUMS.txt", "".join(sums).encode())


def generate_raw_demo(out: Path, version: str = "3.1", size: str = "tiny", seed: int = 0, *,
                      progress: Callable[[str, int], Callable[[int], None]] | None = None
                      ) -> dict:
    """Write the synthetic raw download into ``out`` (a new or empty folder); returns planted.json.

    The tree is built in a temporary sibling folder and renamed, so ``out`` is never seen
    half-written.

    Args:
        out: folder to create.
        version: MIMIC-IV version whose layout and columns to write (1.0, 2.2 or 3.1).
        size: ``"tiny"`` (about 60 stays, tests) or ``"small"`` (about 300).
        seed: random seed.
        progress: ``add_bar(description, total) -> advance(n)``, or None for silence.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "raw"
        >>> manifest = generate_raw_demo(out, "2.2", progress=None)
        >>> sorted(p.name for p in out.iterdir())
        ['mimic-cxr-jpg', 'mimic-iv', 'planted.json']
    """
    if version not in MIMIC_IV_VERSIONS:
        raise FusebenchError(f"--mimic-iv-version {version}: choose one of "
                             f"{', '.join(MIMIC_IV_VERSIONS)}")
    if size not in RAW_SIZES:
        raise FusebenchError(f"--size {size}: the raw demo has the sizes "
                             f"{', '.join(RAW_SIZES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FusebenchError(f"--out {out}: exists and is not an empty folder; choose a new "
                             "folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        manifest = _generate_into(tmp, version, size, seed,
                                  progress or (lambda description, total: lambda n: None))
        tmp.chmod(0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return manifest

