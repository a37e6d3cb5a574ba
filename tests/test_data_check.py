"""``fusebench data check``: a sound data root passes; each kind of damage fails its own check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fusebench.cli.data import data_group
from fusebench.data.check import check_data_root

IHM, PHENO = "in-hospital-mortality", "phenotyping"


@pytest.fixture
def root(demo_tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny demo dataset, free to damage."""
    copy = tmp_path / "data"
    shutil.copytree(demo_tiny_root, copy)
    return copy


def statuses(report: dict) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


def failing(report: dict) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"] if c["status"] == "error"}


def test_the_demo_dataset_passes_every_check(demo_tiny_root):
    result = CliRunner().invoke(data_group, ["check", "--data-root", str(demo_tiny_root),
                                             "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and not failing(report)
    assert len(report["checks"]) == 10
    pheno = pd.read_csv(demo_tiny_root / "ehr" / PHENO / "train_listfile.csv")
    assert report["prevalence"][PHENO]["train"]["Shock"] == pytest.approx(
        pheno["Shock"].mean(), abs=1e-4)


def test_a_missing_episode_file_is_an_error_naming_the_listfile_line(root):
    listfile = pd.read_csv(root / "ehr" / PHENO / "test_listfile.csv")
    (root / "ehr" / PHENO / "test" / listfile["stay"].iloc[2]).unlink()
    report = check_data_root(root / "ehr", None, progress=False)
    errors = failing(report)
    assert "test_listfile.csv line 4" in errors["every listfile row has its episode file"]
    result = CliRunner().invoke(data_group, ["check", "--ehr-root", str(root / "ehr")])
    assert result.exit_code != 0 and "1 check(s) failed" in str(result.exception)


def test_an_unknown_category_and_a_row_past_48h_fail_their_checks(root):
    ihm = pd.read_csv(root / "ehr" / IHM / "train_listfile.csv")
    episode = root / "ehr" / IHM / "train" / ihm["stay"].iloc[0]
    lines = episode.read_text().splitlines()
    fields = lines[-1].split(",")
    fields[0] = "50.5"  # after the 48-hour window
    episode.write_text("\n".join([*lines, ",".join(fields)]) + "\n")
    other = root / "ehr" / PHENO / "test" / pd.read_csv(
        root / "ehr" / PHENO / "test_listfile.csv")["stay"].iloc[0]
    text = other.read_text().splitlines()
    header = text[0].split(",")
    row = text[1].split(",")
    row[header.index("Glascow coma scale eye opening")] = "Eyes wide shut"
    other.write_text("\n".join([text[0], ",".join(row), *text[2:]]) + "\n")
    errors = failing(check_data_root(root / "ehr", None, progress=False))
    assert "Hours 50.5 outside [0, 48]" in errors["Hours inside the task window"]
    assert "'Eyes wide shut'" in errors["episode files parse (numbers, categories, Hours sorted)"]


def test_a_subject_in_two_splits_and_a_short_ihm_stay_are_errors(root):
    pheno_test = root / "ehr" / PHENO / "test_listfile.csv"
    train = pd.read_csv(root / "ehr" / PHENO / "train_listfile.csv")
    test = pd.read_csv(pheno_test)
    moved = train.iloc[[0]].copy()
    shutil.copy(root / "ehr" / PHENO / "train" / moved["stay"].iloc[0],
                root / "ehr" / PHENO / "test" / moved["stay"].iloc[0])
    moved["stay_id"] = 99_999_999  # a new stay of a training subject
    pd.concat([test, moved]).to_csv(pheno_test, index=False)
    ihm = pd.read_csv(root / "ehr" / IHM / "test_listfile.csv")
    stay_id = int(ihm["stay_id"].iloc[0])
    test.loc[test["stay_id"] == stay_id, "period_length"] = 30.0
    pd.concat([test, moved]).to_csv(pheno_test, index=False)
    errors = failing(check_data_root(root / "ehr", None, progress=False))
    assert "is in test here and in train" in errors["no subject in two splits"]
    assert f"stay_id {stay_id} lasts 30 h" in errors["every IHM stay is a phenotyping stay of >= 48 h"]


def test_missing_and_truncated_images_are_errors(root):
    metadata = pd.read_csv(root / "cxr" / "mimic-cxr-2.0.0-metadata.csv")
    first, second = (root / "cxr" / "resized" / f"{d}.jpg" for d in metadata["dicom_id"][:2])
    first.unlink()
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 3])
    report = check_data_root(None, root / "cxr", progress=False)
    detail = failing(report)["images present and decodable"]
    assert "1 missing, 1 undecodable" in detail and first.name in detail
    assert statuses(report)["CXR tables parse"] == "ok"


def test_without_the_ehr_split_the_cxr_tables_fail(root):
    (root / "cxr" / "mimic-cxr-ehr-split.csv").unlink()
    detail = failing(check_data_root(None, root / "cxr", progress=False))["CXR tables parse"]
    assert "prepare-cxr" in detail
