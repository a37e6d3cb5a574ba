"""From a raw download to a result: ``data demo --raw`` -> ``data extract`` -> ``data prepare-cxr``
-> ``data check`` -> ``run``, for the v1.0, v2.2 and v3.1 layouts; the planted quirks of the raw
demo (``planted.json``) land where each profile says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

pytest.importorskip("duckdb")

from fusebench.cli import cli as cli_main
from fusebench.data.demo.raw import generate_raw_demo
from fusebench.data.extract import extract_mimic_iv
from fusebench.data.extract.resources import hash_split

IHM, PHENO = "in-hospital-mortality", "phenotyping"
PROFILES = ("medfuse-2022", "corrected")


def _extract(base: Path, version: str) -> dict:
    manifest = generate_raw_demo(base / "raw", version, "tiny", 0)
    outputs = {profile: base / profile for profile in PROFILES}
    for profile, out in outputs.items():
        extract_mimic_iv(base / "raw" / "mimic-iv", out, profile=profile, progress=False)
    return {"base": base, "planted": manifest["planted"], "out": outputs}


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _extract(tmp_path_factory.mktemp("raw_v1"), "1.0")


def _stays(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "ehr" / "root" / "all_stays.csv").set_index("stay_id")


def _split_of(out: Path, task: str, stay_id: int) -> str | None:
    for split in ("train", "val", "test"):
        frame = pd.read_csv(out / "ehr" / task / f"{split}_listfile.csv")
        if stay_id in set(frame["stay_id"]):
            return split
    return None


def _episode(out: Path, task: str, stay_id: int) -> pd.DataFrame:
    split = _split_of(out, task, stay_id)
    assert split is not None, f"stay {stay_id} is not in any {task} listfile"
    listfile = pd.read_csv(out / "ehr" / task / f"{split}_listfile.csv").set_index("stay_id")
    folder = "test" if split == "test" else "train"
    return pd.read_csv(out / "ehr" / task / folder / listfile.loc[stay_id, "stay"],
                       keep_default_na=False, na_values=[""]).set_index("Hours")


def _value(frame: pd.DataFrame, hours: float, column: str):
    return frame.loc[frame.index[abs(frame.index - hours) < 1e-6][0], column]


def test_cohort_quirks(v1: dict) -> None:
    planted = v1["planted"]
    for profile in PROFILES:
        stays = _stays(v1["out"][profile])
        assert planted["icu_transfer"]["stay_id"] not in stays.index
        assert not set(planted["two_stays_one_admission"]["stay_ids"]) & set(stays.index)
        assert planted["under_18"]["stay_id"] not in stays.index
        assert stays.loc[planted["anchor_age_91"]["stay_id"], "age"] == 91
        # v1.0: dod on the discharge day counts as an in-hospital death in both profiles.
        assert stays.loc[planted["death_on_discharge_day_without_deathtime"]["stay_id"],
                         "mortality"] == 1
        assert _split_of(v1["out"][profile], IHM, planted["stay_47_99h"]["stay_id"]) is None
        assert _split_of(v1["out"][profile], PHENO, planted["stay_47_99h"]["stay_id"])
        assert _split_of(v1["out"][profile], IHM, planted["stay_48_01h"]["stay_id"])


def test_event_quirks_per_profile(v1: dict) -> None:
    planted = v1["planted"]
    medfuse, corrected = (v1["out"][p] for p in PROFILES)
    at = planted["events_at_intime_and_48h"]
    ihm = _episode(medfuse, IHM, at["stay_id"])
    assert [_value(ihm, h, "Heart Rate") for h in at["hours"]] == at["values"]
    fio2 = planted["fio2_fraction_and_percent"]
    for out, fraction in ((medfuse, fio2["fraction"]["value"] / 100),
                          (corrected, fio2["fraction"]["value"])):
        episode = _episode(out, PHENO, fio2["stay_id"])
        assert _value(episode, fio2["fraction"]["hours"], "Fraction inspired oxygen") == \
            pytest.approx(fraction)
        assert _value(episode, fio2["percent"]["hours"], "Fraction inspired oxygen") == \
            pytest.approx(fio2["percent"]["value"] / 100)
    for out in (medfuse, corrected):
        temperature = planted["temperature_fahrenheit"]
        episode = _episode(out, PHENO, temperature["stay_id"])
        assert _value(episode, temperature["hours"], "Temperature") == \
            pytest.approx(temperature["celsius"], abs=0.01)
        weight = planted["weight_pounds"]
        assert _value(_episode(out, PHENO, weight["stay_id"]), weight["hours"], "Weight") == \
            pytest.approx(weight["kg"], abs=1e-3)
        spo2 = planted["spo2_fraction"]
        assert _value(_episode(out, PHENO, spo2["stay_id"]), spo2["hours"],
                      "Oxygen saturation") == pytest.approx(spo2["percent"])
        error = planted["lab_text_error"]
        episode = _episode(out, PHENO, error["stay_id"])
        assert not (abs(episode.index - error["hours"]) < 1e-6).any() or pd.isna(
            _value(episode, error["hours"], "Glucose"))
        outside = planted["labs_outside_the_stay"]
        episode = _episode(out, PHENO, outside["stay_id"])
        assert episode.index.min() >= 0 and -1.5 not in episode.index
    duplicate = planted["duplicate_values_same_time"]
    values = duplicate["values_in_file_order"]
    # medfuse-2022: the subject has text values (GCS), so '101' < '97' as text; corrected: 101.
    medfuse_value = _value(_episode(medfuse, PHENO, duplicate["stay_id"]), duplicate["hours"],
                           "Heart Rate")
    assert medfuse_value == max(values, key=lambda v: f"{v:g}")
    assert _value(_episode(corrected, PHENO, duplicate["stay_id"]), duplicate["hours"],
                  "Heart Rate") == max(values)


def test_labels_and_splits_per_profile(v1: dict) -> None:
    planted = v1["planted"]
    medfuse, corrected = (v1["out"][p] for p in PROFILES)
    zero = planted["icd_leading_zero"]
    stays = _stays(medfuse)
    stay_id = int(stays.index[stays["hadm_id"] == zero["hadm_id"]][0])
    for out in (medfuse, corrected):
        split = _split_of(out, PHENO, stay_id)
        listfile = pd.read_csv(out / "ehr" / PHENO / f"{split}_listfile.csv").set_index(
            "stay_id")
        assert listfile.loc[stay_id, zero["phenotype"]] == 1
    unlisted = set(planted["subjects_missing_from_split_lists"])
    for subject in unlisted & set(stays["subject_id"]):
        stay = int(stays.index[stays["subject_id"] == subject][0])
        assert _split_of(medfuse, PHENO, stay) == "train"
        assert _split_of(corrected, PHENO, stay) == hash_split(subject)
    summary = json.loads((corrected / "ehr" / "extract.json").read_text())
    assert summary["counts"]["cohort"]["subjects not in the split lists"]["subjects"] == len(
        unlisted & set(stays["subject_id"]))


def _chain(base: Path, version: str, profile: str) -> None:
    """The commands a user runs, through the CLI."""
    runner = CliRunner()
    raw, data = base / "raw", base / "data"

    def invoke(*args: str) -> str:
        result = runner.invoke(cli_main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    invoke("data", "demo", "--raw", "--out", str(raw), "--mimic-iv-version", version,
           "--no-progress")
    output = invoke("data", "extract", "--mimic-iv", str(raw / "mimic-iv"), "--out", str(data),
                    "--profile", profile, "--no-progress")
    assert "wrote" in output
    invoke("data", "prepare-cxr", "--raw", str(raw / "mimic-cxr-jpg"), "--out",
           str(data / "cxr"), "--ehr-root", str(data / "ehr"))
    report = json.loads(invoke("data", "check", "--data-root", str(data), "--json"))
    assert report["ok"], [c for c in report["checks"] if c["status"] == "error"]
    invoke("run", "--data-root", str(data), "--task", PHENO, "--method", "uni-ehr",
           "--epochs", "1", "--image-size", "16")
    assert list((base).rglob("result*.json")) or list(Path.cwd().rglob("result*.json"))


@pytest.mark.slow
@pytest.mark.parametrize(("version", "profile"), [("1.0", "medfuse-2022"), ("2.2", "corrected"),
                                                  ("3.1", "medfuse-2022")])
def test_raw_download_to_a_result(tmp_path: Path, version: str, profile: str) -> None:
    _chain(tmp_path, version, profile)


def test_v2_mortality_from_the_hospital_in_corrected(tmp_path: Path) -> None:
    base = _extract(tmp_path, "3.1")
    planted = base["planted"]
    for key in ("death_on_discharge_day_without_deathtime", "mortality_on_v2_dod_after_discharge"):
        stay = planted[key]["stay_id"]
        # hospital_expire_flag 0 and no deathtime: not an in-hospital death when corrected.
        assert _stays(base["out"]["corrected"]).loc[stay, "mortality"] == 0
    assert _stays(base["out"]["medfuse-2022"]).loc[
        planted["death_on_discharge_day_without_deathtime"]["stay_id"], "mortality"] == 1
    summary = json.loads((base["out"]["corrected"] / "ehr" / "extract.json").read_text())
    assert summary["mimic_iv_version"] == "3.1"
