"""One optimisation step, as the harness runs it: the method's own step if it has one, else the
default.

Shared by the training loop, the throughput benchmark and the conformance suite so that all three
exercise the same code. A method's training behaviour comes only from its own
:class:`~fusebench.specs.MethodSpec` (``configure_optimizers``, ``training_step``), or, during the
deprecation period, from the global training hooks of the plugin that registered it: another
plugin's hooks are never called for it. An exception raised by a method's code (building the
model, its optimizers, its step or its forward) becomes a :class:`~fusebench.errors.PluginError`
naming the method, its plugin and the file:line that raised.

Under torchrun the training loop passes the model wrapped in DistributedDataParallel: the default
step runs through the wrapper, which averages gradients across ranks during backward; a method's
own step gets the plain module (it may check the model's type and call its own methods, which DDP
would not synchronise), and each of its ``optimizer.step()`` calls first averages the gradients
of that optimizer's parameters across ranks (:func:`fusebench.distributed.averaging_gradients`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fusebench import distributed
from fusebench.errors import FusebenchError, PluginError
from fusebench.registry import Registry
from fusebench.specs import MethodSpec, ModelConfig

__all__ = [
    "adam",
    "batch_to_device",
    "build_model",
    "build_optimizers",
    "default_optimizers",
    "default_training_step",
    "method_code",
    "trainable_parameter_count",
    "training_step",
]


def default_optimizers(
    model: nn.Module, hparams: Mapping[str, Any]
) -> list[torch.optim.Optimizer]:
    """One Adam over every trainable parameter.

    Uses ``hparams["lr"]`` and ``hparams["betas"]`` (MedFuse's recipe passes beta_1 0.9 as
    beta_2, so the "medfuse-2022" hyper-parameters say ``betas=(0.9, 0.9)``).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [adam(trainable, hparams)]


def adam(parameters: Sequence[nn.Parameter], hparams: Mapping[str, Any]) -> torch.optim.Adam:
    """Adam with ``lr``, ``betas`` and ``weight_decay`` from ``hparams``: the one factory every
    built-in optimizer comes from.

    The step is torch's fused kernel where every parameter allows it (floating point, on the CPU
    or a CUDA device): the same update to float rounding, 7x faster than the default per-tensor
    loop over ResNet34's parameters on one CPU thread (112 -> 16 ms a step), which the default
    spends again on every batch, however few images it holds.
    """
    parameters = [dict(p, params=list(p["params"])) if isinstance(p, Mapping) else p
                  for p in parameters]
    return torch.optim.Adam(
        parameters,
        lr=float(hparams.get("lr", 1e-4)),
        betas=tuple(hparams.get("betas", (0.9, 0.999))),
        weight_decay=float(hparams.get("weight_decay", 0.0)),
        fused=_fusable(parameters) or None,
    )


def _fusable(parameters: Sequence[nn.Parameter | Mapping[str, Any]]) -> bool:
    tensors = [t for p in parameters
               for t in (p["params"] if isinstance(p, Mapping) else [p])]
    return bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda")
                                 for t in tensors)


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (what the parameter-count table reports)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def batch_to_device(batch: Mapping[str, torch.Tensor], device: torch.device | str,
                    channels_last: bool = False) -> dict[str, torch.Tensor]:
    """The batch on ``device``, ``ehr_lengths`` left on the CPU (``pack_padded_sequence`` requires
    it); the image in channels-last memory format when asked."""
    moved = {key: value if key == "ehr_lengths" else value.to(device, non_blocking=True)
             for key, value in batch.items()}
    if channels_last and "cxr" in moved:
        moved["cxr"] = moved["cxr"].contiguous(memory_format=torch.channels_last)
    return moved


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


@contextmanager
def method_code(method: MethodSpec, what: str) -> Iterator[None]:
    """Run a method's own code; an exception from it becomes a :class:`PluginError` naming the
    method, its plugin and where it was raised (the original stays chained for ``--debug``).

    Out-of-memory errors pass through unchanged: they are the device's limit, not a plugin's bug,
    and callers (the throughput benchmark) react to them.
    """
    try:
        yield
    except (FusebenchError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as error:
        raise PluginError(
            f"method {method.name!r} (plugin {method.plugin or '?'} from "
            f"{method.distribution or '?'}) failed in {what}: {type(error).__name__}: "
            f"{_first_line(error)}{_origin(error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _origin(error: BaseException) -> str:
    """`` at file:line`` of the innermost frame outside torch, where the method's code raised."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if f.filename != __file__ and "/torch/" not in f.filename
              and not f.filename.endswith("contextlib.py")]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def build_model(method: MethodSpec, config: ModelConfig) -> nn.Module:
    """``method.build(config)``; a failure names the method and its plugin."""
    with method_code(method, "build"):
        return method.build(config)


def _own_hook(registry: Registry, method: MethodSpec, hook_name: str) -> Callable[..., Any] | None:
    """The deprecated global hook, restricted to the plugin that registered ``method``."""
    owner = registry.manager.get_plugin(method.plugin) if method.plugin else None
    if owner is None or not any(impl.plugin is owner for impl in
                                getattr(registry.manager.hook, hook_name).get_hookimpls()):
        return None
    others = [plugin for plugin in registry.manager.get_plugins() if plugin is not owner]
    return registry.manager.subset_hook_caller(hook_name, remove_plugins=others)


def build_optimizers(
    registry: Registry, method: MethodSpec, model: nn.Module, hparams: Mapping[str, Any]
) -> list[torch.optim.Optimizer]:
    """The method's optimizers: its ``configure_optimizers`` (or its own plugin's deprecated
    hook), else :func:`default_optimizers`."""
    with method_code(method, "configure_optimizers"):
        if method.configure_optimizers is not None:
            return list(method.configure_optimizers(model, hparams))
        hook = _own_hook(registry, method, "fusebench_configure_optimizers")
        custom = hook(method=method, model=model, hparams=hparams) if hook else None
    return list(custom) if custom is not None else default_optimizers(model, hparams)


def training_step(
    registry: Registry,
    method: MethodSpec,
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer],
) -> torch.Tensor:
    """Run one training step (the method's own or the default) and return the detached loss.

    ``model`` may be DDP-wrapped (see the module docstring): a method's own step gets the plain
    module.
    """
    with method_code(method, "training_step"):
        plain = distributed.unwrap(model)
        if method.training_step is not None:
            with distributed.averaging_gradients(optimizers):
                return method.training_step(plain, batch, optimizers).detach()
        hook = _own_hook(registry, method, "fusebench_training_step")
        if hook is not None:
            with distributed.averaging_gradients(optimizers):
                loss = hook(method=method, model=plain, batch=batch, optimizers=optimizers)
            if loss is not None:
                return loss.detach()
        return default_training_step(model, batch, optimizers)
