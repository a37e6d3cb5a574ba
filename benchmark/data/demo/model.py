"""The demo's patient model: stays, latent factors, mortality and the 25 phenotypes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.data.labels import PHENOTYPE_LABELS
from fusebench.fileio import atomic_write_bytes

IHM = "in-hospital-mortality"
PHENO = "phenotyping"

CHANNELS: tuple[str, ...] = (
    "Capillary refill rate",
    "Diastolic blood pressure",
    "Fraction inspired oxygen",
    "Glascow coma scale eye opening",
    "Glascow coma scale motor response",
    "Glascow coma scale total",
    "Glascow coma scale verbal response",
    "Glucose",
    "Heart Rate",
    "Height",
    "Mean blood pressure",
    "Oxygen saturation",
    "Respiratory rate",
    "Systolic blood pressure",
    "Temperature",
    "Weight",
    "pH",
)
CHANNEL_INDEX = {name: i for i, name in enumerate(CHANNELS)}

# GCS strings by score, (MIMIC-IV style, CareVue style); all in discretizer_config possible_values.
GCS_EYE = {
    4: ("Spontaneously", "4 Spontaneously"),
    3: ("To Speech", "3 To speech"),
    2: ("To Pain", "2 To pain"),
    1: ("None", "1 No Response"),
}
GCS_MOTOR = {
    6: ("Obeys Commands", "6 Obeys Commands"),
    5: ("Localizes Pain", "5 Localizes Pain"),
    4: ("Flex-withdraws", "4 Flex-withdraws"),
    3: ("Abnormal Flexion", "3 Abnorm flexion"),
    2: ("Abnormal extension", "2 Abnorm extensn"),
    1: ("No response", "1 No Response"),
}
GCS_VERBAL = {
    5: ("Oriented", "5 Oriented"),
    4: ("Confused", "4 Confused"),
    3: ("Inappropriate Words", "3 Inapprop words"),
    2: ("Incomprehensible sounds", "2 Incomp sounds"),
    1: ("No Response", "1 No Response"),
    0: ("No Response-ETT", "1.0 ET/Trach"),
}  # 0: intubated

CHRONIC = ("age", "heart", "diabetes", "vascular", "renal", "copd", "arrhythmia")
ACUTE = (
    "hemodynamic",
    "deterioration",
    "infection",
    "lung",
    "fluid",
    "respiratory",
    "neuro",
    "bleeding",
)

# Phenotype: (target prevalence, {factor: weight}).
PHENOTYPE_MODEL: dict[str, tuple[float, dict[str, float]]] = {
    "Acute and unspecified renal failure": (0.25, {"renal": 1.0, "hemodynamic": 0.7, "fluid": 0.4}),
    "Acute cerebrovascular disease": (0.08, {"neuro": 1.8, "vascular": 0.4}),
    "Acute myocardial infarction": (0.08, {"heart": 0.9, "hemodynamic": 0.6, "age": 0.4}),
    "Cardiac dysrhythmias": (0.35, {"arrhythmia": 1.6, "age": 0.5, "heart": 0.4}),
    "Chronic kidney disease": (0.15, {"renal": 1.4, "age": 0.4, "vascular": 0.4}),
    "Chronic obstructive pulmonary disease and bronchiectasis": (0.12, {"copd": 1.8, "age": 0.3}),
    "Complications of surgical procedures or medical care": (
        0.20,
        {"bleeding": 0.8, "hemodynamic": 0.3},
    ),
    "Conduction disorders": (0.07, {"arrhythmia": 1.2, "heart": 0.8}),
    "Congestive heart failure; nonhypertensive": (0.25, {"fluid": 1.4, "heart": 1.2}),
    "Coronary atherosclerosis and other heart disease": (
        0.30,
        {"age": 1.0, "heart": 0.8, "vascular": 0.5},
    ),
    "Diabetes mellitus with complications": (0.10, {"diabetes": 1.8, "renal": 0.6}),
    "Diabetes mellitus without complication": (0.18, {"diabetes": 1.5, "renal": -0.4}),
    "Disorders of lipid metabolism": (0.35, {"age": 0.9, "vascular": 0.6, "diabetes": 0.4}),
    "Essential hypertension": (0.38, {"vascular": 1.4, "renal": -0.5}),
    "Fluid and electrolyte disorders": (
        0.35,
        {"renal": 0.6, "diabetes": 0.5, "hemodynamic": 0.5, "fluid": 0.3},
    ),
    "Gastrointestinal hemorrhage": (0.06, {"bleeding": 1.8}),
    "Hypertension with complications and secondary hypertension": (
        0.15,
        {"vascular": 0.9, "renal": 1.0},
    ),
    "Other liver diseases": (0.08, {"bleeding": 0.6, "infection": 0.4}),
    "Other lower respiratory disease": (0.12, {"lung": 0.7, "copd": 0.6}),
    "Other upper respiratory disease": (0.05, {"respiratory": 0.6}),
    "Pleurisy; pneumothorax; pulmonary collapse": (0.10, {"fluid": 0.9, "lung": 0.7}),
    "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)": (
        0.15,
        {"lung": 1.5, "infection": 0.7},
    ),
    "Respiratory failure; insufficiency; arrest (adult)": (0.22, {"respiratory": 1.6, "lung": 0.5}),
    "Septicemia (except in labor)": (0.17, {"infection": 1.4, "hemodynamic": 0.7}),
    "Shock": (0.10, {"hemodynamic": 1.5, "deterioration": 0.6, "infection": 0.3}),
}
assert tuple(PHENOTYPE_MODEL) == PHENOTYPE_LABELS
IHM_PREVALENCE = 0.125
VENTILATION_THRESHOLD = 0.8  # respiratory factor above which a stay is ventilated


@dataclass(frozen=True)
class DemoSize:
    """How big one demo size is.

    Attributes:
        n_stays: ICU stays (= phenotyping stays).
        image_width: width of the resized JPEGs (height follows the original aspect).
        extra_images: multiplier of the films outside the pairing windows (second films, films
            after 48 h, before admission, after discharge, subjects without a stay).
        chunk_stays: stays generated and written per chunk (bounds memory).
    """

    n_stays: int
    image_width: int
    extra_images: float
    chunk_stays: int = 2000


DEMO_SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(n_stays=150, image_width=64, extra_images=2.0),
    "small": DemoSize(n_stays=4000, image_width=256, extra_images=1.0),
    "full": DemoSize(n_stays=59_000, image_width=512, extra_images=0.3),
}


# ----------------------------------------------------------------------------- helpers


def part_rng(seed: int, part: str) -> np.random.Generator:
    """An independent generator per part, so changing one part never shifts another's draws."""
    key = [int(b) for b in part.encode()]
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def solve_intercept(logits: np.ndarray, prevalence: float) -> float:
    """Intercept b with mean(sigmoid(b + logits)) == prevalence (bisection; deterministic)."""
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if sigmoid(mid + logits).mean() < prevalence:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def grouped_arange(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for a vector of counts."""
    starts = np.cumsum(counts) - counts
    return np.arange(counts.sum()) - np.repeat(starts, counts)


def timestamps(values: np.ndarray) -> np.ndarray:
    """datetime64[s] -> "2180-07-23 15:00:00" strings."""
    return np.char.replace(np.datetime_as_string(values, unit="s"), "T", " ")


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary name, so it is never seen half-written."""
    atomic_write_bytes(path, text.encode())


def csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n")


# ----------------------------------------------------------------------------- stays


def draw_stays(size: DemoSize, seed: int) -> pd.DataFrame:
    """One row per ICU stay: identifiers, times, split, latent factors, labels."""
    rng = part_rng(seed, "stays")
    per_subject = rng.choice([1, 2, 3], p=[0.8, 0.15, 0.05], size=size.n_stays)
    n_subjects = int(np.searchsorted(np.cumsum(per_subject), size.n_stays) + 1)
    per_subject = per_subject[:n_subjects]
    per_subject[-1] -= per_subject.sum() - size.n_stays
    subject_ids = 10_000_000 + np.sort(rng.choice(9_000_000, n_subjects, replace=False))
    subject_of_stay = np.repeat(np.arange(n_subjects), per_subject)
    episode = grouped_arange(per_subject) + 1

    stays = pd.DataFrame({"subject_id": subject_ids[subject_of_stay], "episode": episode})
    stays["hadm_id"] = 20_000_000 + rng.choice(9_000_000, size.n_stays, replace=False)
    stays["stay_id"] = 30_000_000 + rng.choice(9_000_000, size.n_stays, replace=False)

    chronic = rng.standard_normal((n_subjects, len(CHRONIC)))[subject_of_stay]
    chronic += 0.3 * rng.standard_normal(chronic.shape)
    for j, name in enumerate(CHRONIC):
        stays[name] = chronic[:, j]
    acute = rng.standard_normal((size.n_stays, len(ACUTE)))
    for j, name in enumerate(ACUTE):
        stays[name] = acute[:, j]
    stays["hemodynamic"] = 0.4 * stays["infection"] + 0.92 * stays["hemodynamic"]
    stays["lung"] = 0.3 * stays["infection"] + 0.95 * stays["lung"]
    stays["fluid"] = 0.4 * stays["heart"] + 0.92 * stays["fluid"]
    stays["respiratory"] = 0.35 * stays["lung"] + 0.2 * stays["neuro"] + 0.9 * stays["respiratory"]
    stays["deterioration"] *= 0.8

    # Length of stay: log-normal, sicker stays longer; first admission date per subject, later
    # stays of the subject months apart.
    log_los = np.log(46.0) + 0.75 * rng.standard_normal(size.n_stays)
    log_los += 0.12 * (stays["hemodynamic"] + stays["respiratory"]).to_numpy()
    stays["los_minutes"] = np.clip(np.round(np.exp(log_los) * 60), 6 * 60, 300 * 60).astype(
        np.int64
    )
    first_day = rng.integers(0, 90 * 365, n_subjects)[subject_of_stay]
    gap_days = np.where(episode > 1, rng.integers(20, 400, size.n_stays), 0)
    elapsed = np.cumsum(gap_days)
    first_stay = np.cumsum(per_subject) - per_subject
    day = first_day + elapsed - np.repeat(elapsed[first_stay], per_subject)  # within the subject
    minute = rng.integers(0, 24 * 60, size.n_stays)
    base = np.datetime64("2110-01-01T00:00:00", "s")
    stays["intime"] = base + (day * 86400 + minute * 60).astype("timedelta64[s]")

    split_of_subject = rng.choice(
        np.array(["train", "val", "test"]), p=[0.72, 0.08, 0.20], size=n_subjects
    )
    stays["split"] = split_of_subject[subject_of_stay]
    _draw_labels(stays, rng)
    return stays


def _ehr_severity(stays: pd.DataFrame) -> np.ndarray:
    hemo = stays["hemodynamic"] + stays["deterioration"]
    part = 0.8 * hemo / hemo.std() + 0.6 * stays["neuro"]
    return (part / part.std()).to_numpy()


def _cxr_severity(stays: pd.DataFrame) -> np.ndarray:
    part = 0.8 * stays["lung"] + 0.6 * stays["fluid"]
    return (part / part.std()).to_numpy()


def _draw_labels(stays: pd.DataFrame, rng: np.random.Generator) -> None:
    """Mortality (EHR-visible + CXR-visible parts) and the 25 phenotypes, in place."""
    logits = 2.3 * _ehr_severity(stays) + 2.3 * _cxr_severity(stays) + 0.3 * stays["age"].to_numpy()
    ihm = stays["los_minutes"].to_numpy() >= 48 * 60
    intercept = solve_intercept(logits[ihm], IHM_PREVALENCE)
    stays["mortality"] = (rng.random(len(stays)) < sigmoid(intercept + logits)).astype(int)
    for name, (prevalence, weights) in PHENOTYPE_MODEL.items():
        logit = sum(w * stays[f].to_numpy() for f, w in weights.items())
        intercept = solve_intercept(logit, prevalence)
        stays[name] = (rng.random(len(stays)) < sigmoid(intercept + logit)).astype(int)


