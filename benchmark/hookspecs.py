"""The plugin contract: pluggy hook specifications of fusebench.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` whose names match
the specifications below. It is made known to the harness by an entry point in the group
``fusebench.plugins`` (the built-in methods register exactly that way), or for a module that is
not installed, by the global option ``fusebench --plugin module.path``.

Example:
    A minimal method plugin::

        import torch
        from fusebench import MethodSpec, hookimpl

        class Mean(torch.nn.Module):
            def __init__(self, config):
                super().__init__()
                self.head = torch.nn.Linear(config.ehr_input_dim, config.num_classes)

            def forward(self, batch):
                return self.head(batch["ehr"].mean(dim=1))

        @hookimpl
        def fusebench_register_methods():
            return [MethodSpec(name="ehr-mean", description="Linear model on the mean of the series.",
                               reference="-", handles_missing_cxr=True,
                               default_train_cohort="partial",
                               hparams={"*": {"lr": 1e-3, "batch_size": 16}}, build=Mean)]

A method's training behaviour (its optimizers, its training step) lives on its own
:class:`~fusebench.specs.MethodSpec` (``configure_optimizers``, ``training_step``), so no plugin
can change how another plugin's method trains. The global hooks ``fusebench_configure_optimizers``
and ``fusebench_training_step`` are deprecated: they still work, for the methods of the plugin that
implements them only, and loading such a plugin warns (:class:`FutureWarning`) naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import torch

    from fusebench.specs import (
        ExecutorSpec,
        MethodSpec,
        ModelConfig,
        PretrainingStage,
        TaskSpec,
    )

__all__ = ["PROJECT_NAME", "StageContext", "hookimpl", "hookspec"]

PROJECT_NAME = "fusebench"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class StageContext(Protocol):
    """What the harness gives a pretraining stage's ``run`` function.

    Attributes:
        task: the task whose methods will consume the stage's weights.
        seed: seed of the run that asked for the stage.
        device: where training happens.
        model_config: the base model configuration for the task (``pretrained`` empty).
    """

    task: TaskSpec
    seed: int
    device: torch.device
    model_config: ModelConfig

    def fit(
        self, model: torch.nn.Module, *, cohort: str, hparams: Mapping[str, Any]
    ) -> torch.nn.Module:
        """Train ``model`` with the harness's loop and return it at its best validation epoch.

        Args:
            model: module whose ``forward(batch)`` returns logits.
            cohort: ``"radiology"`` (all CXR images of the split, 14 labels), ``"paired"`` or
                ``"partial"`` (stays of ``task``, its labels).
            hparams: ``lr``, ``batch_size``, ``epochs`` and the other keys of
                :attr:`MethodSpec.hparams`.
        """
        ...


@hookspec
def fusebench_register_methods() -> Sequence[MethodSpec]:
    """Register fusion methods.

    Called once when the plugin manager is built, on every plugin.

    Returns:
        A list of :class:`~fusebench.specs.MethodSpec`. Names must be unique across all
        installed plugins; a clash is an error naming both distributions.
    """


@hookspec
def fusebench_register_tasks() -> Sequence[TaskSpec]:
    """Register prediction tasks.

    Called once when the plugin manager is built, on every plugin.

    Returns:
        A list of :class:`~fusebench.specs.TaskSpec`; names must be unique.
    """


@hookspec
def fusebench_register_pretraining_stages() -> Sequence[PretrainingStage]:
    """Register pretraining stages (weights other methods start from).

    Called once when the plugin manager is built, on every plugin. A stage runs only when a
    method being trained lists it in ``MethodSpec.pretraining``; its result is cached by data
    fingerprint, task, stage config and seed and shared by every method that lists it.

    Returns:
        A list of :class:`~fusebench.specs.PretrainingStage`.
    """


@hookspec
def fusebench_register_executors() -> Sequence[ExecutorSpec]:
    """Register executors: engines that run the leaderboard grid's jobs.

    Called once when the plugin manager is built, on every plugin. The built-in ``local``,
    ``slurm`` (submitit) and ``ray`` executors register through this hook; an executor for
    another scheduler is a plugin like any method.

    Returns:
        A list of :class:`~fusebench.specs.ExecutorSpec`; names must be unique.
    """


@hookspec(firstresult=True)
def fusebench_configure_optimizers(
    method: MethodSpec, model: torch.nn.Module, hparams: Mapping[str, Any]
) -> list[torch.optim.Optimizer] | None:
    """Deprecated: set :attr:`MethodSpec.configure_optimizers` instead. Build the optimizers.

    Called once per training run of a method registered by the same plugin (never for another
    plugin's methods), after the model is built and moved to its device, when the method's spec
    has no ``configure_optimizers``.

    Args:
        method: the method being trained.
        model: its freshly built model.
        hparams: the resolved hyper-parameters (``lr``, ``betas``, ``weight_decay``, ...).

    Returns:
        A list of optimizers, or None to let the harness build one Adam over every parameter
        with ``requires_grad`` (lr and betas from ``hparams``). Each optimizer gets its own
        ReduceLROnPlateau scheduler on the validation loss.
    """


@hookspec(firstresult=True)
def fusebench_training_step(
    method: MethodSpec,
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer],
) -> torch.Tensor | None:
    """Deprecated: set :attr:`MethodSpec.training_step` instead. One optimisation step.

    Called for every training batch of a method registered by the same plugin (never for another
    plugin's methods) whose spec has no ``training_step``, with the model in train mode and the
    batch on the device.
    Under torchrun the hook receives the plain module (not the DistributedDataParallel wrapper)
    and each optimizer averages its gradients across processes just before it steps, so a hook
    written for one process trains correctly on several (see :mod:`fusebench.distributed`).

    Args:
        method: the method being trained.
        model: the model.
        batch: the batch (see the batch contract in :mod:`fusebench.specs`).
        optimizers: the method's optimizers (see :func:`fusebench_configure_optimizers`).

    Returns:
        The detached scalar loss to report, after having stepped the optimizers; or None to let
        the harness do the default step (zero_grad, BCE-with-logits on ``model(batch)`` and
        ``batch["y"]``, backward, step of every optimizer).
    """
