"""The value types a plugin hands to the harness: methods, tasks and pretraining stages.

A plugin returns these from the hooks in :mod:`fusebench.hookspecs`. They are frozen dataclasses so
that a registered spec cannot be changed behind the harness's back.

The batch contract every model's ``forward`` receives (a ``dict[str, torch.Tensor]``):

==============  ===================  ===========================================================
key             shape / dtype        meaning
==============  ===================  ===========================================================
``ehr``         (B, T, 76) float32   discretized + normalized time series, zero-padded after
                                     each stay's length (T = longest stay in the batch)
``ehr_lengths`` (B,) int64, on CPU   number of valid hourly bins per stay (>= 1)
``cxr``         (B, 3, H, W) float32 ImageNet-normalized image; all zeros where ``has_cxr`` is
                                     False
``has_cxr``     (B,) bool            whether the stay has a paired chest X-ray
``y``           (B, C) float32       labels (0/1); present in training and evaluation batches
==============  ===================  ===========================================================

Radiology batches used by CXR pretraining carry only ``cxr``, ``has_cxr`` (all True) and ``y``
(14 labels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "COHORTS",
    "Cohort",
    "ExecutorOption",
    "ExecutorSpec",
    "MethodSpec",
    "ModelConfig",
    "PretrainingStage",
    "TaskSpec",
]

Cohort = Literal["paired", "partial"]
COHORTS: tuple[Cohort, ...] = ("paired", "partial")


@dataclass(frozen=True)
class ModelConfig:
    """Everything a method's builder needs to construct its model.

    Attributes:
        task: task name, e.g. ``"in-hospital-mortality"``.
        num_classes: number of output logits C.
        ehr_input_dim: features per hourly bin (76 for the MedFuse discretizer).
        ehr_hidden: LSTM hidden size of the EHR encoder (256 in the paper).
        ehr_layers: stacked single-layer LSTMs in the EHR encoder (2 in the paper).
        dropout: dropout on the EHR feature (0.3 in the paper).
        image_size: side of the square CXR input in pixels.
        cxr_weights: optional local file with ImageNet ResNet34 weights (never downloaded).
        pretrained: state dicts produced by the pretraining stages the method asked for, keyed by
            stage name; empty when the method declares none or pretraining was disabled.
        hparams: the method's resolved hyper-parameters for this task (after CLI overrides).
    """

    task: str
    num_classes: int
    ehr_input_dim: int = 76
    ehr_hidden: int = 256
    ehr_layers: int = 2
    dropout: float = 0.3
    image_size: int = 224
    cxr_weights: Path | None = None
    pretrained: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hparams: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A fusion method as registered by a plugin.

    Attributes:
        name: unique name used on the command line (lowercase, dashes), e.g. ``"medfuse"``.
        description: one line saying what the method does.
        reference: citation or URL of the method.
        handles_missing_cxr: True when the model uses stays without a chest X-ray itself; False
            when it needs the image (it still receives such stays at test time, with a zero image
            and ``has_cxr`` False, and must return logits for them).
        default_train_cohort: ``"paired"`` or ``"partial"``.
        hparams: default hyper-parameters per task name; keys understood by the harness:
            ``lr``, ``batch_size``, ``epochs``, ``betas``, ``weight_decay``, ``patience``
            (early stopping), ``lr_patience`` and ``lr_factor`` (ReduceLROnPlateau). Other keys
            are passed to the builder untouched.
        build: ``build(config: ModelConfig) -> torch.nn.Module``; the module's ``forward(batch)``
            returns logits of shape (B, C).
        train_cohorts: cohorts the method may be trained on (the leaderboard trains on each
            listed one; ``default_train_cohort`` must be among them).
        pretraining: names of pretraining stages whose weights the builder consumes through
            ``ModelConfig.pretrained``; stages are registered with
            ``fusebench_register_pretraining_stages``.
        configure_optimizers: optional ``configure_optimizers(model, hparams) ->
            list[torch.optim.Optimizer]``, called once per training run after the model is built
            and moved to its device. None: one Adam over every parameter with ``requires_grad``
            (``lr``, ``betas``, ``weight_decay`` from ``hparams``). Each optimizer gets its own
            ReduceLROnPlateau scheduler on the validation loss.
        training_step: optional ``training_step(model, batch, optimizers) -> torch.Tensor``:
            one optimisation step on one training batch (model in train mode, batch on the
            device); steps the optimizers itself and returns the scalar loss to report. None:
            zero_grad, BCE-with-logits of ``model(batch)`` against ``batch["y"]``, backward,
            step of every optimizer. Under torchrun it receives the plain module and each
            ``optimizer.step()`` first averages that optimizer's gradients across processes.
        plugin: set by the registry: the plugin (entry-point name or ``--plugin`` module) that
            registered the method.
        distribution: set by the registry: the installed distribution that provided the method.
        version: set by the registry: that distribution's version.

    Only the method's own spec decides how it trains: another plugin can never change it.
    """

    name: str
    description: str
    reference: str
    handles_missing_cxr: bool
    default_train_cohort: Cohort
    hparams: Mapping[str, Mapping[str, Any]]
    build: Callable[[ModelConfig], Any]
    train_cohorts: tuple[Cohort, ...] = ()
    pretraining: tuple[str, ...] = ()
    configure_optimizers: Callable[[Any, Mapping[str, Any]], Sequence[Any]] | None = None
    training_step: Callable[[Any, Mapping[str, Any], Sequence[Any]], Any] | None = None
    plugin: str = ""
    distribution: str = ""
    version: str = ""

    def __post_init__(self) -> None:
        if not self.train_cohorts:
            object.__setattr__(self, "train_cohorts", (self.default_train_cohort,))
        if self.default_train_cohort not in self.train_cohorts:
            raise ValueError(
                f"method {self.name!r}: default_train_cohort {self.default_train_cohort!r} "
                f"is not in train_cohorts {self.train_cohorts!r}"
            )

    def hparams_for(self, task: str) -> dict[str, Any]:
        """Default hyper-parameters for ``task`` (the ``"*"`` entry applies to every task)."""
        merged = dict(self.hparams.get("*", {}))
        merged.update(self.hparams.get(task, {}))
        return merged


@dataclass(frozen=True)
class TaskSpec:
    """A prediction task defined over the MIMIC-IV benchmark listfiles.

    Attributes:
        name: task name, also the folder of its listfiles under the EHR root.
        description: one line.
        labels: label column names, in listfile order.
        period_hours: fixed length of the EHR window in hours (48 for in-hospital mortality) or
            None to use each stay's ``period_length`` (the whole stay, phenotyping).
        default_cxr_window: ``"48h"`` (image between ICU admission and +48 h) or ``"full-stay"``
            (admission to discharge).
        label_groups: optional named subsets of labels (e.g. acute / mixed / chronic phenotypes)
            reported as extra macro averages.
    """

    name: str
    description: str
    labels: tuple[str, ...]
    period_hours: float | None
    default_cxr_window: Literal["48h", "full-stay"]
    label_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    distribution: str = ""
    version: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PretrainingStage:
    """A stage that produces weights other methods start from (MedFuse stage 1).

    The harness runs a stage at most once per (data fingerprint, task, stage config, seed) and
    caches its state dict; every method listing the stage in ``MethodSpec.pretraining`` receives
    it in ``ModelConfig.pretrained[name]``. A stage that trains on the radiology images only
    (``per_task=False``) runs once for all tasks, keyed by the images' fingerprint instead.

    Attributes:
        name: unique stage name, e.g. ``"cxr-radiology"``.
        description: one line.
        run: ``run(context) -> dict[str, torch.Tensor]``; ``context`` is a
            :class:`fusebench.hookspecs.StageContext`. Returns the state dict to cache.
        config: JSON-serialisable settings that change the result (part of the cache key).
        per_task: False when ``run`` fits on the ``"radiology"`` cohort only and uses nothing
            of ``context.task``, so its weights are the same for every task.
    """

    name: str
    description: str
    run: Callable[[Any], Mapping[str, Any]]
    config: Mapping[str, Any] = field(default_factory=dict)
    per_task: bool = True
    distribution: str = ""
    version: str = ""


@dataclass(frozen=True)
class ExecutorOption:
    """A setting an executor takes from the command line: ``--{executor}-{name}``.

    Attributes:
        name: the key in ``ExecutorSettings.options`` (lowercase, dashes become the flag's).
        help: one line for ``fusebench leaderboard --help``.
        type: ``str``, ``int`` or ``float``; the value is converted and checked by the CLI.
        default: the value the executor uses when the option is not given (shown in the help).
    """

    name: str
    help: str
    type: type = str
    default: Any = None


@dataclass(frozen=True)
class ExecutorSpec:
    """An engine that runs the leaderboard grid's jobs (``fusebench leaderboard --executor``).

    The harness turns the grid into picklable :class:`fusebench.executors.GridJob` values and
    hands them to the executor; each job is run by :func:`fusebench.executors.run_job` wherever
    the executor places it (a thread of this process, another process, a SLURM job, a Ray task),
    and writes its files into the run folders under ``--out``, which must be visible to the
    workers. The executor reports every job back as it ends; the harness then rebuilds the
    leaderboard from the result files, under its file lock.

    Attributes:
        name: unique name used with ``--executor``.
        description: one line.
        run: ``run(jobs, settings, report)``: run every job of the sequence, calling
            ``report(outcome)`` in the calling process for each one as it ends, with the
            :class:`fusebench.executors.JobOutcome` that ``run_job`` returned, or
            :meth:`JobOutcome.lost` when the worker died and no retry was left.
            ``settings`` is a :class:`fusebench.executors.ExecutorSettings`.
        options: the settings it reads from ``settings.options``, each offered by
            ``fusebench leaderboard`` as ``--{name}-{option}`` (e.g. ``--slurm-partition``).
    """

    name: str
    description: str
    run: Callable[[Any, Any, Callable[[Any], None]], None]
    options: tuple[ExecutorOption, ...] = ()
    distribution: str = ""
    version: str = ""
