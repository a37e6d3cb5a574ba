"""``prepare()``: validate the raw files, build or reuse the cache, and serve cohorts as batches.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from fusebench.data.demo import generate_demo
    >>> from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY
    >>> root = generate_demo(Path(tempfile.mkdtemp()) / "demo", "tiny", seed=0, progress=False)
    >>> config = DataConfig(root / "ehr", root / "cxr", cache_dir=root / "cache", image_size=32)
    >>> data = prepare(config, IN_HOSPITAL_MORTALITY, progress=False)
    >>> view = data.cohort("train", "partial")
    >>> batch = next(view.batches(8, shuffle=True, seed=0, augment=True))
    >>> batch["ehr"].shape[0], tuple(batch["cxr"].shape[1:])
    (8, (3, 32, 32))
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from fusebench.data.cache import (
    CACHE_VERSION,
    content_digest,
    content_signature,
    ensure_entry,
    fingerprint,
)
from fusebench.data.discretizer import load_value_ranges
from fusebench.data.ehr_build import build_ehr_arrays, stay_end_hours
from fusebench.data.images import augment_batch, decode_images, to_model_input
from fusebench.data.layout import CHEXPERT_LABELS, CXR_FILES, SPLITS, DataConfig, require_file
from fusebench.data.pairing import pair_images, radiology_table, read_cxr_metadata
from fusebench.data.readers import check_unique_stays, read_all_stays, read_listfile
from fusebench.distributed import shard_indices, shard_seed
from fusebench.errors import FusebenchError
from fusebench.progress import make_progress
from fusebench.specs import TaskSpec

__all__ = ["CohortView", "PreparedData", "prepare"]


class CohortView:
    """Rows of one cohort (or the radiology images of a split), served as batches.

    Attributes:
        stay_ids: (N,) int64 (radiology: the image's row in the split; see ``dicom_ids``).
        labels: (N, C) float32.
        has_cxr: (N,) bool.
        dicom_ids: (N,) image ids (empty string where there is no image).
    """

    def __init__(self, data: PreparedData, rows: np.ndarray, *, radiology: bool = False) -> None:
        self._data, self._rows, self._radiology = data, rows, radiology
        source = data._radiology_arrays() if radiology else data._arrays
        self._images = source["images"]
        self._image_index = source["image_index"][rows]
        self.stay_ids = (np.arange(len(rows), dtype=np.int64) if radiology
                         else source["stay_ids"][rows])
        self.labels = source["labels"][rows]
        self.has_cxr = self._image_index >= 0
        # Rows without an image hold index -1: never used to index (the table may be empty).
        self.dicom_ids = np.full(len(rows), "", dtype=source["dicom_ids"].dtype
                                 if len(source["dicom_ids"]) else "<U1")
        self.dicom_ids[self.has_cxr] = source["dicom_ids"][self._image_index[self.has_cxr]]

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def ehr_hours(self) -> int:
        """Hourly EHR bins over all rows (0 for radiology images): the cost of an LSTM epoch."""
        if self._radiology:
            return 0
        offsets = self._data._arrays["offsets"]
        return int((offsets[self._rows + 1] - offsets[self._rows]).sum())

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, augment: bool = False,
                device: torch.device | str = "cpu", rank: int = 0,
                world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the contract in :mod:`fusebench.specs`, read from the cache only.

        Args:
            batch_size: rows per batch (the last one may be smaller).
            shuffle: random order from a ``torch.Generator`` seeded with ``seed``.
            seed: same seed -> same order and same augmentation.
            augment: apply the training transforms (flip + affine) to the images.
            device: where the tensors go (``ehr_lengths`` stays on the CPU).
            rank: with ``world_size`` > 1, serve only this rank's shard of the order
                (:func:`fusebench.distributed.shard_indices`), augmented from the rank's own
                seed (:func:`fusebench.distributed.shard_seed`).
            world_size: number of ranks sharing the rows.
        """
        generator = torch.Generator().manual_seed(int(seed))
        order = (torch.randperm(len(self), generator=generator).numpy() if shuffle
                 else np.arange(len(self)))
        if world_size > 1:
            order = shard_indices(order, rank, world_size)
            generator.manual_seed(shard_seed(int(seed), rank, world_size))
        for start in range(0, len(order), batch_size):
            picked = order[start:start + batch_size]
            batch = {"cxr": self._cxr(picked, augment, generator, device),
                     "has_cxr": torch.from_numpy(self.has_cxr[picked]).to(device),
                     "y": torch.from_numpy(self.labels[picked]).to(device)}
            if not self._radiology:
                ehr, lengths = self._ehr(picked)
                batch.update(ehr=ehr.to(device), ehr_lengths=lengths,
                             stay_id=torch.from_numpy(self.stay_ids[picked]))
            yield batch

    def _ehr(self, picked: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        offsets, features = self._data._arrays["offsets"], self._data._arrays["ehr"]
        stays = self._rows[picked]
        starts, ends = offsets[stays], offsets[stays + 1]
        lengths = ends - starts
        out = np.zeros((len(stays), int(lengths.max(initial=1)), features.shape[1]), np.float32)
        for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
            out[row, :end - start] = features[start:end]
        return torch.from_numpy(out), torch.from_numpy(lengths.astype(np.int64))

    def _cxr(self, picked: np.ndarray, augment: bool, generator: torch.Generator,
             device: torch.device | str) -> torch.Tensor:
        crop = self._data.config.image_size
        stored = self._images.shape[1]
        index = self._image_index[picked]
        present = index >= 0
        pixels = np.zeros((len(picked), stored, stored), np.uint8)
        if present.any():
            pixels[present] = self._images[index[present]]
        images = torch.from_numpy(pixels).to(device)
        if augment:
            images = augment_batch(images, generator)
        cxr = to_model_input(images, crop)
        mask = torch.from_numpy(present).to(device)[:, None, None, None]
        return torch.where(mask, cxr, torch.zeros((), device=cxr.device))


class PreparedData:
    """Handle on one task's preprocessed data (memory-mapped cache arrays).

    Attributes:
        fingerprint: sha256 of the inputs (file contents or name/size/mtime), config and task.
        task: the task.
        config: the data configuration.
        skips: counted skips ``{"file", "line", "reason", ...}`` of rows the original drops.
        cache_path: the cache entry folder.
        cache_state: ``"reused"``, ``"built"`` or ``"rebuilt (...)"``.
    """

    def __init__(self, config: DataConfig, task: TaskSpec, fingerprint_: str, folder: Path,
                 cache_state: str, progress: bool) -> None:
        self.config, self.task, self.fingerprint = config, task, fingerprint_
        self.cache_path, self.cache_state, self._progress = folder, cache_state, progress
        self._arrays = _load_task_entry(folder)
        self.skips: list[dict] = list(self._arrays["skips"])

    def cohort(self, split: str, cohort: str) -> CohortView:
        """Paired (stays with an image) or partial (every stay of the split) rows, file order.

        Raises:
            FusebenchError: an unknown split or cohort; no image of the CXR metadata pairs with
                any stay of the task (every paired cohort empty), naming the metadata file.
        """
        rows = self._cohort_rows(split, cohort)
        if not (self._arrays["image_index"] >= 0).any():
            metadata = self.config.cxr_root / CXR_FILES["metadata"]
            window = self.config.window_for(self.task.default_cxr_window)
            raise FusebenchError(
                f"{metadata}: no image pairs with any stay of {self.task.name} (a pair needs "
                f"ViewPosition AP, StudyDate/StudyTime inside the stay's {window} window and the "
                "stay's subject_id); check those columns")
        return CohortView(self, rows)

    def _cohort_rows(self, split: str, cohort: str) -> np.ndarray:
        if split not in SPLITS or cohort not in ("paired", "partial"):
            raise FusebenchError(f"unknown split/cohort {split}/{cohort}: use train|val|test and "
                                 "paired|partial")
        in_split = self._arrays["split"] == SPLITS.index(split)
        if cohort == "paired":
            in_split &= self._arrays["image_index"] >= 0
        return np.flatnonzero(in_split)

    def radiology(self, split: str) -> CohortView:
        """All labelled CXR images of ``split`` with the 14 CheXpert labels (built on first use)."""
        if split not in SPLITS:
            raise FusebenchError(f"unknown split {split}: use train, val or test")
        arrays = self._radiology_arrays()
        return CohortView(self, np.flatnonzero(arrays["split"] == SPLITS.index(split)),
                          radiology=True)

    @property
    def radiology_fingerprint(self) -> str:
        """sha256 of the radiology images' inputs (labels, splits, images, stored size): the
        same for every task prepared from one CXR root (builds the radiology cache if absent)."""
        return self._radiology_entry[1]

    @cached_property
    def _radiology_entry(self) -> tuple[Path, str]:
        return _ensure_radiology(self.config, self._progress)

    @cached_property
    def _radiology_loaded(self) -> dict:
        return _load_radiology(self._radiology_entry[0])

    def _radiology_arrays(self) -> dict:
        return self._radiology_loaded

    def info(self) -> dict:
        """JSON-able summary: per split and cohort, stays, positives/prevalences, paired fraction."""
        splits = {}
        for split in SPLITS:
            splits[split] = {}
            for cohort in ("paired", "partial"):
                view = CohortView(self, self._cohort_rows(split, cohort))
                counts = view.labels.sum(axis=0) if len(view) else np.zeros(self.task.num_classes)
                splits[split][cohort] = {
                    "stays": len(view),
                    "positives": {n: int(c) for n, c in zip(self.task.labels, counts, strict=True)},
                    "prevalence": {n: (float(c) / len(view) if len(view) else None)
                                   for n, c in zip(self.task.labels, counts, strict=True)},
                    "paired_fraction": float(view.has_cxr.mean()) if len(view) else None,
                }
        reasons: dict[str, int] = {}
        for skip in self.skips:
            reasons[skip["reason"]] = reasons.get(skip["reason"], 0) + int(skip.get("rows", 1))
        return {
            "task": self.task.name, "fingerprint": self.fingerprint,
            "is_demo": self.config.is_demo, "normalizer": self.config.normalizer,
            "cxr_window": self.config.window_for(self.task.default_cxr_window),
            "image_size": self.config.image_size,
            "cache": {"path": str(self.cache_path), "state": self.cache_state,
                      "bytes": sum(p.stat().st_size for p in self.cache_path.iterdir())},
            "splits": splits,
            "skips": {"total": sum(reasons.values()), "by_reason": reasons,
                      "first": self.skips[:20]},
        }


def _digest_memo(config: DataConfig) -> Path:
    """Where the digests of the raw files are remembered (see ``content_signature``)."""
    return config.resolved_cache_dir() / "file-digests.json"


def prepare(config: DataConfig, task: TaskSpec, *, progress: bool = True) -> PreparedData:
    """Validate the raw files, build (or reuse) the content-addressed cache, return a handle.

    Raises:
        FusebenchError: a missing file/column, a bad cell (named by file and line), an
            unwritable cache folder.
    """
    listfiles = [read_listfile(config.ehr_root, task.name, split, task.labels)
                 for split in SPLITS]
    check_unique_stays(listfiles)
    all_stays = read_all_stays(config.ehr_root)
    metadata = read_cxr_metadata(config.cxr_root)
    window = config.window_for(task.default_cxr_window)
    pairs = pair_images(metadata, all_stays, window)
    stay_ids = np.concatenate([lf.stay_ids for lf in listfiles])
    pairs = pairs.loc[pairs["stay_id"].isin(stay_ids)].reset_index(drop=True)
    image_paths = [config.cxr_root / "resized" / f"{d}.jpg" for d in pairs["dicom_id"]]
    episode_paths = [p for lf in listfiles for p in lf.episode_paths]
    for path in image_paths:
        require_file(path, "resized CXR image (run `fusebench data prepare-cxr`)")
    for lf in listfiles:
        for row, path in enumerate(lf.episode_paths):
            if not path.is_file():
                raise FusebenchError(f"{lf.path} line {row + 2}: episode file {path} is missing;"
                                     " re-run the EHR extraction or remove the row")
    key = fingerprint({
        "version": CACHE_VERSION, "task": [task.name, list(task.labels), task.period_hours],
        "config": [config.normalizer, window, config.stored_image_size],
        "value_ranges": load_value_ranges(),
        "csv": [content_digest(p) for p in [lf.path for lf in listfiles] + [
            config.ehr_root / "root" / "all_stays.csv", config.cxr_root / CXR_FILES["metadata"]]],
        # From the files' bytes, never their timestamps or paths: byte-identical data share it.
        "episodes": content_signature(episode_paths, _digest_memo(config)),
        "images": content_signature(image_paths, _digest_memo(config)),
    })
    folder = config.resolved_cache_dir() / f"{task.name}-{key[:20]}"
    state = ensure_entry(folder, lambda tmp: _build_task_entry(
        tmp, config, task, listfiles, pairs, image_paths, progress))
    return PreparedData(config, task, key, folder, state, progress)


def _build_task_entry(folder: Path, config: DataConfig, task: TaskSpec, listfiles, pairs,
                      image_paths: list[Path], progress: bool) -> None:
    episode_paths = [p for lf in listfiles for p in lf.episode_paths]
    origins = [f"{lf.path} line {row + 2}" for lf in listfiles for row in range(len(lf.stays))]
    end_hours = stay_end_hours(np.concatenate([lf.period_hours for lf in listfiles]),
                               task.period_hours)
    display = make_progress(transient=True) if progress else None
    with display or nullcontext():
        ehr_bar = display.add_task(f"{task.name}: time series", total=len(episode_paths),
                                   status="") if display else None
        offsets, skips = build_ehr_arrays(
            folder, episode_paths, origins, end_hours, len(listfiles[0].stays), config.normalizer,
            advance=(lambda n: display.update(ehr_bar, advance=n)) if display else None)
        size = config.stored_image_size
        images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(image_paths), size, size))
        cxr_bar = display.add_task(f"{task.name}: images", total=len(image_paths),
                                   status="") if display else None
        decode_images(image_paths, size, images,
                      (lambda n: display.update(cxr_bar, advance=n)) if display else None)
        images.flush()
        del images
    stay_ids = np.concatenate([lf.stay_ids for lf in listfiles])
    position = {int(s): i for i, s in enumerate(pairs["stay_id"].tolist())}
    np.savez(folder / "meta.npz", offsets=offsets, stay_ids=stay_ids,
             split=np.concatenate([np.full(len(lf.stays), i) for i, lf in enumerate(listfiles)]),
             labels=np.concatenate([lf.labels for lf in listfiles]).astype(np.float32),
             image_index=np.array([position.get(int(s), -1) for s in stay_ids], np.int64),
             dicom_ids=pairs["dicom_id"].to_numpy(str))
    (folder / "skips.json").write_text(json.dumps(skips))


def _load_task_entry(folder: Path) -> dict:
    meta = np.load(folder / "meta.npz")
    arrays = {name: meta[name] for name in meta.files}
    arrays["ehr"] = np.load(folder / "ehr.npy", mmap_mode="r")
    arrays["images"] = np.load(folder / "images.npy", mmap_mode="r")
    arrays["skips"] = json.loads((folder / "skips.json").read_text())
    return arrays


def _ensure_radiology(config: DataConfig, progress: bool) -> tuple[Path, str]:
    """The radiology cache folder (built when missing) and its inputs' fingerprint."""
    tables, skips = [], []
    for split in SPLITS:
        table, dropped = radiology_table(config.cxr_root, split)
        table["split"] = SPLITS.index(split)
        tables.append(table)
        skips += dropped
    dicoms = np.concatenate([t["dicom_id"].to_numpy(str) for t in tables])
    paths = [config.cxr_root / "resized" / f"{d}.jpg" for d in dicoms]
    for path in paths:
        require_file(path, "resized CXR image (run `fusebench data prepare-cxr`)")
    key = fingerprint({"version": CACHE_VERSION, "size": config.stored_image_size,
                       "csv": [content_digest(config.cxr_root / CXR_FILES[k])
                               for k in ("chexpert", "ehr_split")],
                       "images": content_signature(paths, _digest_memo(config))})
    folder = config.resolved_cache_dir() / f"radiology-{key[:20]}"

    def build(tmp: Path) -> None:
        size = config.stored_image_size
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(paths), size, size))
        display = make_progress(transient=True) if progress else None
        with display or nullcontext():
            bar = display.add_task("radiology images", total=len(paths), status="") \
                if display else None
            decode_images(paths, size, images,
                          (lambda n: display.update(bar, advance=n)) if display else None)
        images.flush()
        del images
        np.savez(tmp / "meta.npz", dicom_ids=dicoms,
                 split=np.concatenate([t["split"].to_numpy(np.int64) for t in tables]),
                 labels=np.concatenate([t[list(CHEXPERT_LABELS)].to_numpy(np.float32)
                                        for t in tables]))
        (tmp / "skips.json").write_text(json.dumps(skips))

    ensure_entry(folder, build)
    return folder, key


def _load_radiology(folder: Path) -> dict:
    meta = np.load(folder / "meta.npz")
    arrays = {name: meta[name] for name in meta.files}
    arrays["images"] = np.load(folder / "images.npy", mmap_mode="r")
    arrays["image_index"] = np.arange(len(arrays["dicom_ids"]), dtype=np.int64)
    arrays["stay_ids"] = arrays["image_index"]
    return arrays
