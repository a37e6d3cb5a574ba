"""One optimisation step, as the harness runs it: the plugin's hook if it has one, else the default.

Shared by the training loop, the throughput benchmark and the conformance suite so that all three
exercise the same code.

Under torchrun the training loop passes the model wrapped in DistributedDataParallel: the default
step runs through the wrapper, which averages gradients across ranks during backward; a method's
hook gets the plain module (it may check the model's type and call its own methods, which DDP
would not synchronise), and each of its ``optimizer.step()`` calls first averages the gradients
of that optimizer's parameters across ranks (:func:`fusebench.distributed.averaging_gradients`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fusebench import distributed
from fusebench.registry import Registry
from fusebench.specs import MethodSpec

__all__ = ["build_optimizers", "default_optimizers", "default_training_step", "training_step"]


def default_optimizers(
    model: nn.Module, hparams: Mapping[str, Any]
) -> list[torch.optim.Optimizer]:
    """One Adam over every trainable parameter.

    Uses ``hparams["lr"]`` and ``hparams["betas"]`` (MedFuse's recipe passes beta_1 0.9 as
    beta_2, so the "medfuse-2022" hyper-parameters say ``betas=(0.9, 0.9)``).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        torch.optim.Adam(
            trainable,
            lr=float(hparams.get("lr", 1e-4)),
            betas=tuple(hparams.get("betas", (0.9, 0.999))),
            weight_decay=float(hparams.get("weight_decay", 0.0)),
        )
    ]


def default_training_step(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer],
) -> torch.Tensor:
    """zero_grad, BCE-with-logits of ``model(batch)`` against ``batch["y"]``, backward, step."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    logits = model(batch)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["y"])
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    return loss.detach()


def build_optimizers(
    registry: Registry, method: MethodSpec, model: nn.Module, hparams: Mapping[str, Any]
) -> list[torch.optim.Optimizer]:
    """The method's optimizers: its ``fusebench_configure_optimizers`` hook or the default."""
    custom = registry.manager.hook.fusebench_configure_optimizers(
        method=method, model=model, hparams=hparams
    )
    return list(custom) if custom is not None else default_optimizers(model, hparams)


def training_step(
    registry: Registry,
    method: MethodSpec,
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer],
) -> torch.Tensor:
    """Run one training step (the method's hook or the default) and return the detached loss.

    ``model`` may be DDP-wrapped (see the module docstring): the hook gets the plain module.
    """
    with distributed.averaging_gradients(optimizers):
        loss = registry.manager.hook.fusebench_training_step(
            method=method, model=distributed.unwrap(model), batch=batch, optimizers=optimizers
        )
    if loss is not None:
        return loss.detach()
    return default_training_step(model, batch, optimizers)
