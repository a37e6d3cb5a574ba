"""The synthetic demo dataset: determinism, the exact MIMIC layout and formats, real signal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fusebench.cli.data import demo_command
from fusebench.data import demo
from fusebench.data.demo import ensure_demo, generate_demo
from fusebench.data.demo import generate as demo_generate
from fusebench.data.readers import read_listfile
from fusebench.errors import FusebenchError
from fusebench.tasks.builtin import PHENOTYPES, PHENOTYPING

RESOURCES = Path(demo.__file__).parent.parent / "resources"
CONFIG = json.loads((RESOURCES / "discretizer_config.json").read_text())
CHANNEL_INFO = json.loads((RESOURCES / "channel_info.json").read_text())
IHM, PHENO = "in-hospital-mortality", "phenotyping"
REPO_ROOT = Path(__file__).resolve().parent.parent
CHEXPERT = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def listfile(root: Path, task: str, split: str) -> pd.DataFrame:
    return pd.read_csv(root / "ehr" / task / f"{split}_listfile.csv")


def study_times(metadata: pd.DataFrame) -> pd.Series:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS.sss float, leading zeros dropped)."""
    clock = metadata["StudyTime"].astype(float).astype(int).astype(str).str.zfill(6)
    return pd.to_datetime(metadata["StudyDate"].astype(str) + clock, format="%Y%m%d%H%M%S")


def images_with_stays(root: Path) -> pd.DataFrame:
    """Metadata inner-merged with all_stays on subject_id (MEDFUSE_REFERENCE 2.3 steps 1-2)."""
    metadata = pd.read_csv(root / "cxr" / "mimic-cxr-2.0.0-metadata.csv")
    stays = pd.read_csv(
        root / "ehr" / "root" / "all_stays.csv",
        usecols=["subject_id", "stay_id", "intime", "outtime"],
    )
    merged = metadata.merge(stays, on="subject_id")
    merged["when"] = study_times(merged)
    merged["intime"] = pd.to_datetime(merged["intime"])
    merged["outtime"] = pd.to_datetime(merged["outtime"])
    return merged


def paired(root: Path, split: str) -> pd.DataFrame:
    """The IHM paired cohort of a split: latest AP film within 48 h of intime (reference 2.3)."""
    merged = images_with_stays(root)
    in_window = (merged["when"] >= merged["intime"]) & (
        merged["when"] <= merged["intime"] + pd.Timedelta(hours=48)
    )
    chosen = merged[in_window & (merged["ViewPosition"] == "AP")]
    latest = chosen.sort_values("when").groupby("stay_id").tail(1)
    return listfile(root, IHM, split).merge(latest[["stay_id", "dicom_id"]], on="stay_id")


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_different(demo_tiny_root, tmp_path):
    again = generate_demo(tmp_path / "again", "tiny", seed=0, progress=False)
    other = generate_demo(tmp_path / "other", "tiny", seed=1, progress=False)
    assert tree_digest(again) == tree_digest(demo_tiny_root)
    assert tree_digest(other) != tree_digest(demo_tiny_root)
    assert (
        listfile(other, PHENO, "train")["stay"].tolist()
        != listfile(again, PHENO, "train")["stay"].tolist()
    )


# ----------------------------------------------------------------------------- EHR layout


def test_listfiles_have_mimic_columns_and_subject_level_splits(demo_tiny_root):
    root = demo_tiny_root
    ihm = {s: listfile(root, IHM, s) for s in ("train", "val", "test")}
    pheno = {s: listfile(root, PHENO, s) for s in ("train", "val", "test")}
    assert list(ihm["train"].columns) == ["stay", "period_length", "stay_id", "y_true"]
    assert list(pheno["train"].columns) == ["stay", "period_length", "stay_id", *PHENOTYPES]
    for split in ("train", "val", "test"):
        assert (ihm[split]["period_length"] == 0).all()
        assert set(ihm[split]["stay_id"]) <= set(pheno[split]["stay_id"])  # IHM within pheno
        assert pheno[split]["stay"].is_monotonic_increasing
        folder = "test" if split == "test" else "train"  # val rows point into train/
        for task, frame in ((IHM, ihm[split]), (PHENO, pheno[split])):
            assert all((root / "ehr" / task / folder / stay).is_file() for stay in frame["stay"])
    subjects = {s: set(pheno[s]["stay"].str.split("_").str[0]) for s in pheno}
    assert not subjects["train"] & subjects["val"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]

    all_pheno = pd.concat(pheno.values())
    all_ihm = pd.concat(ihm.values())
    stays = pd.read_csv(root / "ehr" / "root" / "all_stays.csv")
    assert {
        "subject_id",
        "hadm_id",
        "stay_id",
        "intime",
        "outtime",
        "los",
        "mortality_inhospital",
    } <= set(stays.columns)
    assert stays["intime"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    assert set(stays["stay_id"]) == set(all_pheno["stay_id"])
    by_stay = stays.set_index("stay_id")
    los_hours = by_stay.loc[all_pheno["stay_id"], "los"].to_numpy() * 24
    np.testing.assert_allclose(all_pheno["period_length"], los_hours, atol=0.01)
    assert set(all_ihm["stay_id"]) == set(stays.loc[stays["los"] * 24 >= 48, "stay_id"])
    np.testing.assert_array_equal(
        all_ihm["y_true"], by_stay.loc[all_ihm["stay_id"], "mortality_inhospital"]
    )
    assert 0 < all_ihm["y_true"].mean() < 0.3
    prevalences = all_pheno[list(PHENOTYPES)].mean()
    assert all_pheno[list(PHENOTYPES)].isin([0, 1]).all().all() and (prevalences > 0).all()


REFERENCE_LABELS = REPO_ROOT.parent / "shared" / "reference" / "phenotype_labels.json"
# The header line of a phenotyping listfile as mimic4extract writes it (create_phenotyping.py),
# written out here so the test does not depend on any file of this package.
REAL_PHENOTYPING_HEADER = (
    "stay,period_length,stay_id,Acute and unspecified renal failure,Acute cerebrovascular disease,"
    "Acute myocardial infarction,Cardiac dysrhythmias,Chronic kidney disease,Chronic obstructive "
    "pulmonary disease and bronchiectasis,Complications of surgical procedures or medical care,"
    "Conduction disorders,Congestive heart failure; nonhypertensive,Coronary atherosclerosis and "
    "other heart disease,Diabetes mellitus with complications,Diabetes mellitus without "
    "complication,Disorders of lipid metabolism,Essential hypertension,Fluid and electrolyte "
    "disorders,Gastrointestinal hemorrhage,Hypertension with complications and secondary "
    "hypertension,Other liver diseases,Other lower respiratory disease,Other upper respiratory "
    "disease,Pleurisy; pneumothorax; pulmonary collapse,Pneumonia (except that caused by "
    "tuberculosis or sexually transmitted disease),Respiratory failure; insufficiency; arrest "
    "(adult),Septicemia (except in labor),Shock"
)


def write_listfile(ehr: Path, header: str, rows: list[str]) -> None:
    (ehr / PHENO / "train").mkdir(parents=True, exist_ok=True)
    for row in rows:
        (ehr / PHENO / "train" / row.split(",")[0]).write_text("Hours\n")
    (ehr / PHENO / "train_listfile.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))


def test_a_listfile_with_the_real_header_line_loads(tmp_path):
    labels = [str(i % 2) for i in range(25)]
    write_listfile(tmp_path, REAL_PHENOTYPING_HEADER,
                   [f"10000032_episode1_timeseries.csv,50.5,30000001,{','.join(labels)}"])
    listfile = read_listfile(tmp_path, PHENO, "train", PHENOTYPING.labels)
    assert listfile.labels.tolist() == [[float(v) for v in labels]]
    assert listfile.subject_ids.tolist() == [10000032]


def test_the_labels_are_the_packaged_reference_names(demo_tiny_root):
    if REFERENCE_LABELS.is_file():  # the shared reference beside the repository, when present
        assert list(PHENOTYPES) == json.loads(REFERENCE_LABELS.read_text())["labels"]
    assert ",".join(["stay", "period_length", "stay_id", *PHENOTYPES]) == REAL_PHENOTYPING_HEADER
    header = (demo_tiny_root / "ehr" / PHENO / "train_listfile.csv").read_text().splitlines()[0]
    assert header == REAL_PHENOTYPING_HEADER  # the demo writes the real header


def test_a_misspelt_label_is_named_with_the_expected_spelling(tmp_path):
    short = REAL_PHENOTYPING_HEADER.replace(" or sexually transmitted disease", "")
    write_listfile(tmp_path, short, [f"1_episode1_timeseries.csv,5,2,{','.join(['0'] * 25)}"])
    with pytest.raises(FusebenchError, match=r"line 1: missing label column 'Pneumonia \(except "
                       r"that caused by tuberculosis or sexually transmitted disease\)'; the header "
                       r"has 'Pneumonia \(except that caused by tuberculosis\)' instead"):
        read_listfile(tmp_path, PHENO, "train", PHENOTYPING.labels)


def test_a_listfile_read_without_labels_gives_its_stays(demo_tiny_root):
    listfile = read_listfile(demo_tiny_root / "ehr", PHENO, "test", ())
    assert listfile.labels.shape == (len(listfile.stays), 0) and len(listfile.stays) > 0


def test_episode_csvs_have_mimic_formats(demo_tiny_root):
    root = demo_tiny_root
    channels = CONFIG["id_to_channel"]
    los = pd.read_csv(root / "ehr" / "root" / "all_stays.csv").set_index("stay_id")["los"] * 24
    observed = dict.fromkeys(channels, 0)
    for split in ("train", "val", "test"):
        folder = "test" if split == "test" else "train"
        for task in (PHENO, IHM):
            for row in listfile(root, task, split).itertuples():
                frame = pd.read_csv(root / "ehr" / task / folder / row.stay, dtype=str)
                assert list(frame.columns) == ["Hours", *channels]
                hours = frame["Hours"].astype(float)
                assert hours.is_monotonic_increasing and hours.min() >= 0
                assert hours.max() <= (48 if task == IHM else los[row.stay_id] + 1e-6)
                assert frame[channels].notna().any(axis=1).all()  # no empty rows
                for channel in channels:
                    values = frame[channel].dropna()
                    observed[channel] += len(values)
                    if CONFIG["is_categorical_channel"][channel]:
                        assert set(values) <= set(CONFIG["possible_values"][channel]), channel
                    else:
                        values.astype(float)  # every continuous cell parses
    assert observed["Capillary refill rate"] == observed["Glascow coma scale total"] == 0
    others = [c for c in channels if c not in ("Capillary refill rate", "Glascow coma scale total")]
    assert all(observed[c] > 0 for c in others), observed
    # Irregular charting: times are not on a fixed grid.
    sample = pd.read_csv(next((root / "ehr" / PHENO / "train").iterdir()))
    assert len(set(np.round(np.diff(sample["Hours"]), 3))) > 3


# ----------------------------------------------------------------------------- CXR layout


def test_cxr_tables_and_images_follow_mimic_cxr_jpg(demo_tiny_root):
    cxr = demo_tiny_root / "cxr"
    metadata = pd.read_csv(cxr / "mimic-cxr-2.0.0-metadata.csv")
    assert {
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
        "Rows",
        "Columns",
        "StudyDate",
        "StudyTime",
    } <= set(metadata.columns)
    assert {"AP", "PA"} <= set(metadata["ViewPosition"])
    assert metadata["StudyDate"].dtype.kind == "i"
    assert metadata["StudyDate"].astype(str).str.fullmatch(r"2\d{7}").all()
    assert metadata["StudyTime"].dtype.kind == "f"
    # StudyTime is HHMMSS.sss with its leading zeros dropped (MEDFUSE_REFERENCE.md 2.3 step 2):
    # studies before 10:00 have fewer than six integer digits, the case pairing zero-pads.
    assert (metadata["StudyTime"] < 100_000).any()
    assert (metadata["StudyTime"] < 240_000).all()
    study_times(metadata)  # HHMMSS parses after zero-padding
    assert metadata["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()

    chexpert = pd.read_csv(cxr / "mimic-cxr-2.0.0-chexpert.csv")
    assert list(chexpert.columns) == ["subject_id", "study_id", *CHEXPERT]
    values = pd.unique(chexpert[CHEXPERT].to_numpy().ravel())
    assert set(values[~np.isnan(values)]) == {1.0, 0.0, -1.0} and np.isnan(values).any()
    assert set(chexpert["study_id"]) == set(metadata["study_id"])

    split = pd.read_csv(cxr / "mimic-cxr-2.0.0-split.csv")
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(split["split"]) <= {"train", "validate", "test"}
    assert set(split["dicom_id"]) == set(metadata["dicom_id"])

    for name in metadata["dicom_id"]:
        with Image.open(cxr / "resized" / f"{name}.jpg") as image:
            assert image.format == "JPEG" and image.width == 64 and image.height > image.width


def test_ehr_split_realigns_images_to_the_ehr_subjects(demo_tiny_root):
    root = demo_tiny_root
    realigned = pd.read_csv(root / "cxr" / "mimic-cxr-ehr-split.csv")
    expected = pd.Series("train", index=realigned.index)
    for split, name in (("val", "validate"), ("test", "test")):
        subjects = listfile(root, PHENO, split)["stay"].str.split("_").str[0].astype(int)
        expected[realigned["subject_id"].isin(subjects)] = name
    assert (realigned["split"] == expected).all()
    assert set(realigned["split"]) == {"train", "validate", "test"}


def test_films_cover_every_pairing_case(demo_tiny_root):
    root = demo_tiny_root
    merged = images_with_stays(root)
    ihm_stays = set(pd.concat(listfile(root, IHM, s) for s in ("train", "val", "test"))["stay_id"])
    merged = merged[merged["stay_id"].isin(ihm_stays)]
    hours = (merged["when"] - merged["intime"]).dt.total_seconds() / 3600
    assert (hours < 0).any()  # before ICU admission
    assert ((hours > 48) & (merged["when"] <= merged["outtime"])).any()  # after 48 h
    assert (merged["when"] > merged["outtime"]).any()  # after discharge
    assert ((hours >= 0) & (hours <= 48) & (merged["ViewPosition"] == "PA")).any()
    in_window = merged[(hours >= 0) & (hours <= 48)]
    assert (in_window.groupby("stay_id").size() > 1).any()  # several films for a stay
    metadata = pd.read_csv(root / "cxr" / "mimic-cxr-2.0.0-metadata.csv")
    stays = pd.read_csv(root / "ehr" / "root" / "all_stays.csv")
    assert not set(metadata["subject_id"]) <= set(stays["subject_id"])  # films without a stay
    n_paired = sum(len(paired(root, s)) for s in ("train", "val", "test"))
    assert 0.1 < n_paired / len(ihm_stays) < 0.5


# ----------------------------------------------------------------------------- entry points


def test_generate_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("mine")
    with pytest.raises(FusebenchError, match="--out"):
        generate_demo(tmp_path / "taken", "tiny", progress=False)
    with pytest.raises(FusebenchError, match="--size"):
        generate_demo(tmp_path / "new", "huge", progress=False)
    assert (tmp_path / "taken" / "file.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial folder left


def test_ensure_demo_creates_once_under_fusebench_home(tmp_path, monkeypatch, demo_tiny_root):
    monkeypatch.setenv("FUSEBENCH_HOME", str(tmp_path))
    root = ensure_demo("tiny", 0, progress=False)
    assert root == tmp_path / "demo" / "tiny-seed0"
    assert tree_digest(root) == tree_digest(demo_tiny_root)
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["tiny-seed0"]  # no temp left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(demo_generate, "_generate_into", fail)
    assert ensure_demo("tiny", 0, progress=False) == root  # reused


def test_ensure_demo_replaces_an_older_generator_version(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEBENCH_HOME", str(tmp_path))
    stale = tmp_path / "demo" / "tiny-seed0"
    stale.mkdir(parents=True)
    (stale / demo.MANIFEST).write_text(json.dumps({"generator_version": 0}))
    root = ensure_demo("tiny", 0, progress=False)
    assert json.loads((root / demo.MANIFEST).read_text())["generator_version"] == (
        demo.GENERATOR_VERSION
    )
    assert (root / "ehr" / "root" / "all_stays.csv").is_file()


def test_demo_command_writes_the_tree(tmp_path):
    result = CliRunner().invoke(
        demo_command,
        ["--out", str(tmp_path / "d"), "--size", "tiny", "--seed", "3", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "not MIMIC" in result.output
    assert (tmp_path / "d" / "cxr" / "mimic-cxr-2.0.0-metadata.csv").is_file()


# ----------------------------------------------------------------------------- signal


def ehr_summaries(root: Path, frame: pd.DataFrame, split: str) -> np.ndarray:
    """Mean, min, max and last value of every channel over the first 48 h (GCS as scores)."""
    folder = "test" if split == "test" else "train"
    rows = []
    for stay in frame["stay"]:
        series = pd.read_csv(root / "ehr" / IHM / folder / stay)
        features = []
        for channel in CONFIG["id_to_channel"]:
            column = series[channel]
            scores = CHANNEL_INFO[channel].get("values")
            if scores:
                column = column.map(scores)
            column = pd.to_numeric(column, errors="coerce").dropna()
            features += (
                [column.mean(), column.min(), column.max(), column.iloc[-1]]
                if len(column)
                else [np.nan] * 4
            )
        rows.append(features)
    return np.array(rows, dtype=float)


def pixels(root: Path, frame: pd.DataFrame, side: int = 12) -> np.ndarray:
    return np.stack(
        [
            np.asarray(
                Image.open(root / "cxr" / "resized" / f"{name}.jpg")
                .convert("L")
                .resize((side, side), Image.Resampling.BILINEAR),
                dtype=float,
            ).ravel()
            / 255
            for name in frame["dicom_id"]
        ]
    )


@pytest.mark.slow  # generates the 4,000-stay demo with 256 px images
def test_mortality_signal_needs_both_modalities_on_small(tmp_path):
    # Expected figures from the generator's design (fusebench.data.demo docstring): 4,000 stays
    # (DEMO_SIZES["small"]) with median ICU stay about 46 h, so a little under half last the 48 h
    # of an IHM stay; about a quarter of IHM stays paired; AUROCs of about 0.65-0.85 per modality
    # and higher together on the paired test cohort.
    root = generate_demo(tmp_path / "small", "small", seed=0, progress=False)
    train = pd.concat([paired(root, "train"), paired(root, "val")], ignore_index=True)
    test = paired(root, "test")
    ihm_stays = sum(len(listfile(root, IHM, s)) for s in ("train", "val", "test"))
    assert 1800 <= ihm_stays <= 2000
    assert 0.2 < (len(train) + len(test)) / ihm_stays < 0.3  # about a quarter paired

    ehr_train, ehr_test = ehr_summaries(root, train, "train"), ehr_summaries(root, test, "test")
    seen = ~np.isnan(ehr_train).all(axis=0)
    fill = np.nanmedian(ehr_train[:, seen], axis=0)
    ehr_train, ehr_test = (
        np.where(np.isnan(x[:, seen]), fill, x[:, seen]) for x in (ehr_train, ehr_test)
    )
    image_train, image_test = pixels(root, train), pixels(root, test)

    def auroc(x_train: np.ndarray, x_test: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
        model.fit(x_train, train["y_true"])
        return roc_auc_score(test["y_true"], model.predict_proba(x_test)[:, 1])

    ehr_only = auroc(ehr_train, ehr_test)
    image_only = auroc(image_train, image_test)
    both = auroc(np.hstack([ehr_train, image_train]), np.hstack([ehr_test, image_test]))
    assert ehr_only > 0.6 and image_only > 0.6, (ehr_only, image_only)
    assert both > max(ehr_only, image_only), (ehr_only, image_only, both)
