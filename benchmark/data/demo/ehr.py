"""The demo's EHR files: episode time series from the latent state, listfiles, all_stays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.data.demo.model import (
    ACUTE,
    CHANNEL_INDEX,
    CHANNELS,
    CHRONIC,
    GCS_EYE,
    GCS_MOTOR,
    GCS_VERBAL,
    IHM,
    PHENO,
    VENTILATION_THRESHOLD,
    csv_text,
    grouped_arange,
    part_rng,
    timestamps,
    write_atomic,
)
from fusebench.data.labels import PHENOTYPE_LABELS


@dataclass
class _Events:
    """Charting events of one schedule: stay index (within the chunk), minute after intime."""

    stay: np.ndarray
    minute: np.ndarray


def _schedule(
    los: np.ndarray,
    period: int,
    jitter: int,
    rng: np.random.Generator,
    offset: np.ndarray | None = None,
    once: bool = False,
) -> _Events:
    """Regular charting every ``period`` minutes (random phase, +-jitter) inside each stay."""
    if offset is None:
        offset = rng.integers(0, period, len(los))
    counts = np.where(offset <= los, (los - offset) // period + 1, 0)
    if once:
        counts = np.minimum(counts, 1)
    stay = np.repeat(np.arange(len(los)), counts)
    minute = offset[stay] + grouped_arange(counts) * period
    if jitter:
        minute = minute + rng.integers(-jitter, jitter + 1, len(minute))
    return _Events(stay, np.clip(minute, 0, los[stay]))


def _gcs_strings(
    scores: np.ndarray, table: dict[int, tuple[str, str]], carevue: np.ndarray
) -> np.ndarray:
    lookup = {(s, c): table[s][c] for s in table for c in (0, 1)}
    return np.array(
        [lookup[(s, c)] for s, c in zip(scores.tolist(), carevue.tolist(), strict=True)],
        dtype=object,
    )


def chunk_timeseries(stays: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """All charted rows of a chunk of stays, sorted by (stay, time), with a ``_stay`` column."""
    los = stays["los_minutes"].to_numpy()
    n = len(stays)
    f = {name: stays[name].to_numpy() for name in (*CHRONIC, *ACUTE)}
    ventilated = f["respiratory"] > VENTILATION_THRESHOLD
    on_the_hour = (60 - (stays["intime"].dt.minute.to_numpy())) % 60
    carevue = (rng.random(n) < 0.2).astype(int)
    offset = rng.normal(0, 1, (n, 8))  # per-stay baselines of the vitals

    schedules = {
        "vitals": _schedule(los, 60, 0, rng, offset=on_the_hour),
        "temp": _schedule(los, 240, 20, rng),
        "gcs": _schedule(los, 240, 15, rng),
        "glucose": _schedule(los, 360, 45, rng),
        "abg": _schedule(los, 480, 60, rng),
        "fio2": _schedule(los, 120, 10, rng),
        "weight": _schedule(los, 1440, 0, rng, offset=rng.integers(10, 240, n)),
        "height": _schedule(los, 10_000, 0, rng, offset=rng.integers(5, 180, n), once=True),
    }
    keep = {
        "abg": (f["respiratory"] > 0.3) | (f["hemodynamic"] > 1.0) | (f["renal"] > 1.2),
        "fio2": ventilated,
        "height": rng.random(n) < 0.45,
    }
    for name, stay_mask in keep.items():
        ev = schedules[name]
        chosen = stay_mask[ev.stay]
        schedules[name] = _Events(ev.stay[chosen], ev.minute[chosen])

    keys = np.concatenate(
        [ev.stay.astype(np.int64) * 100_000 + ev.minute for ev in schedules.values()]
    )
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    values = np.full((len(unique_keys), len(CHANNELS)), np.nan)
    gcs = np.zeros((len(unique_keys), 3), dtype=np.int64)  # score per GCS component; -1 = none
    gcs[:] = -1
    start = 0
    for name, ev in schedules.items():
        rows = inverse[start : start + len(ev.stay)]
        start += len(ev.stay)
        _fill(name, ev, rows, values, gcs, f, offset, ventilated, rng)

    frame = pd.DataFrame(
        {
            "_stay": (unique_keys // 100_000).astype(np.int64),
            "Hours": (unique_keys % 100_000) / 60.0,
        }
    )
    for j, name in enumerate(CHANNELS):
        frame[name] = values[:, j]
    stay_of_row = frame["_stay"].to_numpy()
    for k, (name, table) in enumerate(
        (
            ("Glascow coma scale eye opening", GCS_EYE),
            ("Glascow coma scale motor response", GCS_MOTOR),
            ("Glascow coma scale verbal response", GCS_VERBAL),
        )
    ):
        column = np.full(len(frame), "", dtype=object)
        seen = gcs[:, k] >= 0
        column[seen] = _gcs_strings(gcs[seen, k], table, carevue[stay_of_row[seen]])
        frame[name] = column
    observed = ~np.isnan(values).all(axis=1) | (gcs >= 0).any(axis=1)
    return frame[observed].reset_index(drop=True)


def _fill(
    kind: str,
    ev: _Events,
    rows: np.ndarray,
    values: np.ndarray,
    gcs: np.ndarray,
    f: dict[str, np.ndarray],
    offset: np.ndarray,
    ventilated: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Values of one schedule's events from the latent state at their times (in place)."""
    s, m = ev.stay, len(ev.stay)
    hours = ev.minute / 60.0
    # Hemodynamic state worsens (or improves) linearly over the first 48 h.
    hemo = f["hemodynamic"][s] + f["deterioration"][s] * np.minimum(hours, 48.0) / 48.0
    noise = rng.standard_normal((m, 8))

    def put(
        channel: str,
        value: np.ndarray,
        decimals: int,
        low: float,
        high: float,
        observed: np.ndarray | None = None,
    ) -> None:
        value = np.round(np.clip(value, low, high), decimals)
        target = rows if observed is None else rows[observed]
        values[target, CHANNEL_INDEX[channel]] = value if observed is None else value[observed]

    if kind == "vitals":
        bp_seen = rng.random(m) < 0.92
        sbp = (
            118
            - 14 * hemo
            + 10 * f["vascular"][s]
            - 5 * f["bleeding"][s]
            + 6 * offset[s, 0]
            + 8 * noise[:, 0]
        )
        dbp = 59 - 8 * hemo + 5 * f["vascular"][s] + 4 * offset[s, 1] + 5 * noise[:, 1]
        put("Systolic blood pressure", sbp, 0, 50, 230, bp_seen)
        put("Diastolic blood pressure", dbp, 0, 20, 140, bp_seen)
        put("Mean blood pressure", (sbp + 2 * dbp) / 3 + 2 * noise[:, 2], 0, 30, 170, bp_seen)
        heart_rate = (
            86
            + 11 * hemo
            + 5 * f["infection"][s]
            + 8 * f["bleeding"][s]
            + 9 * f["arrhythmia"][s] * np.abs(noise[:, 3])
            + 5 * offset[s, 2]
            + 5 * noise[:, 4]
        )
        put("Heart Rate", heart_rate, 0, 30, 220, rng.random(m) < 0.97)
        resp = (
            19
            + 3 * f["respiratory"][s]
            + 1.5 * hemo
            + 1.5 * f["copd"][s]
            + 2 * offset[s, 3]
            + 3 * noise[:, 5]
        )
        put("Respiratory rate", resp, 0, 4, 50, rng.random(m) < 0.93)
        sat = (
            97
            - 1.2 * np.maximum(f["respiratory"][s], 0)
            - 0.5 * f["lung"][s]
            + offset[s, 4]
            + 1.2 * noise[:, 6]
        )
        put("Oxygen saturation", sat, 0, 70, 100, rng.random(m) < 0.93)
    elif kind == "temp":
        temp = 36.8 + 0.6 * f["infection"][s] + 0.2 * offset[s, 5] + 0.3 * noise[:, 0]
        put("Temperature", temp, 1, 33.0, 41.5)
    elif kind == "glucose":
        glucose = 128 + 35 * f["diabetes"][s] + 10 * hemo + 10 * offset[s, 6] + 20 * noise[:, 0]
        put("Glucose", glucose, 0, 40, 600)
    elif kind == "abg":
        ph = (
            7.40
            - 0.03 * f["respiratory"][s]
            - 0.04 * f["renal"][s]
            - 0.02 * f["copd"][s]
            - 0.025 * hemo
            + 0.03 * noise[:, 0]
        )
        put("pH", ph, 2, 6.8, 7.7)
    elif kind == "fio2":
        fio2 = (
            0.4
            + 0.12 * (f["respiratory"][s] - VENTILATION_THRESHOLD)
            + 0.1 * f["lung"][s]
            + 0.05 * noise[:, 0]
        )
        put("Fraction inspired oxygen", fio2, 2, 0.21, 1.0)
    elif kind == "weight":
        weight = (
            81
            + 12 * offset[s, 7]
            + 5 * f["diabetes"][s]
            + 0.8 * f["fluid"][s] * hours / 24
            + 0.5 * noise[:, 0]
        )
        put("Weight", weight, 1, 35, 250, (hours < 1) | (rng.random(m) < 0.6) | (ev.minute < 240))
    elif kind == "height":
        put("Height", 170 + 10 * noise[:, 0], 0, 140, 205)
    elif kind == "gcs":
        impairment = f["neuro"][s] + 0.3 * hemo + 0.5 * noise[:, 0]
        gcs[rows, 0] = 4 - np.digitize(impairment, [0.3, 1.0, 1.7])
        gcs[rows, 1] = 6 - np.digitize(impairment, [0.2, 0.7, 1.2, 1.7, 2.2])
        gcs[rows, 2] = np.where(
            ventilated[s], 0, 5 - np.digitize(impairment, [-0.2, 0.5, 1.1, 1.7])
        )


def write_episodes(
    stays: pd.DataFrame, ehr: Path, seed: int, chunk_stays: int, advance: Callable[[int], None]
) -> None:
    """Episode CSVs of every stay (phenotyping: whole stay; IHM: first 48 h), chunk by chunk."""
    header = ",".join(("Hours", *CHANNELS)) + "\n"
    for chunk_index, begin in enumerate(range(0, len(stays), chunk_stays)):
        chunk = stays.iloc[begin : begin + chunk_stays]
        rows = chunk_timeseries(chunk, part_rng(seed, f"ehr-{chunk_index}"))
        lines = (
            rows.drop(columns="_stay")
            .to_csv(index=False, header=False, lineterminator="\n")
            .splitlines(keepends=True)
        )
        stay_of_row = rows["_stay"].to_numpy()
        bounds = np.searchsorted(stay_of_row, np.arange(len(chunk) + 1))
        in_48h = rows["Hours"].to_numpy() <= 48.0
        for i, stay in enumerate(chunk.itertuples(index=False)):
            folder = "test" if stay.split == "test" else "train"
            name = f"{stay.subject_id}_episode{stay.episode}_timeseries.csv"
            first, last = bounds[i], bounds[i + 1]
            (ehr / PHENO / folder / name).write_text(header + "".join(lines[first:last]))
            if stay.los_minutes >= 48 * 60:
                ihm_last = first + int(in_48h[first:last].sum())
                (ehr / IHM / folder / name).write_text(header + "".join(lines[first:ihm_last]))
        advance(len(chunk))


def write_ehr_tables(stays: pd.DataFrame, ehr: Path, rng: np.random.Generator) -> None:
    """root/all_stays.csv and the train/val/test listfiles of both tasks."""
    intime = stays["intime"].to_numpy().astype("datetime64[s]")
    outtime = intime + (stays["los_minutes"].to_numpy() * 60).astype("timedelta64[s]")
    n = len(stays)
    admittime = intime - rng.integers(0, 48 * 3600, n).astype("timedelta64[s]")
    died = stays["mortality"].to_numpy() == 1
    in_unit = died & (rng.random(n) < 0.6)
    after = np.where(in_unit, 0, rng.integers(3600, 10 * 86400, n)).astype("timedelta64[s]")
    dischtime = outtime + after
    deathtime = np.where(died, timestamps(dischtime), "")
    age = np.clip(np.round(65 + 12 * stays["age"].to_numpy()), 18, 91).astype(int)
    units = np.array(
        [
            "Medical Intensive Care Unit (MICU)",
            "Surgical Intensive Care Unit (SICU)",
            "Cardiac Vascular Intensive Care Unit (CVICU)",
            "Coronary Care Unit (CCU)",
        ]
    )
    unit = units[rng.integers(0, len(units), n)]
    anchor_year = intime.astype("datetime64[Y]").astype(int) + 1970
    all_stays = pd.DataFrame(
        {
            "subject_id": stays["subject_id"],
            "hadm_id": stays["hadm_id"],
            "stay_id": stays["stay_id"],
            "first_careunit": unit,
            "last_careunit": unit,
            "intime": timestamps(intime),
            "outtime": timestamps(outtime),
            "los": stays["los_minutes"].to_numpy() / 1440.0,
            "admittime": timestamps(admittime),
            "dischtime": timestamps(dischtime),
            "deathtime": deathtime,
            "ethnicity": np.array(
                ["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO", "ASIAN", "OTHER", "UNKNOWN"]
            )[rng.integers(0, 6, n)],
            "gender": np.array(["F", "M"])[rng.integers(0, 2, n)],
            "anchor_age": age,
            "anchor_year": anchor_year,
            "dod": np.char.partition(deathtime.astype(str), " ")[:, 0],
            "age": age,
            "mortality_inunit": in_unit.astype(int),
            "mortality": died.astype(int),
            "mortality_inhospital": died.astype(int),
        }
    )
    (ehr / "root").mkdir(parents=True)
    write_atomic(
        ehr / "root" / "all_stays.csv", csv_text(all_stays.sort_values(["subject_id", "intime"]))
    )

    name = (
        stays["subject_id"].astype(str)
        + "_episode"
        + stays["episode"].astype(str)
        + "_timeseries.csv"
    )
    labels = stays[list(PHENOTYPE_LABELS)].to_numpy()
    ihm = stays["los_minutes"].to_numpy() >= 48 * 60
    for split in ("train", "val", "test"):
        order = np.argsort(name.to_numpy(), kind="stable")
        in_split = (stays["split"].to_numpy() == split)[order]
        idx = order[in_split]
        ihm_rows = [
            f"{name.iloc[i]},0,{stays['stay_id'].iloc[i]},{stays['mortality'].iloc[i]}\n"
            for i in idx
            if ihm[i]
        ]
        write_atomic(
            ehr / IHM / f"{split}_listfile.csv",
            "stay,period_length,stay_id,y_true\n" + "".join(ihm_rows),
        )
        pheno_rows = [
            f"{name.iloc[i]},{stays['los_minutes'].iloc[i] / 60:.6f},"
            f"{stays['stay_id'].iloc[i]},{','.join(map(str, labels[i]))}\n"
            for i in idx
        ]
        write_atomic(
            ehr / PHENO / f"{split}_listfile.csv",
            "stay,period_length,stay_id," + ",".join(PHENOTYPE_LABELS) + "\n" + "".join(pheno_rows),
        )


