"""One benchmark run: pretraining stages, training, evaluation on both test cohorts, result files.

Layout of a run folder (``{out}/{dataset}/{task}/{method}/{train_cohort}/seed{seed}/``)::

    checkpoint.pt (+ .sha256.json)   state after the last finished epoch (for --resume)
    predictions-paired.csv           stay_id, prob:<label>..., true:<label>...
    predictions-partial.csv
    result-paired.json               validated result (fusebench.results schema)
    result-partial.json
    run.json                         the run's identity (everything that changes its outcome)
    failed.json                      only when the run failed: the error, for the leaderboard

A run is identified by its method (name, distribution, version), task, training cohort, seed,
data fingerprint, preset, every override and the resolved hyper-parameters, image size, ImageNet
weights, bootstrap resamples and harness version (:func:`run_identity`). A finished run is reused
only when its identity matches; otherwise it runs again, or with ``--resume`` is refused with the
settings that differ. One process at a time works in a run folder (a lock beside it).

Pretraining stages are cached under ``{out}/stages/{data fingerprint}/`` (a stage every task
shares: ``{out}/stages/images-{radiology fingerprint}/``).

Under torchrun (see :mod:`fusebench.distributed`) every rank runs the same code: the ranks train
pretraining stages and the model together, and rank 0 alone reads and writes the files above
(stage weights, checkpoints, predictions, results, ``failed.json``), handing what it read to the
other ranks; ``training.world_size`` in the result records how many ranks trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusebench import distributed
from fusebench.checkpoints import delete_checkpoint, load_checkpoint_if_exists, save_checkpoint
from fusebench.errors import FusebenchError
from fusebench.fileio import atomic_write_json, file_lock
from fusebench.metrics import score_predictions
from fusebench.predictions import BOOTSTRAP_SEED, write_predictions
from fusebench.presets import get_preset
from fusebench.progress import RunProgress
from fusebench.registry import Registry
from fusebench.results import (
    SCHEMA_VERSION,
    environment,
    harness_provenance,
    load_json_file,
    read_result,
    sha256_file,
    utc_now,
    write_result,
)
from fusebench.specs import COHORTS, MethodSpec, ModelConfig, PretrainingStage, TaskSpec
from fusebench.steps import (
    build_model,
    build_optimizers,
    default_optimizers,
    default_training_step,
    trainable_parameter_count,
    training_step,
)
from fusebench.train import HISTORY_FILES, fit, predict, save_history

__all__ = [
    "RunRequest",
    "dataset_name",
    "execute_run",
    "finished_results",
    "pretrain",
    "record_failure",
    "run_dir",
    "run_identity",
]

# Files of a run that describe its outcome: removed when a run with another identity starts there.
_OUTCOME_FILES = ("result-paired.json", "result-partial.json", "predictions-paired.csv",
                  "predictions-partial.csv", "failed.json", "run.json", *HISTORY_FILES)


@dataclass(frozen=True)
class RunRequest:
    """What to run.

    Attributes:
        task: task name.
        method: method name.
        train_cohort: ``paired`` / ``partial``; None: the method's default.
        seed: training seed.
        preset: ``paper`` or ``quick`` (see :mod:`fusebench.presets`).
        overrides: hyper-parameters from the command line (``epochs``, ``batch_size``, ``lr``).
        device: torch device string.
        cxr_weights: optional local ImageNet ResNet34 weights.
        n_resamples: bootstrap resamples for the test metrics.
        out: root folder of run folders.
    """

    task: str
    method: str
    train_cohort: str | None = None
    seed: int = 0
    preset: str = "paper"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    cxr_weights: Path | None = None
    n_resamples: int = 1000
    out: Path = Path("runs")


def dataset_name(data: Any) -> str:
    """``demo`` for the synthetic dataset, ``mimic`` otherwise."""
    return "demo" if data.config.is_demo else "mimic"


def train_cohort_of(request: RunRequest, method: MethodSpec) -> str:
    """The cohort ``request`` trains ``method`` on; an error if the method cannot train there."""
    cohort = request.train_cohort or method.default_train_cohort
    if cohort not in method.train_cohorts:
        raise FusebenchError(
            f"--train-cohort {cohort}: method {method.name!r} trains on "
            f"{' or '.join(method.train_cohorts)} only"
        )
    return cohort


def run_dir(request: RunRequest, method: MethodSpec, data: Any) -> Path:
    """The folder of one run."""
    cohort = train_cohort_of(request, method)
    return (Path(request.out) / dataset_name(data) / request.task / method.name / cohort
            / f"seed{request.seed}")


def finished_results(folder: Path, identity: Mapping[str, Any] | None = None
                     ) -> list[dict[str, Any]] | None:
    """The run's results if both test cohorts' files exist, validate and (when ``identity`` is
    given) were computed with that identity; else None."""
    paths = [folder / f"result-{cohort}.json" for cohort in COHORTS]
    if not all(path.exists() for path in paths):
        return None
    try:
        results = [read_result(path) for path in paths]
    except FusebenchError:
        return None
    if identity is not None and any(
            (r.get("identity") or {}).get("key") != identity["key"] for r in results):
        return None
    return results


@functools.cache
def _file_digest(path: str) -> str:
    return sha256_file(Path(path))


def run_identity(request: RunRequest, method: MethodSpec, task: TaskSpec, data: Any
                 ) -> dict[str, Any]:
    """Everything that changes a run's outcome, and its SHA-256 key.

    Returns:
        ``{"key": hex digest, "fields": {...}}``; two runs with the same key are the same run.
    """
    fields = {
        "method": method.name, "distribution": method.distribution, "version": method.version,
        "task": task.name, "train_cohort": train_cohort_of(request, method), "seed": request.seed,
        "data_fingerprint": data.fingerprint, "preset": request.preset,
        "overrides": _jsonable({k: v for k, v in request.overrides.items() if v is not None}),
        "hparams": _jsonable(_resolved_hparams(request, method)),
        "pretraining": list(method.pretraining),
        "image_size": int(data.config.image_size),
        "cxr_weights": (None if request.cxr_weights is None
                        else _file_digest(str(Path(request.cxr_weights).resolve()))),
        "n_resamples": request.n_resamples,
        "harness_version": harness_provenance()["version"],
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return {"key": key, "fields": fields}


def _identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The fields that differ, as ``name old -> new`` (overrides and hyper-parameters itemised)."""
    changes = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            changes += [f"{name}.{key} {before.get(key)} -> {after.get(key)}"
                        for key in sorted(set(before) | set(after))
                        if before.get(key) != after.get(key)]
        else:
            changes.append(f"{name} {str(before)[:16]} -> {str(after)[:16]}")
    return ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")


def _recorded_identity(folder: Path) -> dict[str, Any] | None:
    """The identity ``run.json`` records in ``folder`` (None: no run started there, or an
    unreadable file)."""
    try:
        record = load_json_file(folder / "run.json", max_bytes=2**20, what="run record")
    except FusebenchError:
        return None
    identity = record.get("identity") if isinstance(record, dict) else None
    return identity if isinstance(identity, dict) and "key" in identity else None


def _prepare_folder(folder: Path, identity: dict[str, Any], resume: bool,
                    refuse_other: bool) -> bool:
    """Make ``folder`` ready for a run with ``identity``; True when that run resumes there.

    Without ``resume``, and for a folder holding another run (another identity, or files from a
    harness that recorded none) unless ``refuse_other``, the folder's run files are removed.

    Raises:
        FusebenchError: ``resume`` and ``refuse_other`` and the folder holds another run.
    """
    recorded = _recorded_identity(folder)
    if recorded is not None and recorded["key"] == identity["key"]:
        if resume:
            return True
    elif resume and refuse_other and (recorded is not None or any(
            (folder / name).exists() for name in (
                "checkpoint.pt", "result-paired.json", "result-partial.json"))):
        what = (_identity_differences(recorded.get("fields", {}), identity["fields"])
                if recorded is not None else "it records no settings")
        raise FusebenchError(
            f"--resume: {folder} holds a run with other settings ({what}); rerun without "
            "--resume to replace it, or choose another --out"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name in _OUTCOME_FILES:
        (folder / name).unlink(missing_ok=True)
    delete_checkpoint(folder / "checkpoint.pt")
    atomic_write_json(folder / "run.json", {"created": utc_now(), "identity": identity})
    return False


def _resolved_hparams(request: RunRequest, method: MethodSpec) -> dict[str, Any]:
    hparams = get_preset(request.preset).apply(method.hparams_for(request.task))
    hparams.update({k: v for k, v in request.overrides.items() if v is not None})
    return hparams


class _StageContext:
    """The harness side of :class:`fusebench.hookspecs.StageContext`."""

    def __init__(self, task: TaskSpec, data: Any, request: RunRequest, stage: str,
                 model_config: ModelConfig, progress: RunProgress | None) -> None:
        self.task = task
        self.seed = request.seed
        self.device = torch.device(request.device)
        self.model_config = model_config
        self._data = data
        self._request = request
        self._stage = stage
        self._progress = progress

    def fit(self, model: nn.Module, *, cohort: str, hparams: Mapping[str, Any]) -> nn.Module:
        if cohort == "radiology":
            with distributed.main_first():  # rank 0 builds the radiology cache the others reuse
                train, val = self._data.radiology("train"), self._data.radiology("val")
        else:
            train, val = self._data.cohort("train", cohort), self._data.cohort("val", cohort)
        merged = get_preset(self._request.preset).apply(hparams)
        merged.update({k: v for k, v in self._request.overrides.items() if v is not None})
        model.to(self.device)
        outcome = fit(
            model, train, val, merged, optimizers=default_optimizers(model, merged),
            step=default_training_step, device=self.device, seed=self.seed,
            progress=self._progress, description=f"stage {self._stage}",
        )
        model.load_state_dict(outcome.best_state)
        return model


def _base_config(request: RunRequest, method: MethodSpec, task: TaskSpec, data: Any
                 ) -> ModelConfig:
    """The method's model configuration for ``request``, before pretrained weights are added."""
    return ModelConfig(task=task.name, num_classes=task.num_classes,
                       image_size=data.config.image_size, cxr_weights=request.cxr_weights,
                       hparams=_resolved_hparams(request, method))


def pretrain(registry: Registry, request: RunRequest, data: Any, *,
             stages: Sequence[str] | None = None,
             progress: RunProgress | None = None) -> dict[str, Any]:
    """The weights of the pretraining stages ``request.method`` lists, each computed once.

    A stage's weights are cached under ``{out}/stages/{data fingerprint}/`` (for a stage shared
    by all tasks, ``{out}/stages/images-{radiology fingerprint}/``) by stage, stage config and
    version, the preset's settings, overrides, seed, image size and ImageNet weights (not by
    method; see :func:`stage_weights_path`), so every method of a grid that lists the stage
    reuses the first computation.

    Args:
        registry: plugins.
        request: the run that needs the stages.
        data: the task's prepared data.
        stages: compute only these (default: every stage the method lists).
        progress: live display.

    Returns:
        State dicts by stage name.
    """
    method, task = registry.method(request.method), registry.task(request.task)
    base = _base_config(request, method, task, data)
    weights = {}
    for name in method.pretraining if stages is None else stages:
        stage = registry.stage(name)
        path = stage_weights_path(stage, request, data, base.image_size)
        cached = distributed.from_main(load_checkpoint_if_exists, path)
        if cached is not None:
            weights[name] = cached
            continue
        context = _StageContext(task, data, request, name, base, progress)
        torch.manual_seed(request.seed)
        state = dict(stage.run(context))
        distributed.from_main(save_checkpoint, path, state)
        weights[name] = state
    return weights


def stage_weights_path(stage: PretrainingStage, request: RunRequest, data: Any,
                       image_size: int) -> Path:
    """Where ``stage``'s weights for ``request`` are cached: keyed by everything they depend on."""
    # the preset's contents, not its name: a preset whose settings change must not reuse
    # weights trained with the old ones
    key = json.dumps({"stage": stage.name, "config": stage.config, "version": stage.version,
                      "preset": dataclasses.asdict(get_preset(request.preset)),
                      "overrides": dict(request.overrides), "seed": request.seed,
                      "image_size": image_size, "cxr_weights": str(request.cxr_weights)},
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(request.out) / "stages" / _stage_data_folder(stage, data) / f"{stage.name}-{digest}.pt"


def _stage_data_folder(stage: PretrainingStage, data: Any) -> str:
    """``<task data fingerprint>``, or ``images-<radiology fingerprint>`` for a stage every task
    shares."""
    if stage.per_task:
        return data.fingerprint[:16]
    return f"images-{data.radiology_fingerprint[:16]}"


def _check_outputs(probabilities: np.ndarray, method: MethodSpec, expected: int) -> None:
    if probabilities.ndim != 2 or probabilities.shape[1] != expected:
        raise FusebenchError(f"method {method.name!r} returned logits of shape "
                             f"{probabilities.shape}, expected (B, {expected})")
    if not np.isfinite(probabilities).all():
        raise FusebenchError(f"method {method.name!r} produced NaN or infinite outputs")


def execute_run(registry: Registry, request: RunRequest, data: Any, *, resume: bool = False,
                replace_other: bool = False,
                progress: RunProgress | None = None) -> list[dict[str, Any]]:
    """Train ``request.method`` on ``data`` and write predictions and results for both cohorts.

    Args:
        registry: plugins.
        request: what to run.
        data: the task's :class:`fusebench.data.PreparedData`.
        resume: continue from the last checkpoint; a finished run with the same identity is
            returned as it is. A folder holding a run with another identity is refused.
        replace_other: with ``resume``, start a folder holding another identity's run over
            instead of refusing (the grid: its settings decide).
        progress: live display.

    Returns:
        The result dicts, paired test cohort first (on every rank of a torchrun run).

    Raises:
        FusebenchError: another process works in the run folder; or ``resume`` met a run with
            other settings (and not ``replace_other``).
    """
    task, method = registry.task(request.task), registry.method(request.method)
    folder = run_dir(request, method, data)
    identity = run_identity(request, method, task, data)
    lock = (file_lock(folder, wait=False, holder="another fusebench run",
                      way_out="wait for it to finish, or choose another --out")
            if distributed.is_main() else contextlib.nullcontext())
    with lock:
        if resume and (done := distributed.from_main(finished_results, folder, identity)):
            return done
        resume = distributed.from_main(_prepare_folder, folder, identity, resume,
                                       not replace_other)
        return _train_and_record(registry, request, data, folder, identity, resume, progress)


def _train_and_record(registry: Registry, request: RunRequest, data: Any, folder: Path,
                      identity: dict[str, Any], resume: bool,
                      progress: RunProgress | None) -> list[dict[str, Any]]:
    task, method = registry.task(request.task), registry.method(request.method)
    cohort = train_cohort_of(request, method)
    base = _base_config(request, method, task, data)
    hparams = dict(base.hparams)
    pretrained = pretrain(registry, request, data, progress=progress)
    device = torch.device(request.device)
    torch.manual_seed(request.seed)
    model = build_model(method, ModelConfig(**{**base.__dict__, "pretrained": pretrained}))
    model = model.to(device)
    optimizers = build_optimizers(registry, method, model, hparams)

    def step(model: nn.Module, batch: Mapping[str, torch.Tensor], optimizers: list) -> torch.Tensor:
        return training_step(registry, method, model, batch, optimizers)

    outcome = fit(
        model, data.cohort("train", cohort), data.cohort("val", cohort), hparams,
        optimizers=optimizers, step=step, device=device, seed=request.seed,
        checkpoint=folder / "checkpoint.pt", resume=resume, progress=progress,
        description=f"{method.name} {task.name} ({cohort})",
    )
    model.load_state_dict(outcome.best_state)
    # NaN (a validation set with one class, a diverged loss) is null in JSON.
    save_history(_jsonable(outcome.history), folder, title=f"{method.name} {task.name} ({cohort})")
    trainable = trainable_parameter_count(model)

    def record(test_cohort: str, view: Any, probabilities: np.ndarray,
               labels: np.ndarray) -> dict[str, Any]:
        """Write the predictions and the result of one test cohort; return the result."""
        predictions = folder / f"predictions-{test_cohort}.csv"
        digest = write_predictions(predictions, view.stay_ids, probabilities, labels, task)
        scores = score_predictions(labels, probabilities, task.labels,
                                   n_resamples=request.n_resamples, seed=BOOTSTRAP_SEED,
                                   label_groups=task.label_groups or None)
        result = {
            "schema_version": SCHEMA_VERSION,
            "created": utc_now(),
            "harness": harness_provenance(),
            "dataset": {"name": dataset_name(data), "fingerprint": data.fingerprint,
                        "is_demo": bool(data.config.is_demo),
                        "normalizer": data.config.normalizer,
                        "image_size": int(data.config.image_size),
                        "skipped_rows": len(data.skips)},
            "task": task.name,
            "method": {"name": method.name, "distribution": method.distribution,
                       "version": method.version, "hparams": _jsonable(hparams),
                       "trainable_parameters": int(trainable),
                       "init": _jsonable(getattr(model, "init_info", {})),
                       "pretraining": list(method.pretraining)},
            "train_cohort": cohort,
            "test_cohort": {"name": test_cohort, "n": len(view),
                            "positives": {name: int(labels[:, i].sum())
                                          for i, name in enumerate(task.labels)}},
            "cxr_window": _cxr_window(data, task),
            "metrics": {"auroc": scores["auroc"], "auprc": scores["auprc"]},
            "ci": scores["ci"],
            "seeds": [request.seed],
            "preset": request.preset,
            "training": {"seconds": round(outcome.seconds, 3), "best_epoch": outcome.best_epoch,
                         "epochs_run": outcome.epochs_run,
                         "best_val_auroc": _finite_or_none(outcome.best_score),
                         "history": _jsonable(outcome.history),
                         "world_size": distributed.world_size()},
            "predictions": {"file": predictions.name, "sha256": digest},
            "environment": environment(request.device),
            "identity": identity,
            "status": "ok",
        }
        write_result(folder / f"result-{test_cohort}.json", result)
        return result

    results = []
    for test_cohort in COHORTS:
        view = data.cohort("test", test_cohort)
        probabilities, labels = predict(model, view, int(hparams.get("batch_size", 16)), device)
        _check_outputs(probabilities, method, task.num_classes)
        results.append(distributed.from_main(record, test_cohort, view, probabilities, labels))
    return results


def _cxr_window(data: Any, task: TaskSpec) -> str:
    window = data.config.cxr_window
    return task.default_cxr_window if window == "default" else window


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, numpy scalars as Python numbers, NaN as None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def record_failure(folder: Path, error: BaseException) -> None:
    """Write ``failed.json`` so the leaderboard can list the run as failed, with its reason.

    Rank 0 alone writes it in a torchrun run (a failure may strike the ranks unevenly, so this
    is no collective).
    """
    if not distributed.is_main():
        return
    atomic_write_json(folder / "failed.json", {
        "created": utc_now(), "error": f"{type(error).__name__}: {error}".splitlines()[0],
    })
