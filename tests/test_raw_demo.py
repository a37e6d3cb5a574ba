"""The synthetic RAW download (``fusebench data demo --raw``): PhysioNet layout, real columns per
MIMIC-IV version, real item ids and subject ids, planted quirks, determinism; and the whole chain
raw -> extract -> prepare-cxr -> check -> run on it (slow)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fusebench.cli.data import demo_command
from fusebench.data.demo.raw import generate_raw_demo

REFERENCE = Path(__file__).resolve().parents[1] / "benchmark" / "data" / "extract" / "resources"

# Column order of each table as PhysioNet ships it (MIMIC-IV v1.0 and v2.2 documentation).
V1_COLUMNS = {
    "core/patients": "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
    "core/admissions": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,"
                       "admission_location,discharge_location,insurance,language,marital_status,"
                       "ethnicity,edregtime,edouttime,hospital_expire_flag",
    "core/transfers": "subject_id,hadm_id,transfer_id,eventtype,careunit,intime,outtime",
    "hosp/diagnoses_icd": "subject_id,hadm_id,seq_num,icd_code,icd_version",
    "hosp/d_icd_diagnoses": "icd_code,icd_version,long_title",
    "hosp/labevents": "labevent_id,subject_id,hadm_id,specimen_id,itemid,charttime,storetime,"
                      "value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,"
                      "comments",
    "hosp/d_labitems": "itemid,label,fluid,category,loinc_code",
    "icu/icustays": "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
    "icu/chartevents": "subject_id,hadm_id,stay_id,charttime,storetime,itemid,value,valuenum,"
                       "valueuom,warning",
    "icu/outputevents": "subject_id,hadm_id,stay_id,charttime,storetime,itemid,value,valueuom",
    "icu/d_items": "itemid,label,abbreviation,linksto,category,unitname,param_type,"
                   "lownormalvalue,highnormalvalue",
}
V2_COLUMNS = {
    "hosp/patients": V1_COLUMNS["core/patients"],
    "hosp/admissions": "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,"
                       "admit_provider_id,admission_location,discharge_location,insurance,"
                       "language,marital_status,race,edregtime,edouttime,hospital_expire_flag",
    "hosp/transfers": V1_COLUMNS["core/transfers"],
    "hosp/diagnoses_icd": V1_COLUMNS["hosp/diagnoses_icd"],
    "hosp/d_icd_diagnoses": V1_COLUMNS["hosp/d_icd_diagnoses"],
    "hosp/labevents": "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,"
                      "charttime,storetime,value,valuenum,valueuom,ref_range_lower,"
                      "ref_range_upper,flag,priority,comments",
    "hosp/d_labitems": "itemid,label,fluid,category",
    "hosp/provider": "provider_id",
    "icu/icustays": V1_COLUMNS["icu/icustays"],
    "icu/chartevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,"
                       "value,valuenum,valueuom,warning",
    "icu/outputevents": "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,"
                        "value,valueuom",
    "icu/d_items": V1_COLUMNS["icu/d_items"],
    "icu/caregiver": "caregiver_id",
}
CXR_HEADERS = {
    "metadata": "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,"
                "Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,"
                "ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning",
    "split": "dicom_id,study_id,subject_id,split",
}

_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory):
    """``raw(version)``: the tiny raw demo of that version (seed 0), built once per module."""
    def build(version: str) -> Path:
        if version not in _BUILT:
            _BUILT[version] = tmp_path_factory.mktemp("raw") / version
            generate_raw_demo(_BUILT[version], version, "tiny", 0)
        return _BUILT[version]
    return build


def table(root: Path, name: str, **options) -> pd.DataFrame:
    return pd.read_csv(root / "mimic-iv" / f"{name}.csv.gz", **options)


def header(path: Path) -> str:
    with gzip.open(path, "rt") as stream:
        return stream.readline().rstrip("\n")


def planted(root: Path) -> dict:
    return json.loads((root / "planted.json").read_text())["planted"]


@pytest.mark.parametrize("version", ["1.0", "2.2", "3.1"])
def test_tables_have_the_folders_and_columns_of_their_version(raw, version):
    root = raw(version)
    expected = V1_COLUMNS if version == "1.0" else V2_COLUMNS
    found = {str(p.relative_to(root / "mimic-iv")).removesuffix(".csv.gz")
             for p in (root / "mimic-iv").rglob("*.csv.gz")}
    assert found == set(expected)
    for name, columns in expected.items():
        assert header(root / "mimic-iv" / f"{name}.csv.gz") == columns, name
    assert (root / "mimic-iv" / "core").is_dir() == (version == "1.0")
    assert f"v{version}" in (root / "mimic-iv" / "LICENSE.txt").read_text()
    cxr = root / "mimic-cxr-jpg"
    for name, columns in CXR_HEADERS.items():
        assert header(cxr / f"mimic-cxr-2.0.0-{name}.csv.gz") == columns
    assert header(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz").startswith("subject_id,study_id,")
    metadata = pd.read_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz")
    for row in metadata.itertuples():
        subject = str(row.subject_id)
        assert (cxr / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{row.study_id}"
                / f"{row.dicom_id}.jpg").is_file()
    assert len(list((cxr / "files").rglob("*.jpg"))) == len(metadata)


def test_versions_share_patients_and_differ_where_the_releases_do(raw):
    old, new = raw("1.0"), raw("3.1")
    pd.testing.assert_frame_equal(table(old, "icu/icustays"), table(new, "icu/icustays"))
    assert (table(old, "core/admissions")["ethnicity"]
            == table(new, "hosp/admissions")["race"]).all()
    # v2.0 on, dod also records deaths after discharge (state death records).
    late = planted(new)["mortality_on_v2_dod_after_discharge"]["subject_id"]
    old_dod = table(old, "core/patients").set_index("subject_id")["dod"]
    new_dod = table(new, "hosp/patients").set_index("subject_id")["dod"]
    assert pd.isna(old_dod[late]) and not pd.isna(new_dod[late])
    discharge = pd.to_datetime(table(new, "hosp/admissions").set_index("subject_id")
                               .loc[late, "dischtime"])
    assert pd.Timestamp(new_dod[late]) > discharge


def test_same_version_and_seed_give_the_same_bytes(raw, tmp_path):
    again = generate_raw_demo(tmp_path / "again", "1.0", "tiny", 0)

    def digest(root: Path) -> str:
        sha = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            sha.update(str(path.relative_to(root)).encode() + path.read_bytes())
        return sha.hexdigest()

    assert digest(tmp_path / "again") == digest(raw("1.0"))
    assert again["planted"] == planted(raw("1.0"))


def test_item_ids_and_subjects_are_the_extractor_resources_ones(raw):
    root = raw("1.0")
    variables = pd.read_csv(REFERENCE / "itemid_to_variable_map.csv")
    ready = set(variables.loc[variables["STATUS"] == "ready", "ITEMID"])
    quirks = planted(root)
    unmapped = {quirks["unmapped_item"]["itemid"], 50912}  # heart rhythm, creatinine
    for name in ("icu/chartevents", "hosp/labevents"):
        assert set(table(root, name)["itemid"]) - unmapped <= ready, name
    listed = pd.read_csv(REFERENCE / "testset_iv.csv", header=None, names=["subject_id", "flag"])
    subjects = set(table(root, "icu/icustays")["subject_id"])
    unlisted = set(quirks["subjects_missing_from_split_lists"])
    assert unlisted <= subjects and not unlisted & set(listed["subject_id"])
    assert subjects - unlisted <= set(listed["subject_id"])
    assert subjects & set(listed.loc[listed["flag"] == 1, "subject_id"])  # some test subjects


def test_planted_quirks_are_in_the_tables(raw):
    root = raw("1.0")
    quirks = planted(root)
    stays = table(root, "icu/icustays").set_index("stay_id")
    transfer = stays.loc[quirks["icu_transfer"]["stay_id"]]
    assert transfer["first_careunit"] != transfer["last_careunit"]
    both = quirks["two_stays_one_admission"]
    assert stays.loc[both["stay_ids"], "hadm_id"].nunique() == 1
    for name, hours in (("stay_47_99h", 47.99), ("stay_48_01h", 48.01)):
        stay = stays.loc[quirks[name]["stay_id"]]
        length = pd.Timestamp(stay["outtime"]) - pd.Timestamp(stay["intime"])
        assert length == pd.Timedelta(hours=hours)
    chart = table(root, "icu/chartevents")
    edge = quirks["events_at_intime_and_48h"]
    intime = pd.Timestamp(stays.loc[edge["stay_id"], "intime"])
    times = pd.to_datetime(chart.loc[(chart["stay_id"] == edge["stay_id"])
                                     & (chart["itemid"] == 220045), "charttime"])
    assert {intime, intime + pd.Timedelta(hours=48)} <= set(times)

    def rows(stay_id: int, itemid: int) -> pd.DataFrame:
        return chart[(chart["stay_id"] == stay_id) & (chart["itemid"] == itemid)]

    assert rows(quirks["temperature_fahrenheit"]["stay_id"], 223761)["valueuom"].tolist() == ["°F"]
    height = quirks["height_inch_and_cm_same_time"]["stay_id"]
    inch, cm = rows(height, 226707), rows(height, 226730)
    assert set(inch["charttime"]) & set(cm["charttime"]) and inch["valuenum"].iloc[0] == 70
    assert rows(quirks["weight_pounds"]["stay_id"], 226531)["valueuom"].tolist() == ["lbs"]
    assert {0.5, 50.0} <= set(rows(quirks["fio2_fraction_and_percent"]["stay_id"], 223835)
                               ["valuenum"])
    assert 0.96 in set(rows(quirks["spo2_fraction"]["stay_id"], 220277)["valuenum"])
    duplicate = quirks["duplicate_values_same_time"]
    same_time = rows(duplicate["stay_id"], 220045).groupby("charttime")["valuenum"].agg(list)
    assert duplicate["values_in_file_order"] in same_time.tolist()
    assert {"To Pain", "No Response-ETT"} <= set(
        chart.loc[chart["stay_id"] == quirks["gcs_text_values"]["stay_id"], "value"])

    labs = table(root, "hosp/labevents", dtype={"value": str})
    assert "ERROR" in set(labs.loc[labs["itemid"] == 50931, "value"])
    no_hadm = labs[labs["hadm_id"].isna()]
    assert len(no_hadm) == 1 and no_hadm["itemid"].iloc[0] == 50820
    outside = stays.loc[quirks["labs_outside_the_stay"]["stay_id"]]
    subject_labs = pd.to_datetime(labs.loc[labs["subject_id"] == outside["subject_id"],
                                           "charttime"])
    assert (subject_labs < pd.Timestamp(outside["intime"])).any()
    assert (subject_labs > pd.Timestamp(outside["outtime"])).any()

    patients = table(root, "core/patients").set_index("subject_id")
    assert patients.loc[quirks["anchor_age_91"]["subject_id"], "anchor_age"] == 91
    assert patients.loc[quirks["under_18"]["subject_id"], "anchor_age"] == 16
    death = quirks["death_on_discharge_day_without_deathtime"]
    admission = table(root, "core/admissions").set_index("hadm_id").loc[death["hadm_id"]]
    assert pd.isna(admission["deathtime"]) and admission["hospital_expire_flag"] == 0
    assert patients.loc[death["subject_id"], "dod"] == admission["dischtime"][:10]

    diagnoses = table(root, "hosp/diagnoses_icd", dtype={"icd_code": str})
    assert ((diagnoses["icd_code"] == "0389") & (diagnoses["icd_version"] == 9)).any()
    titles = table(root, "hosp/d_icd_diagnoses", dtype={"icd_code": str})
    assert sorted(titles.loc[titles["icd_code"] == "E030", "icd_version"]) == [9, 10]

    tie = quirks["cxr_equal_study_time"]
    metadata = pd.read_csv(root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz")
    twins = metadata[metadata["dicom_id"].isin(tie["dicom_ids_in_file_order"])]
    assert twins["dicom_id"].tolist() == tie["dicom_ids_in_file_order"]
    assert twins[["StudyDate", "StudyTime", "ViewPosition"]].nunique().tolist() == [1, 1, 1]
    assert tie["last_in_file"] < tie["dicom_ids_in_file_order"][0]  # not the largest id


def test_the_raw_command_needs_out_and_a_known_version(tmp_path):
    runner = CliRunner()
    result = runner.invoke(demo_command, ["--raw"])
    assert result.exit_code != 0 and "--raw needs --out" in str(result.exception)
    result = runner.invoke(demo_command, ["--raw", "--out", str(tmp_path / "r"),
                                          "--mimic-iv-version", "3.0"])
    assert result.exit_code == 2 and "3.0" in result.output
    result = runner.invoke(demo_command, ["--raw", "--out", str(tmp_path / "r"), "--no-progress",
                                          "--mimic-iv-version", "2.2"])
    assert result.exit_code == 0, result.output
    assert "MIMIC-IV v2.2 layout" in result.output and (tmp_path / "r" / "planted.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("version", ["1.0", "2.2", "3.1"])
def test_raw_to_leaderboard_chain(raw, tmp_path, version):
    """demo --raw -> data extract -> prepare-cxr -> data check -> run, on each version."""
    pytest.importorskip("duckdb")
    from fusebench.cli import cli

    root, data = raw(version), tmp_path / "data"
    runner = CliRunner()
    steps = [
        ["data", "extract", "--mimic-iv", str(root / "mimic-iv"), "--out", str(data)],
        ["data", "prepare-cxr", "--raw", str(root / "mimic-cxr-jpg"), "--out", str(data / "cxr"),
         "--ehr-root", str(data / "ehr")],
        ["data", "check", "--data-root", str(data)],
        ["run", "--data-root", str(data), "--task", "phenotyping", "--method", "uni-ehr",
         "--epochs", "1", "--image-size", "32", "--out", str(tmp_path / "runs")],
    ]
    for args in steps:
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args[:2], result.output, result.exception)
    quirks = planted(root)
    ihm = pd.concat(pd.read_csv(data / "ehr" / "in-hospital-mortality" / f"{s}_listfile.csv")
                    for s in ("train", "val", "test"))
    pheno = pd.concat(pd.read_csv(data / "ehr" / "phenotyping" / f"{s}_listfile.csv")
                      for s in ("train", "val", "test"))
    # The original's cohort filters (medfuse-2022): ICU transfers, admissions with two stays and
    # patients under 18 are dropped; a 47.99 h stay is not an IHM stay, a 48.01 h one is.
    dropped = {quirks["icu_transfer"]["stay_id"], quirks["under_18"]["stay_id"],
               *quirks["two_stays_one_admission"]["stay_ids"]}
    assert not dropped & set(pheno["stay_id"])
    assert quirks["stay_47_99h"]["stay_id"] in set(pheno["stay_id"]) - set(ihm["stay_id"])
    assert quirks["stay_48_01h"]["stay_id"] in set(ihm["stay_id"])
    # dod within the admission counts as an in-hospital death in the original's rule.
    death = ihm.set_index("stay_id").loc[
        quirks["death_on_discharge_day_without_deathtime"]["stay_id"], "y_true"]
    assert death == 1
    split = pd.read_csv(data / "cxr" / "mimic-cxr-ehr-split.csv")
    test_subjects = set(pd.read_csv(data / "ehr" / "phenotyping" / "test_listfile.csv")["stay"]
                        .str.split("_").str[0].astype(int))
    assert set(split.loc[split["split"] == "test", "subject_id"]) == test_subjects & set(
        split["subject_id"])
