"""``fusebench data check``: validate a data root before any training.

Each check reads the files as training will (the same readers), but instead of stopping at the
first problem it records one result per check: ``ok``, ``warning`` (training runs, the numbers
may mislead) or ``error`` (training would fail or be wrong). Checks:

- listfiles: every listfile of both tasks parses, with the 25 real label names / ``y_true``;
- episode files: every listfile row has its episode CSV;
- episode contents: headers, numbers, categorical values in the discretizer config, Hours sorted;
- task window: IHM Hours within [0, 48], phenotyping Hours within [0, period_length];
- IHM stays: each is a phenotyping stay of the same split with period_length >= 48 h;
- splits: no subject in two splits (across both tasks);
- label prevalences: per task and split (a label without positives in a split is a warning);
- ICU stays: every listfile stay_id in ``root/all_stays.csv``;
- images: the CXR tables parse, every metadata image is in ``resized/`` and decodes.

Example:
    >>> import tempfile
    >>> from fusebench.data.demo import generate_demo
    >>> root = generate_demo(Path(tempfile.mkdtemp()) / "demo", "tiny", seed=0, progress=False)
    >>> report = check_data_root(root / "ehr", root / "cxr", progress=False)
    >>> report["ok"]
    True
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fusebench.data.discretizer import load_discretizer_config
from fusebench.data.labels import PHENOTYPE_LABELS
from fusebench.data.layout import CXR_FILES, SPLITS, listfile_path
from fusebench.data.pairing import read_cxr_metadata
from fusebench.data.readers import Listfile, read_all_stays, read_episodes, read_listfile
from fusebench.errors import FusebenchError
from fusebench.progress import make_progress

__all__ = ["Check", "check_data_root"]

IHM, PHENO = "in-hospital-mortality", "phenotyping"
TASK_LABELS: dict[str, tuple[str, ...]] = {IHM: ("y_true",), PHENO: PHENOTYPE_LABELS}
IHM_HOURS = 48.0
_EPS = 1e-6  # the original's tolerance on the task windows


@dataclass
class Check:
    """One check's outcome.

    Attributes:
        name: what was checked.
        status: ``ok``, ``warning`` or ``error``.
        detail: counts, or the first problem (file and line) and what to do.
        problems: how many rows/files failed.
    """

    name: str
    status: str = "ok"
    detail: str = ""
    problems: int = 0


def _fail(check: Check, status: str, detail: str, problems: int = 1) -> Check:
    check.status, check.detail, check.problems = status, detail, problems
    return check


def check_data_root(ehr_root: Path | None, cxr_root: Path | None, *,
                    progress: bool = True) -> dict:
    """Run every check that applies to the given roots.

    Args:
        ehr_root: the EHR root (listfiles, episodes, ``root/all_stays.csv``), or None.
        cxr_root: the CXR root (CSV tables, ``resized/``), or None.
        progress: show a progress bar while episodes and images are read.

    Returns:
        ``{"ok": no errors, "checks": [Check as dict, ...], "prevalence": {task: {split:
        {label: fraction}}}}``.
    """
    checks: list[Check] = []
    prevalence: dict = {}
    display = make_progress() if progress else None
    with display or nullcontext():
        def bar(description: str, total: int) -> Callable[[int], None]:
            if display is None:
                return lambda n: None
            task = display.add_task(description, total=total, status="")
            return lambda n: display.advance(task, n)

        if ehr_root is not None:
            checks += _check_ehr(Path(ehr_root), prevalence, bar)
        if cxr_root is not None:
            checks += _check_cxr(Path(cxr_root), bar)
    return {"ok": not any(c.status == "error" for c in checks),
            "checks": [asdict(c) for c in checks], "prevalence": prevalence}


# ----------------------------------------------------------------------------- EHR


def _check_ehr(ehr: Path, prevalence: dict,
               bar: Callable[[str, int], Callable[[int], None]]) -> list[Check]:
    listfiles: dict[tuple[str, str], Listfile] = {}
    parse = Check("listfiles parse (real label names)")
    missing_lists = []
    for task, labels in TASK_LABELS.items():
        for split in SPLITS:
            if not listfile_path(ehr, task, split).is_file():
                missing_lists.append(str(listfile_path(ehr, task, split)))
                continue
            try:
                listfiles[(task, split)] = read_listfile(ehr, task, split, labels)
            except FusebenchError as error:
                if parse.status == "ok":
                    _fail(parse, "error", str(error), 0)
                parse.problems += 1
    if missing_lists:
        _fail(parse, "error", f"{missing_lists[0]}: listfile not found ({len(missing_lists)} "
              "missing); give the EHR root written by `fusebench data extract`",
              len(missing_lists))
    elif parse.status == "ok":
        parse.detail = "; ".join(f"{task}: " + ", ".join(
            f"{split} {len(listfiles[(task, split)].stays)}" for split in SPLITS)
            for task in TASK_LABELS)
    checks = [parse]
    if not listfiles:
        return checks
    checks.append(_check_files_exist(listfiles))
    checks += _check_episodes(listfiles, bar)
    checks.append(_check_ihm_within_phenotyping(listfiles))
    checks.append(_check_splits(listfiles))
    checks.append(_check_prevalence(listfiles, prevalence))
    checks.append(_check_all_stays(ehr, listfiles))
    return checks


def _check_files_exist(listfiles: dict[tuple[str, str], Listfile]) -> Check:
    check = Check("every listfile row has its episode file")
    total, missing = 0, []
    for listfile in listfiles.values():
        for row, path in enumerate(listfile.episode_paths):
            total += 1
            if not path.is_file():
                missing.append(f"{listfile.path} line {row + 2}: {path} is missing")
    if missing:
        return _fail(check, "error", f"{missing[0]} ({len(missing)} of {total} rows); re-run "
                     "the extraction or remove the rows", len(missing))
    check.detail = f"{total} rows, all present"
    return check


def _check_episodes(listfiles: dict[tuple[str, str], Listfile],
                    bar: Callable[[str, int], Callable[[int], None]]) -> list[Check]:
    contents = Check("episode files parse (numbers, categories, Hours sorted)")
    window = Check("Hours inside the task window")
    config = load_discretizer_config()
    rows, outside = 0, []
    for (task, split), listfile in listfiles.items():
        present = [i for i, p in enumerate(listfile.episode_paths) if p.is_file()]
        advance = bar(f"checking {task} {split} episodes", len(present))
        paths = [listfile.episode_paths[i] for i in present]
        origins = [f"{listfile.path} line {i + 2}" for i in present]
        try:
            episodes = read_episodes(paths, origins, config)
        except FusebenchError as error:
            if contents.status == "ok":
                _fail(contents, "error", str(error), 0)
            contents.problems += 1
            continue
        finally:
            advance(len(present))
        rows += len(episodes.hours)
        period = listfile.period_hours[present]
        end = np.full(len(present), IHM_HOURS) if task == IHM else period
        late = episodes.hours > end[episodes.stay] + _EPS
        early = episodes.hours < -_EPS
        for bad in np.flatnonzero(late | early)[:1]:
            stay = int(episodes.stay[bad])
            outside.append(f"{paths[stay]} line {int(episodes.line[bad])}: Hours "
                           f"{episodes.hours[bad]:g} outside [0, {end[stay]:g}] of {task}")
        if (late | early).any():
            window.problems += int((late | early).sum())
    if contents.status == "ok":
        contents.detail = f"{rows} rows"
    if outside:
        _fail(window, "error", f"{outside[0]} ({window.problems} rows); the extraction cut the "
              "episodes wrongly", window.problems)
    else:
        window.detail = "IHM within 48 h, phenotyping within the stay"
    return [contents, window]


def _check_ihm_within_phenotyping(listfiles: dict[tuple[str, str], Listfile]) -> Check:
    check = Check("every IHM stay is a phenotyping stay of >= 48 h")
    problems = []
    for split in SPLITS:
        ihm, pheno = listfiles.get((IHM, split)), listfiles.get((PHENO, split))
        if ihm is None or pheno is None:
            continue
        period = dict(zip(pheno.stay_ids.tolist(), pheno.period_hours.tolist(), strict=True))
        for row, stay_id in enumerate(ihm.stay_ids.tolist()):
            if stay_id not in period:
                problems.append(f"{ihm.path} line {row + 2}: stay_id {stay_id} is not in "
                                f"{pheno.path.name}")
            elif period[stay_id] < IHM_HOURS - _EPS:
                problems.append(f"{ihm.path} line {row + 2}: stay_id {stay_id} lasts "
                                f"{period[stay_id]:g} h in {pheno.path.name} (< 48 h)")
    if problems:
        return _fail(check, "error", f"{problems[0]} ({len(problems)} stays)", len(problems))
    check.detail = "all IHM stays are phenotyping stays of >= 48 h"
    return check


def _check_splits(listfiles: dict[tuple[str, str], Listfile]) -> Check:
    check = Check("no subject in two splits")
    split_of: dict[int, tuple[str, str]] = {}
    clashes = []
    for (task, split), listfile in listfiles.items():
        for row, subject in enumerate(listfile.subject_ids.tolist()):
            seen = split_of.setdefault(subject, (split, f"{task}/{listfile.path.name}"))
            if seen[0] != split:
                clashes.append(f"{listfile.path} line {row + 2}: subject {subject} is in "
                               f"{split} here and in {seen[0]} ({seen[1]})")
    if clashes:
        return _fail(check, "error", f"{clashes[0]} ({len(clashes)} rows); subject-level splits "
                     "keep a patient's stays together", len(clashes))
    check.detail = f"{len(split_of)} subjects, each in one split"
    return check


def _check_prevalence(listfiles: dict[tuple[str, str], Listfile], prevalence: dict) -> Check:
    check = Check("label prevalences")
    degenerate = []
    summary = []
    for (task, split), listfile in listfiles.items():
        labels = TASK_LABELS[task]
        means = listfile.labels.mean(axis=0) if len(listfile.stays) else np.full(len(labels),
                                                                                   np.nan)
        prevalence.setdefault(task, {})[split] = {
            name: (None if np.isnan(value) else round(float(value), 4))
            for name, value in zip(labels, means.tolist(), strict=True)}
        for name, value in zip(labels, means.tolist(), strict=True):
            if not 0 < value < 1:
                degenerate.append(f"{task} {split}: {name!r} has prevalence {value:g}")
        summary.append(f"{task} {split} {np.nanmean(means):.3f}" if len(labels) > 1
                       else f"{task} {split} {means[0]:.3f}")
    check.detail = "mean: " + ", ".join(summary)
    if degenerate:
        check.status, check.problems = "warning", len(degenerate)
        check.detail += (f"; {degenerate[0]} ({len(degenerate)} label/split pairs without "
                         "positives or negatives: their AUROC is undefined)")
    return check


def _check_all_stays(ehr: Path, listfiles: dict[tuple[str, str], Listfile]) -> Check:
    check = Check("listfile stays are ICU stays of root/all_stays.csv")
    try:
        known = set(read_all_stays(ehr).stay_id.tolist())
    except FusebenchError as error:
        return _fail(check, "error", str(error))
    unknown = [(listfile, row, stay_id) for listfile in listfiles.values()
               for row, stay_id in enumerate(listfile.stay_ids.tolist()) if stay_id not in known]
    if unknown:
        listfile, row, stay_id = unknown[0]
        return _fail(check, "error", f"{listfile.path} line {row + 2}: stay_id {stay_id} is not "
                     f"in root/all_stays.csv ({len(unknown)} rows); images cannot be paired",
                     len(unknown))
    check.detail = f"{len(known)} ICU stays"
    return check


# ----------------------------------------------------------------------------- CXR


def _check_cxr(cxr: Path, bar: Callable[[str, int], Callable[[int], None]]) -> list[Check]:
    tables = Check("CXR tables parse")
    images = Check("images present and decodable")
    try:
        metadata = read_cxr_metadata(cxr)
        for key in ("chexpert", "ehr_split"):
            path = cxr / CXR_FILES[key]
            if not path.is_file():
                raise FusebenchError(f"{path}: not found; run `fusebench data prepare-cxr`")
    except FusebenchError as error:
        return [_fail(tables, "error", str(error)), _fail(images, "error",
                                                          "not checked: no image table", 0)]
    tables.detail = f"{len(metadata)} images in the metadata"
    advance = bar("decoding CXR images", len(metadata))
    missing, broken = [], []
    for dicom in metadata["dicom_id"].tolist():
        path = cxr / "resized" / f"{dicom}.jpg"
        if not path.is_file():
            missing.append(path)
        elif not _decodes(path):
            broken.append(path)
        advance(1)
    if missing or broken:
        first = (f"{missing[0]} is missing" if missing else f"{broken[0]} does not decode")
        return [tables, _fail(images, "error", f"{first} ({len(missing)} missing, {len(broken)} "
                              "undecodable); run `fusebench data prepare-cxr` again (it redoes "
                              "only what is missing; delete broken files first)",
                              len(missing) + len(broken))]
    images.detail = f"{len(metadata)} images decode"
    return [tables, images]


def _decodes(path: Path) -> bool:
    """The JPEG decodes to its end (at reduced scale: a DCT-domain draft, fast)."""
    try:
        with Image.open(path) as image:
            image.draft("L", (64, 64))
            image.load()
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
