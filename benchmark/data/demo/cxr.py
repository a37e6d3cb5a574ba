"""The demo's chest X-rays: films per stay, findings, CheXpert labels, drawing, CSV files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fusebench.data.demo.model import (
    VENTILATION_THRESHOLD,
    DemoSize,
    csv_text,
    part_rng,
    sigmoid,
    solve_intercept,
    write_atomic,
)
from fusebench.data.layout import CHEXPERT_LABELS, CXR_FILES

# Original DICOM sizes (Rows, Columns); the JPEGs keep their aspect at the size's width.
DICOM_SHAPES = np.array([(3056, 2544), (2992, 2500), (2800, 2400), (3050, 2539)])
_EARLY_FILM_RATE = 0.26  # IHM stays with a film in the first 48 h
_FILM_KINDS = ("early", "second", "late", "before", "after", "no-stay")


def _window_times(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return low + rng.random(len(low)) * np.maximum(high - low, 0.0)


def _at_least_one(mask: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """``mask``, or its first eligible entry set when it selects none (tiny shows every case)."""
    if not mask.any() and eligible.any():
        mask = mask.copy()
        mask[np.flatnonzero(eligible)[0]] = True
    return mask


def draw_films(stays: pd.DataFrame, size: DemoSize, seed: int) -> pd.DataFrame:
    """One row per frontal film: subject, stay (or -1), hours after intime, view, kind."""
    rng = part_rng(seed, "films")
    n = len(stays)
    los_h = stays["los_minutes"].to_numpy() / 60.0
    ihm = los_h >= 48
    x = size.extra_images
    sick = ((stays["respiratory"] + stays["lung"]) / np.sqrt(2)).to_numpy()
    p_early = np.where(
        ihm, sigmoid(solve_intercept(0.5 * sick[ihm], _EARLY_FILM_RATE) + 0.5 * sick), 0.08
    )
    early = rng.random(n) < p_early
    window_end = np.minimum(47.5, los_h - 0.5)
    selections = {
        "early": (early, 0.5, window_end, 0.94),
        "second": (
            _at_least_one(early & ihm & (rng.random(n) < 0.15 * x), early & ihm),
            0.5,
            window_end,
            0.8,
        ),
        "late": (
            _at_least_one((los_h > 50) & (rng.random(n) < 0.08 * x), los_h > 50),
            49.0,
            los_h - 0.5,
            0.85,
        ),
        "before": (_at_least_one(rng.random(n) < 0.035 * x, ihm), -30.0, -1.0, 0.5),
        "after": (_at_least_one(rng.random(n) < 0.035 * x, ihm), los_h + 1, los_h + 120, 0.3),
    }
    parts = []
    for kind, (mask, low, high, ap_rate) in selections.items():
        idx = np.flatnonzero(mask)
        low_i = np.broadcast_to(low, (n,))[idx]
        high_i = np.broadcast_to(high, (n,))[idx]
        ap = rng.random(len(idx)) < ap_rate
        if kind == "early" and len(idx):  # a PA film in the window never pairs: show one
            ap[0] = False
        parts.append(
            pd.DataFrame(
                {
                    "stay": idx,
                    "hours": _window_times(rng, low_i, high_i),
                    "view": np.where(ap, "AP", "PA"),
                    "kind": kind,
                }
            )
        )
    films = pd.concat(parts, ignore_index=True)
    films["subject_id"] = stays["subject_id"].to_numpy()[films["stay"]]
    return pd.concat([films, _no_stay_films(stays, x, rng)], ignore_index=True)


def _no_stay_films(stays: pd.DataFrame, extra: float, rng: np.random.Generator) -> pd.DataFrame:
    """Films of subjects who have no ICU stay (present in the CXR files only)."""
    n_subjects = max(1, round(0.02 * extra * stays["subject_id"].nunique()))
    taken = set(stays["subject_id"].tolist())
    candidates = 10_000_000 + rng.choice(9_000_000, n_subjects + len(taken), replace=False)
    subjects = np.array([s for s in candidates.tolist() if s not in taken][:n_subjects])
    per_subject = rng.integers(1, 3, n_subjects)
    return pd.DataFrame(
        {
            "stay": -1,
            "hours": rng.uniform(0, 200 * 24, per_subject.sum()),
            "view": np.where(rng.random(per_subject.sum()) < 0.3, "AP", "PA"),
            "kind": "no-stay",
            "subject_id": np.repeat(subjects, per_subject),
        }
    )


def film_findings(films: pd.DataFrame, stays: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Radiographic findings of each film from the latent state at its time."""
    rng = part_rng(seed, "findings")
    n = len(films)
    has_stay = films["stay"].to_numpy() >= 0
    factor_names = (
        "heart",
        "fluid",
        "lung",
        "infection",
        "respiratory",
        "hemodynamic",
        "copd",
        "arrhythmia",
    )
    factors = {}
    for name in factor_names:
        values = rng.standard_normal(n)  # subjects without a stay: a fresh draw
        values[has_stay] = stays[name].to_numpy()[films["stay"].to_numpy()[has_stay]]
        factors[name] = values
    kind = films["kind"].to_numpy()
    in_icu = np.isin(kind, ("early", "second", "late"))
    # Acute findings are milder before ICU admission and after discharge.
    phase = np.select([kind == "before", kind == "after", kind == "no-stay"], [0.7, 0.5, 0.6], 1.0)
    lung = phase * factors["lung"] + 0.15 * rng.standard_normal(n)
    fluid = phase * factors["fluid"] + 0.15 * rng.standard_normal(n)
    ventilated = in_icu & (factors["respiratory"] > VENTILATION_THRESHOLD)
    line = (in_icu | (kind == "after")) & (
        rng.random(n) < sigmoid(1.5 * factors["hemodynamic"] - 0.3)
    )
    return pd.DataFrame(
        {
            "ctr": np.clip(
                0.43 + 0.05 * factors["heart"] + 0.015 * fluid + 0.012 * rng.standard_normal(n),
                0.33,
                0.68,
            ),
            "mediastinum": np.clip(0.5 * factors["heart"] + 0.5 * rng.standard_normal(n), 0, 2),
            "effusion_left": np.clip(
                0.10 * (fluid + 0.3 * lung) - 0.08 + 0.03 * rng.standard_normal(n), 0, 0.35
            ),
            "effusion_right": np.clip(
                0.10 * (fluid + 0.3 * lung) - 0.08 + 0.03 * rng.standard_normal(n), 0, 0.35
            ),
            "opacity": np.log1p(np.exp(1.5 * (lung - 0.3))),
            "edema": np.clip(0.35 * (fluid + 0.5), 0, 1.2),
            "atelectasis": np.clip(
                0.4 * factors["respiratory"] + 0.4 * lung - 0.9 + 0.2 * rng.standard_normal(n), 0, 1
            ),
            "infection": factors["infection"],
            "ett": ventilated,
            "ng": ventilated & (rng.random(n) < 0.7),
            "line": line,
            "pacemaker": factors["arrhythmia"] > 1.6,
            "pneumothorax": rng.random(n) < np.where(ventilated, 0.05, 0.015),
            "lesion": rng.random(n) < 0.04,
            "fracture": rng.random(n) < 0.02,
            "pleural_other": rng.random(n) < 0.01,
            "hyperinflation": np.clip(0.08 * (factors["copd"] - 0.8), 0, 0.15),
        }
    )


def chexpert_labels(findings: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """The 14 CheXpert labels (1.0, -1.0, 0.0, NaN = empty) per film from its findings."""
    f = findings
    effusion = np.maximum(f["effusion_left"], f["effusion_right"])
    # (positive, uncertain) per label; negatives are explicit 0.0 at random, else empty.
    rules = {
        "Atelectasis": (f["atelectasis"] > 0.05, f["atelectasis"] > 0.01),
        "Cardiomegaly": (f["ctr"] > 0.50, f["ctr"] > 0.48),
        "Consolidation": (f["opacity"] > 1.2, f["opacity"] > 0.9),
        "Edema": (f["edema"] > 0.45, f["edema"] > 0.3),
        "Enlarged Cardiomediastinum": (f["mediastinum"] > 1.0, f["mediastinum"] > 0.8),
        "Fracture": (f["fracture"], f["fracture"]),
        "Lung Lesion": (f["lesion"], f["lesion"]),
        "Lung Opacity": (
            (f["opacity"] > 0.6) | (f["edema"] > 0.45) | (f["atelectasis"] > 0.05),
            f["opacity"] > 0.45,
        ),
        "No Finding": (None, None),
        "Pleural Effusion": (effusion > 0.04, effusion > 0.02),
        "Pleural Other": (f["pleural_other"], f["pleural_other"]),
        "Pneumonia": ((f["opacity"] > 0.8) & (f["infection"] > 0.5), f["opacity"] > 0.6),
        "Pneumothorax": (f["pneumothorax"], f["pneumothorax"]),
        "Support Devices": (
            f["ett"] | f["line"] | f["pacemaker"] | f["ng"],
            f["ett"] | f["line"] | f["pacemaker"],
        ),
    }
    n = len(f)
    labels = np.full((n, len(CHEXPERT_LABELS)), np.nan)
    for j, name in enumerate(CHEXPERT_LABELS):
        if name == "No Finding":
            continue
        positive, uncertain = (np.asarray(r, dtype=bool) for r in rules[name])
        labels[:, j] = np.where(
            positive, 1.0, np.where(uncertain, -1.0, np.where(rng.random(n) < 0.15, 0.0, np.nan))
        )
    pathology = [
        j for j, name in enumerate(CHEXPERT_LABELS) if name not in ("No Finding", "Support Devices")
    ]
    clear = ~(np.nan_to_num(labels[:, pathology], nan=0.0) != 0).any(axis=1)
    labels[:, CHEXPERT_LABELS.index("No Finding")] = np.where(clear, 1.0, np.nan)
    return labels


# ----------------------------------------------------------------------------- drawing


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, edge: float = 8.0
) -> np.ndarray:
    """Soft-edged filled ellipse in [0, 1]."""
    return np.clip((1.0 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2) * edge, 0.0, 1.0)


def _segment(
    x: np.ndarray, y: np.ndarray, points: list[tuple[float, float]], width: float
) -> np.ndarray:
    """Soft polyline of the given half-width in [0, 1] (tubes, lines, leads)."""
    out = np.zeros_like(x)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        distance = np.hypot(x - x0 - t * dx, y - y0 - t * dy)
        out = np.maximum(out, np.clip(1.0 - distance / width, 0.0, 1.0))
    return out


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur through cumulative sums (edges padded)."""
    if radius < 1:
        return image
    size = 2 * radius + 1
    for axis in (0, 1):
        padded = np.pad(
            image, [(radius + 1, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge"
        )
        summed = np.cumsum(padded, axis=axis)
        image = (
            np.take(summed, np.arange(size, summed.shape[axis]), axis=axis)
            - np.take(summed, np.arange(0, summed.shape[axis] - size), axis=axis)
        ) / size
    return image


def draw_film(
    f: pd.Series, view: str, width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """A chest-radiograph-like uint8 image (height, width) showing the findings ``f``."""
    scale = rng.uniform(0.93, 1.05)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    x = ((cols - width / 2) / (width / 2) - rng.normal(0, 0.03)) / scale
    y = (rows / width - rng.normal(0.05, 0.03)) / scale
    ap = view == "AP"

    image = 0.06 + 0.30 * _ellipse(x, y, 0.0, 0.72, 0.9, 0.78, edge=5)
    grow = 1.0 + f.hyperinflation
    lungs = np.zeros_like(x)
    for side in (-1.0, 1.0):
        lungs = np.maximum(lungs, _ellipse(x, y, side * 0.36, 0.62, 0.27 * grow, 0.37 * grow, 6))
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * 9.0 * (y - 0.25 * x * x))
    image -= lungs * (0.20 + 0.04 * grow - 0.04 * ribs)
    image += 0.18 * np.clip(1 - np.abs(x) / 0.07, 0, 1)  # spine
    mediastinum = 0.10 + 0.03 * f.mediastinum
    image += 0.22 * np.clip((mediastinum - np.abs(x)) * 30, 0, 1) * (y < 0.62) * (y > 0.2)
    heart_rx = 0.88 * f.ctr * (1.1 if ap else 1.0)
    image += 0.38 * _ellipse(x, y, 0.07, 0.84, heart_rx, 0.21, 5)
    diaphragm = 0.97 + 0.06 * np.abs(np.abs(x) - 0.36) / 0.36 + 0.05 * f.hyperinflation
    image += 0.22 * (y > diaphragm) * _ellipse(x, y, 0.0, 0.9, 0.86, 0.9, 4)
    image += _pathology(f, x, y, lungs, rng)
    image += _devices(f, x, y)

    corner = rng.integers(0, 2)  # a side marker in a top corner
    mark_x = 0.8 if corner else -0.8
    image += 0.5 * (np.abs(x - mark_x) < 0.04) * (np.abs(y - 0.08) < 0.04)
    contrast = rng.uniform(0.86, 0.9) if ap else rng.uniform(0.98, 1.02)
    image = image * contrast + (0.05 if ap else 0.0)
    image = _box_blur(image, max(1, width // 128))
    image += rng.normal(0, 0.02, image.shape)
    return np.clip(image * 255.0, 0, 255).astype(np.uint8)


def _pathology(
    f: pd.Series, x: np.ndarray, y: np.ndarray, lungs: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Brightness added by effusions, opacities, edema, atelectasis, nodules, pneumothorax."""
    out = np.zeros_like(x)
    for side, height in ((-1.0, f.effusion_right), (1.0, f.effusion_left)):
        if height > 0:
            # Costophrenic blunting: fluid fills the base with a meniscus rising laterally.
            level = 0.99 - 0.74 * height - 0.25 * height * np.clip((side * x - 0.36) / 0.27, 0, 1)
            out += 0.32 * lungs * (side * x > 0.05) * np.clip((y - level) * 40, 0, 1)
    if f.opacity > 0.05:
        patches = np.zeros_like(x)
        for _ in range(6):
            cx = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.5)
            cy, sigma = rng.uniform(0.4, 0.9), rng.uniform(0.05, 0.11)
            patches += rng.uniform(0.5, 1.0) * np.exp(
                -((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma)
            )
        out += 0.12 * f.opacity * lungs * np.clip(patches, 0, 1.5)
    if f.edema > 0:  # perihilar "bat wing" haze
        out += (
            0.3
            * f.edema
            * lungs
            * np.exp(-((np.abs(x) - 0.2) ** 2 / 0.04 + (y - 0.62) ** 2 / 0.05))
        )
    if f.atelectasis > 0:
        out += 0.25 * f.atelectasis * lungs * np.exp(-((y - 0.88) ** 2) / 0.002)
    if f.lesion:
        cx, cy = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.45), rng.uniform(0.4, 0.8)
        out += 0.3 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.0012)
    if f.pneumothorax:  # a dark apex without lung markings, edged by the pleural line
        side = rng.choice([-1.0, 1.0])
        apex = _ellipse(x, y, side * 0.45, 0.38, 0.14, 0.14, 10) * lungs
        out -= 0.1 * apex
        out += 0.15 * _segment(x, y, [(side * 0.31, 0.3), (side * 0.36, 0.5)], 0.01)
    if f.fracture:
        side = rng.choice([-1.0, 1.0])
        out += 0.3 * _segment(x, y, [(side * 0.62, 0.45), (side * 0.66, 0.5)], 0.012)
    if f.pleural_other:
        out += 0.15 * lungs * np.exp(-((np.abs(x) - 0.6) ** 2) / 0.002)
    return out


def _devices(f: pd.Series, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bright lines and boxes of support devices."""
    out = np.zeros_like(x)
    if f.ett:
        out += 0.6 * _segment(x, y, [(0.0, 0.0), (0.0, 0.42)], 0.012)
    if f.ng:
        out += 0.5 * _segment(x, y, [(0.03, 0.0), (0.04, 0.6), (0.15, 1.1)], 0.01)
    if f.line:
        out += 0.5 * _segment(x, y, [(-0.6, 0.26), (-0.15, 0.34), (-0.05, 0.55)], 0.01)
    if f.pacemaker:
        out += 0.7 * (np.abs(x - 0.55) < 0.07) * (np.abs(y - 0.3) < 0.05)
        out += 0.5 * _segment(x, y, [(0.55, 0.3), (0.2, 0.5), (0.05, 0.85)], 0.008)
    return np.minimum(out, 0.7)


# ----------------------------------------------------------------------------- CXR files


def studies(films: pd.DataFrame, stays: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Image rows (frontal films plus lateral companions of some PA studies) with identifiers."""
    rng = part_rng(seed, "studies")
    films = films.copy()
    films["study_id"] = 50_000_000 + rng.choice(9_000_000, len(films), replace=False)
    lateral = films[(films["view"] == "PA") & (rng.random(len(films)) < 0.4)].copy()
    lateral["view"] = "LATERAL"
    images = pd.concat(
        [
            films.assign(frontal=np.arange(len(films))),
            lateral.assign(frontal=lateral.index.to_numpy()),
        ],
        ignore_index=True,
    )
    words = rng.integers(0, 2**32, (len(images), 5), dtype=np.uint64)
    images["dicom_id"] = ["-".join(f"{w:08x}" for w in row) for row in words.tolist()]
    shape = DICOM_SHAPES[rng.integers(0, len(DICOM_SHAPES), len(films))][images["frontal"]]
    images["Rows"], images["Columns"] = shape[:, 0], shape[:, 1]

    base = np.datetime64("2110-01-01T00:00:00", "s")
    intime = np.full(len(images), base)
    has_stay = images["stay"].to_numpy() >= 0
    intime[has_stay] = stays["intime"].to_numpy().astype("datetime64[s]")[images["stay"][has_stay]]
    no_stay = ~has_stay
    intime[no_stay] = base + (rng.integers(0, 90 * 365, no_stay.sum()) * 86400).astype(
        "timedelta64[s]"
    )
    ms = rng.integers(0, 1000, len(films))[images["frontal"]]  # laterals share the study time
    taken = intime + np.round(images["hours"].to_numpy() * 3600).astype("timedelta64[s]")
    day = taken.astype("datetime64[D]")
    seconds = (taken - day).astype(np.int64)
    images["StudyDate"] = np.char.replace(np.datetime_as_string(day), "-", "").astype(np.int64)
    images["StudyTime"] = (
        seconds // 3600 * 10_000 + seconds % 3600 // 60 * 100 + seconds % 60 + ms / 1000.0
    )
    return images.sort_values(["subject_id", "study_id", "dicom_id"]).reset_index(drop=True)


def cxr_tables(
    images: pd.DataFrame, labels: np.ndarray, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three MIMIC-CXR-JPG 2.0.0 tables: metadata, CheXpert labels, official split."""
    rng = part_rng(seed, "cxr-split")
    ap, pa = images["view"] == "AP", images["view"] == "PA"
    metadata = pd.DataFrame(
        {
            "dicom_id": images["dicom_id"],
            "subject_id": images["subject_id"],
            "study_id": images["study_id"],
            "PerformedProcedureStepDescription": np.where(
                ap, "CHEST (PORTABLE AP)", "CHEST (PA AND LAT)"
            ),
            "ViewPosition": images["view"],
            "Rows": images["Rows"],
            "Columns": images["Columns"],
            "StudyDate": images["StudyDate"],
            "StudyTime": images["StudyTime"],
            "ProcedureCodeSequence_CodeMeaning": np.where(
                ap, "CHEST (PORTABLE AP)", "CHEST (PA AND LAT)"
            ),
            "ViewCodeSequence_CodeMeaning": np.select(
                [ap, pa], ["antero-posterior", "postero-anterior"], "lateral"
            ),
            "PatientOrientationCodeSequence_CodeMeaning": np.where(ap, "Recumbent", "Erect"),
        }
    )

    frontal = images[images["view"] != "LATERAL"]
    chexpert = pd.DataFrame(labels[frontal["frontal"].to_numpy()], columns=list(CHEXPERT_LABELS))
    chexpert.insert(0, "study_id", frontal["study_id"].to_numpy())
    chexpert.insert(0, "subject_id", frontal["subject_id"].to_numpy())

    # The official split is subject-level and unrelated to the EHR split (MIMIC-CXR's own).
    subjects = np.unique(images["subject_id"])
    official = dict(
        zip(
            subjects.tolist(),
            rng.choice(
                np.array(["train", "validate", "test"]), p=[0.95, 0.02, 0.03], size=len(subjects)
            ),
            strict=True,
        )
    )
    split = images[["dicom_id", "study_id", "subject_id"]].copy()
    split["split"] = split["subject_id"].map(official)
    return metadata, chexpert, split


def write_cxr_tables(
    images: pd.DataFrame, labels: np.ndarray, stays: pd.DataFrame, cxr: Path, seed: int
) -> None:
    """Metadata, CheXpert, official split and EHR-realigned split CSVs."""
    metadata, chexpert, split = cxr_tables(images, labels, seed)
    write_atomic(cxr / CXR_FILES["metadata"], csv_text(metadata))
    write_atomic(cxr / CXR_FILES["chexpert"], csv_text(chexpert))
    write_atomic(cxr / CXR_FILES["split"], csv_text(split))

    # MedFuse's realignment: train, then validate/test for subjects of the EHR val/test lists.
    ehr_split = stays.drop_duplicates("subject_id").set_index("subject_id")["split"]
    realigned = split["subject_id"].map(ehr_split).map({"val": "validate", "test": "test"})
    split["split"] = realigned.fillna("train")
    write_atomic(cxr / CXR_FILES["ehr_split"], csv_text(split))


def render_film(row: object, findings: pd.DataFrame, width: int, seed: int) -> Image.Image:
    """The picture of one image row at ``width`` (height from its DICOM aspect)."""
    height = int(width * row.Rows / row.Columns)
    draw_width = min(width, 256)  # draw at most 256 wide, then upsample: same look, 4x faster
    rng = part_rng(seed, f"film-{row.dicom_id}")
    pixels = draw_film(
        findings.iloc[row.frontal],
        row.view,
        draw_width,
        int(draw_width * row.Rows / row.Columns),
        rng,
    )
    picture = Image.fromarray(pixels, mode="L")
    if draw_width != width:
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    return picture


def write_images(
    images: pd.DataFrame,
    findings: pd.DataFrame,
    cxr: Path,
    size: DemoSize,
    seed: int,
    advance: Callable[[int], None],
) -> None:
    """resized/{dicom_id}.jpg at the size's width, aspect of the original DICOM kept."""
    folder = cxr / "resized"
    folder.mkdir(parents=True)
    for row in images.itertuples(index=False):
        picture = render_film(row, findings, size.image_width, seed)
        picture.save(folder / f"{row.dicom_id}.jpg", format="JPEG", quality=90)
        advance(1)


