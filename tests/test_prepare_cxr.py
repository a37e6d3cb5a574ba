"""``fusebench data prepare-cxr``: raw MIMIC-CXR-JPG tree -> resized/ + mimic-cxr-ehr-split.csv."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from fusebench.cli.data import data_group
from fusebench.data.pairing import pair_images
from fusebench.data.prepare_cxr import prepare_cxr
from fusebench.data.readers import parse_study_datetime

# (subject, study, dicom, width, height): DICOM-like aspects, two images in one study.
IMAGES = [
    (10000032, 50414267, "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", 300, 360),
    (10000032, 50414267, "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", 300, 360),
    (10000764, 57375967, "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", 250, 305),
    (10000898, 50771383, "3b8f7c2d-0c3e1d66-4ae1c1c1-8b7e1f5a-2d4c6e8f", 280, 340),
]


def write_gz(path: Path, frame: pd.DataFrame) -> None:
    path.write_bytes(gzip.compress(frame.to_csv(index=False).encode()))


@pytest.fixture
def raw_tree(tmp_path: Path) -> Path:
    """A raw MIMIC-CXR-JPG 2.0.0 folder: files/pNN/pSUBJECT/sSTUDY/DICOM.jpg + the 3 csv.gz."""
    raw = tmp_path / "mimic-cxr-jpg"
    rng = np.random.default_rng(0)
    for subject, study, dicom, width, height in IMAGES:
        folder = raw / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        gradient = np.linspace(0, 255, width)[None, :] * np.ones((height, 1))
        pixels = np.clip(gradient + rng.normal(0, 30, (height, width)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{dicom}.jpg", quality=95)
    frame = pd.DataFrame(IMAGES, columns=["subject_id", "study_id", "dicom_id", "w", "h"])
    write_gz(raw / "mimic-cxr-2.0.0-split.csv.gz",
             frame[["dicom_id", "study_id", "subject_id"]].assign(split="train"))
    metadata = frame[["dicom_id", "subject_id", "study_id"]].assign(
        ViewPosition="AP", Rows=frame["h"] * 10, Columns=frame["w"] * 10, StudyDate=21800506,
        StudyTime=213015.0)
    write_gz(raw / "mimic-cxr-2.0.0-metadata.csv.gz", metadata)
    chexpert = frame[["subject_id", "study_id"]].drop_duplicates().assign(Atelectasis=1.0)
    write_gz(raw / "mimic-cxr-2.0.0-chexpert.csv.gz", chexpert)
    return raw


@pytest.fixture
def ehr_root(tmp_path: Path) -> Path:
    """Phenotyping listfiles with the real header: 10000764 in val, 10000898 in test."""
    from fusebench.data.labels import PHENOTYPE_LABELS

    ehr = tmp_path / "ehr"
    header = ",".join(["stay", "period_length", "stay_id", *PHENOTYPE_LABELS]) + "\n"
    zeros = ",".join(["0"] * len(PHENOTYPE_LABELS))
    for split, subject in (("train", 10000032), ("val", 10000764), ("test", 10000898)):
        folder = ehr / "phenotyping" / ("test" if split == "test" else "train")
        folder.mkdir(parents=True, exist_ok=True)
        stay = f"{subject}_episode1_timeseries.csv"
        (folder / stay).write_text("Hours\n")
        (ehr / "phenotyping" / f"{split}_listfile.csv").write_text(
            header + f"{stay},50.0,{subject + 20000000},{zeros}\n")
    return ehr


def test_prepare_cxr_resizes_like_resize_py_and_writes_the_ehr_split(raw_tree, ehr_root,
                                                                      tmp_path):
    out = tmp_path / "cxr"
    counts = prepare_cxr(raw_tree, out, ehr_root, progress=False)
    assert counts == {"images": 4, "resized": 4, "skipped": 0}
    for subject, study, dicom, width, height in IMAGES:
        source = raw_tree / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        with Image.open(source / f"{dicom}.jpg") as original:
            # resize.py: basewidth 512, hsize = int(h * 512 / w), img.resize((512, hsize)) with
            # Pillow's default filter, img.save(path): the same bytes.
            expected = original.resize((512, int(float(height) * (512 / float(width)))))
            buffer = io.BytesIO()
            expected.save(buffer, format="JPEG")
        written = (out / "resized" / f"{dicom}.jpg").read_bytes()
        assert written == buffer.getvalue()
        with Image.open(out / "resized" / f"{dicom}.jpg") as image:
            assert image.size == (512, int(height * 512 / width))
    split = pd.read_csv(out / "mimic-cxr-ehr-split.csv")
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    by_subject = split.groupby("subject_id")["split"].unique().map(list).to_dict()
    assert by_subject == {10000032: ["train"], 10000764: ["validate"], 10000898: ["test"]}
    for name in ("metadata", "chexpert", "split"):  # the CSVs beside resized/, uncompressed
        assert (out / f"mimic-cxr-2.0.0-{name}.csv").read_text().startswith(
            "dicom_id" if name != "chexpert" else "subject_id")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_prepare_cxr_resumes_and_redoes_only_missing_images(raw_tree, ehr_root, tmp_path):
    out = tmp_path / "cxr"
    prepare_cxr(raw_tree, out, ehr_root, progress=False)
    first = (out / "resized" / f"{IMAGES[0][2]}.jpg")
    before = first.stat().st_mtime_ns
    (out / "resized" / f"{IMAGES[2][2]}.jpg").unlink()
    (out / "mimic-cxr-ehr-split.csv").unlink()
    counts = prepare_cxr(raw_tree, out, ehr_root, progress=False)
    assert counts == {"images": 4, "resized": 1, "skipped": 3}
    assert first.stat().st_mtime_ns == before  # not rewritten
    assert (out / "resized" / f"{IMAGES[2][2]}.jpg").is_file()
    assert (out / "mimic-cxr-ehr-split.csv").is_file()


def test_prepare_cxr_command_reports_and_refuses_a_folder_without_files(raw_tree, ehr_root,
                                                                         tmp_path):
    runner = CliRunner()
    result = runner.invoke(data_group, ["prepare-cxr", "--raw", str(raw_tree), "--out",
                                        str(tmp_path / "cxr"), "--ehr-root", str(ehr_root)])
    assert result.exit_code == 0, result.output
    assert "4 images: 4 resized, 0 already done" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(data_group, ["prepare-cxr", "--raw", str(empty), "--out",
                                        str(tmp_path / "cxr2"), "--ehr-root", str(ehr_root)])
    assert result.exit_code != 0
    assert "files/" in str(result.exception) + result.output


def test_equal_study_times_keep_the_row_last_in_the_metadata_file():
    # Two AP images of one stay at the same StudyDate/StudyTime; the one later in the file has the
    # SMALLER dicom_id, so "largest dicom_id" and "last in the file" disagree.
    metadata = pd.DataFrame({
        "dicom_id": ["bbbb", "aaaa", "cccc"],
        "subject_id": [1, 1, 1],
        "study_id": [5, 5, 6],
        "ViewPosition": ["AP", "AP", "PA"],
        "StudyDate": ["21800506"] * 3,
        "StudyTime": ["213015.250", "213015.9", "223000"],
    })
    metadata["StudyDateTime"] = parse_study_datetime(metadata, Path("metadata.csv"))
    stays = pd.DataFrame({"subject_id": [1], "stay_id": [7],
                          "intime": [pd.Timestamp("2180-05-06 20:00")],
                          "outtime": [pd.Timestamp("2180-05-08 20:00")]})
    paired = pair_images(metadata, stays, "48h")
    assert paired["dicom_id"].tolist() == ["aaaa"]
    reversed_rows = metadata.iloc[[1, 0, 2]].reset_index(drop=True)
    assert pair_images(reversed_rows, stays, "48h")["dicom_id"].tolist() == ["bbbb"]
