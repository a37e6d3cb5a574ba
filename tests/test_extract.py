"""``fusebench data extract``: hand-made raw MIMIC-IV tables with real headers -> the EHR root.

The fixture writes the raw tables of each version (v1.0 ``core/``; v2.2 / v3.1 ``hosp/`` with
``race`` and the provider columns) with the columns in the real order, and plants the cases the
two profiles treat differently. Expected values follow the rules of MedFuse's ``mimic4extract``
(``mimic3benchmark/mimic3csv.py``, ``preprocessing.py``, ``subject.py``, ``create_*.py``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("duckdb")

from fusebench.data.extract import extract_mimic_iv
from fusebench.data.extract.raw import open_raw
from fusebench.data.extract.resources import hash_split, phenotype_definitions
from fusebench.errors import FusebenchError

HEADERS = {
    "1.0": {
        "core/patients": ["subject_id", "gender", "anchor_age", "anchor_year",
                          "anchor_year_group", "dod"],
        "core/admissions": ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                            "admission_type", "admission_location", "discharge_location",
                            "insurance", "language", "marital_status", "ethnicity", "edregtime",
                            "edouttime", "hospital_expire_flag"],
        "icu/icustays": ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit",
                         "intime", "outtime", "los"],
        "icu/chartevents": ["subject_id", "hadm_id", "stay_id", "charttime", "storetime",
                            "itemid", "value", "valuenum", "valueuom", "warning"],
        "hosp/labevents": ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid",
                           "charttime", "storetime", "value", "valuenum", "valueuom",
                           "ref_range_lower", "ref_range_upper", "flag", "priority", "comments"],
        "hosp/diagnoses_icd": ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"],
        "hosp/d_icd_diagnoses": ["icd_code", "icd_version", "long_title"],
        "hosp/d_labitems": ["itemid", "label", "fluid", "category", "loinc_code"],
    },
}
HEADERS["2.2"] = {
    "hosp/patients": ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group",
                      "dod"],
    "hosp/admissions": ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                        "admission_type", "admit_provider_id", "admission_location",
                        "discharge_location", "insurance", "language", "marital_status", "race",
                        "edregtime", "edouttime", "hospital_expire_flag"],
    "icu/icustays": HEADERS["1.0"]["icu/icustays"],
    "icu/chartevents": ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime",
                        "storetime", "itemid", "value", "valuenum", "valueuom", "warning"],
    "hosp/labevents": ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid",
                       "order_provider_id", "charttime", "storetime", "value", "valuenum",
                       "valueuom", "ref_range_lower", "ref_range_upper", "flag", "priority",
                       "comments"],
    "hosp/diagnoses_icd": HEADERS["1.0"]["hosp/diagnoses_icd"],
    "hosp/d_icd_diagnoses": HEADERS["1.0"]["hosp/d_icd_diagnoses"],
    "hosp/d_labitems": ["itemid", "label", "fluid", "category"],
}
HEADERS["3.1"] = HEADERS["2.2"]

# Subjects: ids taken from the v1.0 split lists (testset_iv flag 1, valset_iv flag 1, neither).
S_TEST, S_VAL, S_TRAIN, S_TWO_STAYS, S_TRANSFER, S_CHILD, S_UNLISTED, S_NO_DX = (
    14851532, 16640179, 19420610, 10663695, 10989722, 17597690, 1000001, 19760298)


def _t(day: int, hour: float) -> str:
    """``2150-01-{day} 00:00:00`` plus ``hour`` hours (fractional, negative or past midnight)."""
    moment = datetime(2150, 1, day) + timedelta(seconds=round(hour * 3600))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _stay(subject, hadm, stay, hours, first="MICU", last="MICU", day=2):
    return {"subject_id": subject, "hadm_id": hadm, "stay_id": stay, "first_careunit": first,
            "last_careunit": last, "intime": _t(day, 10), "outtime": _t(day, 10 + hours),
            "los": hours / 24}


def _rows(version: str) -> dict[str, list[dict]]:
    """The planted raw rows (all times in January 2150)."""
    patients = [
        {"subject_id": S_TEST, "gender": "F", "anchor_age": 60, "dod": ""},
        # Dies on the day of discharge with no deathtime: dod-based in-hospital death.
        {"subject_id": S_VAL, "gender": "M", "anchor_age": 70, "dod": "2150-01-05"},
        {"subject_id": S_TRAIN, "gender": "M", "anchor_age": 91, "dod": ""},
        {"subject_id": S_TWO_STAYS, "gender": "F", "anchor_age": 50, "dod": ""},
        {"subject_id": S_TRANSFER, "gender": "F", "anchor_age": 50, "dod": ""},
        {"subject_id": S_CHILD, "gender": "M", "anchor_age": 17, "dod": ""},
        {"subject_id": S_UNLISTED, "gender": "M", "anchor_age": 40, "dod": ""},
        {"subject_id": S_NO_DX, "gender": "F", "anchor_age": 33, "dod": ""},
    ]
    admissions = [
        {"subject_id": s, "hadm_id": h, "admittime": _t(1, 8), "dischtime": _t(9, 12),
         "deathtime": "", "hospital_expire_flag": 0}
        for s, h in ((S_TEST, 201), (S_TRAIN, 203), (S_TWO_STAYS, 204), (S_TRANSFER, 205),
                     (S_CHILD, 206), (S_UNLISTED, 207), (S_NO_DX, 208))]
    admissions.append({"subject_id": S_VAL, "hadm_id": 202, "admittime": _t(1, 8),
                       "dischtime": _t(5, 18), "deathtime": "", "hospital_expire_flag": 0})
    for row in admissions:
        row["race" if version != "1.0" else "ethnicity"] = "WHITE"
    icustays = [
        _stay(S_TEST, 201, 301, 50.0),
        _stay(S_VAL, 202, 302, 47.99),
        _stay(S_TRAIN, 203, 303, 48.01),
        _stay(S_TWO_STAYS, 204, 304, 60.0), _stay(S_TWO_STAYS, 204, 314, 30.0, day=6),
        _stay(S_TRANSFER, 205, 305, 60.0, first="MICU", last="SICU"),
        _stay(S_CHILD, 206, 306, 60.0),
        _stay(S_UNLISTED, 207, 307, 30.0),
        _stay(S_NO_DX, 208, 308, 60.0),
    ]
    chart = []

    def c(subject, hadm, stay, hour, itemid, value, unit="", day=2):
        chart.append({"subject_id": subject, "hadm_id": hadm, "stay_id": stay,
                      "charttime": _t(day, 10 + hour), "storetime": _t(day, 10 + hour),
                      "itemid": itemid, "value": value, "valuenum": value, "valueuom": unit,
                      "warning": 0})

    # S_TEST: text subject (GCS), duplicates at one time, units, event at exactly intime and 48 h.
    c(S_TEST, 201, 301, 0, 220045, "100", "bpm")
    c(S_TEST, 201, 301, 0, 220045, "80", "bpm")            # same time: medfuse keeps '80'
    c(S_TEST, 201, 301, 0, 220739, "Spontaneously")
    c(S_TEST, 201, 301, 1, 223761, "98.6", "°F")          # Fahrenheit >= 79 (both convert)
    c(S_TEST, 201, 301, 1, 223835, "50", "")               # FiO2 percent
    c(S_TEST, 201, 301, 2, 223835, "0.5", "")              # FiO2 fraction: medfuse -> 0.005
    c(S_TEST, 201, 301, 3, 226707, "70", "Inch")           # inch height: medfuse keeps 70
    c(S_TEST, 201, 301, 3, 226730, "178", "cm")
    c(S_TEST, 201, 301, 4, 226531, "150", "lbs")          # pounds (label says lbs)
    c(S_TEST, 201, 301, 5, 220277, "0.95", "%")            # SpO2 <= 1 -> 95
    c(S_TEST, 201, 301, 48, 220045, "90", "bpm")           # exactly 48 h: in the IHM window
    c(S_TEST, 201, 301, 49, 220045, "95", "bpm")           # after 48 h: phenotyping only
    # S_VAL: numbers only; Fahrenheit under 79 ('F' unit but value 36.9): medfuse keeps it.
    c(S_VAL, 202, 302, 0.5, 220045, "70", "bpm")
    c(S_VAL, 202, 302, 1, 223761, "36.9", "°F")
    # S_TRAIN (48.01 h), S_UNLISTED, S_NO_DX, dropped subjects: a heart rate each.
    for subject, hadm, stay in ((S_TRAIN, 203, 303), (S_UNLISTED, 207, 307), (S_NO_DX, 208, 308),
                                (S_TWO_STAYS, 204, 304), (S_TRANSFER, 205, 305),
                                (S_CHILD, 206, 306)):
        c(subject, hadm, stay, 1, 220045, "88", "bpm")
    labs = []

    def lab(subject, hadm, hour, itemid, value, unit="", day=2):
        labs.append({"labevent_id": len(labs) + 1, "subject_id": subject, "hadm_id": hadm,
                     "specimen_id": len(labs) + 1, "itemid": itemid, "charttime":
                     _t(day, 10 + hour), "storetime": _t(day, 10 + hour), "value": value,
                     "valuenum": value, "valueuom": unit, "priority": "ROUTINE",
                     "comments": "drawn, \"stat\"" if itemid == 50931 else ""})

    lab(S_TEST, 201, 6, 50931, "120", "mg/dL")
    lab(S_TEST, 201, 7, 50931, "ERROR")                   # text lab: dropped
    lab(S_TEST, 201, -5, 50820, "7.4")                    # before ICU: same admission, -5 h
    lab(S_TEST, "", 8, 50820, "7.3")                      # no hadm_id: dropped
    lab(S_VAL, 202, 2, 50820, "7.35")
    diagnoses = []

    def dx(subject, hadm, code, version_):
        diagnoses.append({"subject_id": subject, "hadm_id": hadm, "seq_num": len(diagnoses) + 1,
                          "icd_code": code, "icd_version": version_})

    dx(S_TEST, 201, "4019", 9)     # Essential hypertension
    dx(S_TEST, 201, "0389", 9)     # Septicemia (leading zero)
    dx(S_VAL, 202, "I10", 10)      # Essential hypertension (ICD-10)
    dx(S_TRAIN, 203, "4280", 9)    # Congestive heart failure
    dx(S_UNLISTED, 207, "486", 9)  # Pneumonia
    for subject, hadm in ((S_TWO_STAYS, 204), (S_TRANSFER, 205), (S_CHILD, 206)):
        dx(subject, hadm, "4019", 9)
    codes = [{"icd_code": code, "icd_version": v, "long_title": title} for code, v, title in (
        ("4019", 9, "Hypertension NOS"), ("0389", 9, "Septicemia NOS"),
        ("I10", 10, "Essential (primary) hypertension"), ("4280", 9, "CHF NOS"),
        ("486", 9, "Pneumonia, organism NOS"))]
    labitems = [{"itemid": i, "label": "x", "fluid": "Blood", "category": "Chemistry"}
                for i in (50931, 50820)]
    return {"patients": patients, "admissions": admissions, "icustays": icustays,
            "chartevents": chart, "labevents": labs, "diagnoses_icd": diagnoses,
            "d_icd_diagnoses": codes, "d_labitems": labitems}


def write_raw_mimic(root: Path, version: str = "1.0", *, gz: bool = True,
                    rows: dict[str, list[dict]] | None = None) -> Path:
    """Write the raw tables of ``version`` (real headers, real column order) under ``root``."""
    rows = rows if rows is not None else _rows(version)
    for relative, header in HEADERS[version].items():
        table = relative.split("/")[1]
        path = root / f"{relative}.csv{'.gz' if gz else ''}"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, header, restval="", extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[table])
        data = buffer.getvalue().encode()
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return root


def _episode(ehr: Path, task: str, folder: str, name: str) -> pd.DataFrame:
    return pd.read_csv(ehr / task / folder / name, keep_default_na=False, na_values=[""])


def _listfile(ehr: Path, task: str, split: str) -> pd.DataFrame:
    return pd.read_csv(ehr / task / f"{split}_listfile.csv")


@pytest.fixture(scope="module")
def extracted_v1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("extract_v1")
    raw = write_raw_mimic(base / "raw" / "mimic-iv", "1.0")
    outputs = {}
    for profile in ("medfuse-2022", "corrected"):
        extract_mimic_iv(raw, base / profile, profile=profile, progress=False)
        outputs[profile] = base / profile / "ehr"
    return outputs


def test_cohort_filters_in_the_original_order(extracted_v1: dict[str, Path]) -> None:
    stays = pd.read_csv(extracted_v1["medfuse-2022"] / "root" / "all_stays.csv")
    # Transfer, the admission with two stays and the 17-year-old are gone; 91 stays.
    assert sorted(stays["stay_id"]) == [301, 302, 303, 307, 308]
    assert stays.set_index("stay_id").loc[303, "age"] == 91
    summary = json.loads((extracted_v1["medfuse-2022"] / "extract.json").read_text())
    assert summary["mimic_iv_version"] == "1.0"
    steps = summary["counts"]["cohort"]
    assert [steps[k]["stays"] for k in ("start", "remove ICU transfers",
                                        "remove multiple stays per admission",
                                        "remove patients age < 18")] == [9, 8, 6, 5]


def test_ihm_window_and_mortality(extracted_v1: dict[str, Path]) -> None:
    ehr = extracted_v1["medfuse-2022"]
    rows = {split: _listfile(ehr, "in-hospital-mortality", split) for split in
            ("train", "val", "test")}
    all_ihm = pd.concat(rows.values())
    # 47.99 h stay (302) is not an IHM stay; 48.01 h (303) is; 308 has no diagnoses.
    assert sorted(all_ihm["stay_id"]) == [301, 303]
    assert list(rows["test"]["stay"]) == [f"{S_TEST}_episode1_timeseries.csv"]
    assert set(all_ihm["period_length"]) == {0}
    episode = _episode(ehr, "in-hospital-mortality", "test", f"{S_TEST}_episode1_timeseries.csv")
    # Lab 5 h before intime and the 49 h heart rate are outside; the 48 h one is inside.
    assert episode["Hours"].min() == 0.0 and episode["Hours"].max() == 48.0
    pheno = _listfile(ehr, "phenotyping", "val")
    assert list(pheno["stay_id"]) == [302]
    stays = pd.read_csv(ehr / "root" / "all_stays.csv").set_index("stay_id")
    assert stays.loc[302, "mortality"] == 1   # dod on the discharge day, no deathtime


def test_medfuse_profile_quirks(extracted_v1: dict[str, Path]) -> None:
    episode = _episode(extracted_v1["medfuse-2022"], "phenotyping", "test",
                       f"{S_TEST}_episode1_timeseries.csv").set_index("Hours")
    assert episode.loc[0.0, "Heart Rate"] == 80             # '100' < '80' as text
    assert episode.loc[0.0, "Glascow coma scale eye opening"] == "Spontaneously"
    assert episode.loc[1.0, "Temperature"] == pytest.approx(37.0)
    assert episode.loc[1.0, "Fraction inspired oxygen"] == pytest.approx(0.5)
    assert episode.loc[2.0, "Fraction inspired oxygen"] == pytest.approx(0.005)
    assert episode.loc[3.0, "Height"] == 178                # cm (larger of 70 and 178)
    assert episode.loc[4.0, "Weight"] == pytest.approx(150 * 0.453592)
    assert episode.loc[5.0, "Oxygen saturation"] == pytest.approx(95.0)
    assert episode.loc[6.0, "Glucose"] == 120
    assert 7.0 not in episode.index                        # "ERROR" glucose dropped
    assert 8.0 not in episode.index                        # lab without hadm_id dropped
    assert episode.loc[49.0, "Heart Rate"] == 95
    labels = _listfile(extracted_v1["medfuse-2022"], "phenotyping", "test").iloc[0]
    assert labels["Essential hypertension"] == 1 and labels["Septicemia (except in labor)"] == 1
    assert labels["period_length"] == pytest.approx(50.0)


def test_corrected_profile_fixes(extracted_v1: dict[str, Path]) -> None:
    ehr = extracted_v1["corrected"]
    episode = _episode(ehr, "phenotyping", "test",
                       f"{S_TEST}_episode1_timeseries.csv").set_index("Hours")
    assert episode.loc[0.0, "Heart Rate"] == 100            # compared as numbers
    assert episode.loc[2.0, "Fraction inspired oxygen"] == pytest.approx(0.5)
    assert episode.loc[3.0, "Height"] == 178                # 70 in = 178 cm (rounded)
    val = _episode(ehr, "phenotyping", "train", f"{S_VAL}_episode1_timeseries.csv")
    # 36.9 with unit °F: converted by unit in corrected, kept in medfuse-2022 (< 79).
    assert val["Temperature"].dropna().iloc[0] == pytest.approx((36.9 - 32) * 5 / 9)
    medfuse_val = _episode(extracted_v1["medfuse-2022"], "phenotyping", "train",
                           f"{S_VAL}_episode1_timeseries.csv")
    assert medfuse_val["Temperature"].dropna().iloc[0] == pytest.approx(36.9)
    # The unlisted subject: train in medfuse-2022, its seeded hash split in corrected.
    expected = hash_split(S_UNLISTED)
    found = [s for s in ("train", "val", "test")
             if 307 in set(_listfile(ehr, "phenotyping", s)["stay_id"])]
    assert found == [expected]
    assert 307 in set(_listfile(extracted_v1["medfuse-2022"], "phenotyping", "train")["stay_id"])


def test_phenotype_header_is_the_real_one(extracted_v1: dict[str, Path]) -> None:
    from fusebench.data.labels import PHENOTYPE_LABELS

    line = (extracted_v1["medfuse-2022"] / "phenotyping" / "train_listfile.csv").read_text(
    ).splitlines()[0]
    # The readers' 25 names (the real header, phenotype_labels.json), in the same order.
    assert tuple(line.split(",")[3:]) == tuple(PHENOTYPE_LABELS) == phenotype_definitions().labels
    assert "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)" in line


def test_plain_csv_and_v22_layout(tmp_path: Path) -> None:
    raw = write_raw_mimic(tmp_path / "raw", "2.2", gz=False)
    summary = extract_mimic_iv(raw, tmp_path / "out", progress=False)
    assert summary.version == "2.2+"
    stays = pd.read_csv(tmp_path / "out" / "ehr" / "root" / "all_stays.csv")
    assert "race" in stays.columns and sorted(stays["stay_id"]) == [301, 302, 303, 307, 308]


def test_v31_named_folder_is_detected(tmp_path: Path) -> None:
    raw = write_raw_mimic(tmp_path / "mimiciv" / "3.1", "3.1")
    assert open_raw(raw).version == "3.1"


def test_v30_lab_items_are_refused(tmp_path: Path) -> None:
    rows = _rows("3.1")
    rows["d_labitems"] = [{"itemid": 52000 + i, "label": "x"} for i in range(3)]
    raw = write_raw_mimic(tmp_path / "raw", "3.1", rows=rows)
    with pytest.raises(FusebenchError, match="v3.0.*v3.1"):
        open_raw(raw)


def test_missing_column_is_named(tmp_path: Path) -> None:
    raw = write_raw_mimic(tmp_path / "raw", "1.0")
    path = raw / "icu" / "icustays.csv.gz"
    text = gzip.decompress(path.read_bytes()).decode().replace("last_careunit", "lastunit", 1)
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(FusebenchError, match=r"icustays.csv.gz line 1: missing column "
                                             r"'last_careunit'"):
        open_raw(raw)


def test_existing_output_needs_resume(tmp_path: Path) -> None:
    raw = write_raw_mimic(tmp_path / "raw", "1.0")
    extract_mimic_iv(raw, tmp_path / "out", progress=False)
    with pytest.raises(FusebenchError, match="--resume"):
        extract_mimic_iv(raw, tmp_path / "out", progress=False)
    before = (tmp_path / "out" / "ehr" / "phenotyping" / "test_listfile.csv").read_text()
    extract_mimic_iv(raw, tmp_path / "out", progress=False, resume=True)
    assert (tmp_path / "out" / "ehr" / "phenotyping" / "test_listfile.csv").read_text() == before


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "extract.json"}


def test_a_failed_stage_resumes_and_leaves_no_half_written_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusebench.data.extract import pipeline

    raw = write_raw_mimic(tmp_path / "raw", "1.0")
    extract_mimic_iv(raw, tmp_path / "whole", progress=False)
    written = []

    def dies_after_two_files(path: Path, header: str, lines: list[str]) -> None:
        if len(written) == 2:  # the two IHM episodes are written; the first phenotyping one dies
            raise KeyboardInterrupt
        written.append(path)
        original_write(path, header, lines)

    original_write = pipeline._write_episode
    monkeypatch.setattr(pipeline, "_write_episode", dies_after_two_files)
    with pytest.raises(KeyboardInterrupt):
        extract_mimic_iv(raw, tmp_path / "out", progress=False)
    ehr = tmp_path / "out" / "ehr"
    # Nothing of the unfinished task is in its final place; the finished stages are recorded.
    assert not (ehr / "phenotyping").exists() and not (ehr / "extract.json").exists()
    assert (ehr / "in-hospital-mortality" / "test_listfile.csv").is_file()
    state = json.loads((tmp_path / "out" / ".extract-work" / "state.json").read_text())
    assert set(state["done"]) == {"cohort", "diagnoses", "chartevents", "labevents",
                                  "timeseries", "in-hospital-mortality"}
    with pytest.raises(FusebenchError, match="--resume"):
        extract_mimic_iv(raw, tmp_path / "out", progress=False)
    monkeypatch.setattr(pipeline, "_write_episode", original_write)
    summary = extract_mimic_iv(raw, tmp_path / "out", progress=False, resume=True)
    assert set(summary.seconds) == {"phenotyping"}  # only the unfinished stage ran again
    assert _tree(ehr) == _tree(tmp_path / "whole" / "ehr")
    assert not (tmp_path / "out" / ".extract-work").exists()


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    raw = write_raw_mimic(tmp_path / "raw", "2.2")
    extract_mimic_iv(raw, tmp_path / "whole", progress=False)
    code = ("from pathlib import Path; from fusebench.data.extract import extract_mimic_iv; "
            f"extract_mimic_iv(Path({str(raw)!r}), Path({str(tmp_path / 'out')!r}), "
            "progress=False)")
    process = subprocess.Popen([sys.executable, "-c", code])
    state = tmp_path / "out" / ".extract-work" / "state.json"
    deadline = time.monotonic() + 60
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    extract_mimic_iv(raw, tmp_path / "out", progress=False, resume=True)
    assert _tree(tmp_path / "out" / "ehr") == _tree(tmp_path / "whole" / "ehr")


def test_a_truncated_table_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    raw = write_raw_mimic(tmp_path / "raw", "1.0")
    path = raw / "icu" / "chartevents.csv.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FusebenchError, match=r"chartevents.csv.gz: .*re-download") as error:
        extract_mimic_iv(raw, tmp_path / "out", progress=False)
    assert "\n" not in str(error.value)


def test_cli_json_summary_and_one_line_refusal(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fusebench.cli import cli

    raw = write_raw_mimic(tmp_path / "raw", "1.0")
    result = CliRunner().invoke(cli, ["data", "extract", "--mimic-iv", str(raw), "--out",
                                      str(tmp_path / "out"), "--profile", "corrected", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["mimic_iv_version"] == "1.0" and summary["profile"] == "corrected"
    assert summary["counts"]["phenotyping"]["test stays"] == 1
    rows = _rows("3.1")
    rows["d_labitems"] = [{"itemid": 52000, "label": "x"}]
    v30 = write_raw_mimic(tmp_path / "v30", "3.1", rows=rows)
    refused = CliRunner().invoke(cli, ["data", "extract", "--mimic-iv", str(v30), "--out",
                                       str(tmp_path / "out30")])
    assert refused.exit_code != 0
    assert "v3.1" in str(refused.exception) and "\n" not in str(refused.exception).strip()
