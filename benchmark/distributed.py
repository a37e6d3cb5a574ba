"""One run across several processes (GPUs or nodes), launched by ``torchrun``.

``torchrun --nproc_per_node N -m fusebench run ...`` starts N copies of the command; each reads
its rank from the ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` variables torchrun sets. Together
they train one model:

- Training rows are sharded the way :class:`torch.utils.data.DistributedSampler` does it (see
  :func:`shard_indices`); each rank draws its own dropout and augmentation (see
  :func:`shard_seed`). A rank steps on ``batch_size // world_size`` rows, so that one step sees
  the recipe's batch and an epoch takes as many steps as in one process (see
  :mod:`fusebench.train`).
- Gradients are averaged across ranks: the default training step runs through
  :class:`~torch.nn.parallel.DistributedDataParallel` (:func:`wrap_model`); a method's own
  training-step hook gets the plain module, and its optimizers average the gradients before each
  step instead (:func:`averaging_gradients`).
- Evaluation predicts each rank's shard and gathers the pieces on every rank in the view's order,
  each row once (:func:`gather_shards`), so every rank takes the same early-stopping and
  learning-rate decisions and the test predictions equal a single process's in layout.
- Rank 0 alone reads and writes run files (:func:`from_main`) and hands what it read to the
  others, so only the data must be visible to every node; it also prepares the data first, and
  the others then reuse its cache (:func:`main_first`).

Outside torchrun (or with a world of one) every helper is a no-op that costs a function call:
results are bit-identical to a run without this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fusebench.errors import FusebenchError

__all__ = [
    "all_gather_object",
    "averaging_gradients",
    "broadcast_buffers",
    "from_main",
    "gather_shards",
    "is_main",
    "main_first",
    "process_group",
    "rank",
    "shard_indices",
    "shard_seed",
    "unwrap",
    "world_size",
    "wrap_model",
]

T = TypeVar("T")

# Rank 0 may build the data cache alone while the other ranks wait in a collective (main_first);
# torch's default timeouts (30 min for gloo, 10 for nccl) would end a long build on MIMIC.
_COLLECTIVE_TIMEOUT = timedelta(hours=4)


def _launched_by_torchrun() -> bool:
    """True when this process is one of several that torchrun started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    """Number of processes training together (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, the one process that writes files and prints results."""
    return rank() == 0


def _backend(device: str) -> str:
    """The process-group backend for ``device``, after pinning this rank to its GPU."""
    kind = torch.device(device)
    if kind.type == "cpu":
        return "gloo"
    if kind.type != "cuda":
        raise FusebenchError(f"--device {device}: runs under torchrun support cpu (gloo) and "
                             "cuda (nccl) only")
    if kind.index is not None:
        raise FusebenchError(f"--device {device}: under torchrun use --device cuda; each rank "
                             "takes the GPU numbered by its LOCAL_RANK")
    local_rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank >= count:
        raise FusebenchError(f"torchrun started local rank {local_rank} but this node has {count} "
                             f"CUDA device(s); use --nproc_per_node {count} or --device cpu")
    torch.cuda.set_device(local_rank)  # so that "cuda" means this rank's GPU from here on
    return "nccl"


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Join torchrun's process group for the body, then tear it down (no-op outside torchrun).

    Args:
        device: the run's torch device: ``cpu`` uses gloo, ``cuda`` uses nccl with the GPU of
            ``LOCAL_RANK``.

    Raises:
        FusebenchError: a device torchrun runs cannot use (``mps``, ``cuda:1``, too few GPUs).
    """
    if not _launched_by_torchrun() or dist.is_initialized():
        yield
        return
    dist.init_process_group(_backend(device), timeout=_COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_gather_object(value: T) -> list[T]:
    """``value`` of every rank, by rank (picklable values: numpy arrays, floats, tuples)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(compute: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``compute(*args, **kwargs)`` run on rank 0 only; every rank returns its result.

    Used for the run's files (output folder, checkpoints, stage weights, results), so that ranks
    cannot disagree about what exists and only rank 0 writes. An exception on rank 0 is raised
    on every rank (the ranks stop together instead of waiting for a peer that has gone).
    Doubles as a barrier.
    """
    if world_size() == 1:
        return compute(*args, **kwargs)
    outcome: tuple[bool, Any] | None = None
    if is_main():
        try:
            outcome = (True, compute(*args, **kwargs))
        except Exception as error:
            outcome = (False, error)
    succeeded, value = _broadcast_object(outcome)
    if not succeeded:
        raise value
    return value


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (which raise rank 0's error, if any).

    For work that fills a cache the other ranks then reuse, such as data preparation.
    """
    if world_size() == 1:
        yield
        return
    if is_main():
        try:
            yield
        except Exception as error:
            _broadcast_object(error)
            raise
        _broadcast_object(None)
        return
    error = _broadcast_object(None)
    if error is not None:
        raise error
    yield


def shard_indices(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The positions of ``order`` that ``rank`` takes, as ``DistributedSampler`` picks them.

    ``order`` (the same on every rank: drawn from the same seed) is padded to a multiple of
    ``world_size`` by repeating it from its start, and rank r takes ``order[r::world_size]``, so
    every rank gets the same number of rows (collectives then pair up) and each row appears once,
    or twice for at most ``world_size - 1`` padding rows.

    Args:
        order: row indices in the order of one epoch.
        rank: this rank.
        world_size: number of ranks.

    Returns:
        ``ceil(len(order) / world_size)`` indices.
    """
    total = -(-len(order) // world_size) * world_size
    padded = np.resize(order, total) if len(order) else order
    return padded[rank::world_size]


def gather_shards(local: np.ndarray, total: int) -> np.ndarray:
    """Reassemble rows computed per rank on ``shard_indices(np.arange(total), rank, world)``.

    Every rank gets the ``total`` rows in the original order, padding duplicates dropped.
    """
    if world_size() == 1:
        return local
    pieces = all_gather_object(local)
    # Padded position j is row j // world of rank j % world: interleave the ranks' rows.
    interleaved = np.stack(pieces, axis=1).reshape(-1, *local.shape[1:])
    return interleaved[:total]


def shard_seed(seed: int, rank: int, world_size: int) -> int:
    """The seed of a rank's own random draws (dropout, augmentation) in an epoch seeded ``seed``.

    ``seed`` itself in a single process, so single-process runs are unchanged; distinct per rank
    otherwise, so ranks do not repeat each other's dropout masks and image transforms.
    """
    if world_size == 1:
        return seed
    return int(np.random.SeedSequence([seed, rank, world_size]).generate_state(1)[0])


def wrap_model(model: nn.Module) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` under torchrun, else itself.

    Wrapping broadcasts rank 0's parameters and buffers, so every rank starts from the same
    weights. ``find_unused_parameters`` is on because fusion models skip branches per batch (a
    batch without images leaves the image encoder unused).
    """
    if world_size() == 1 or not any(p.requires_grad for p in model.parameters()):
        return model  # DDP refuses a model without trainable parameters: nothing to average
    return DistributedDataParallel(model, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a :func:`wrap_model` wrapper (``model`` itself if unwrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every rank.

    Each rank updates its statistics on its own shard; evaluation and the saved state must use
    one set of them.
    """
    if world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def _average_gradients(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Step pre-hook: replace the gradients of ``optimizer``'s parameters by their rank mean."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if not parameters:
        return
    device = parameters[0].device
    # A parameter a rank did not use has no gradient there but may have one on another rank:
    # agree on which have one (as DDP does), and count the missing ones as zeros.
    used = torch.tensor([p.grad is not None for p in parameters], dtype=torch.uint8,
                        device=device)
    dist.all_reduce(used, op=dist.ReduceOp.MAX)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for parameter, flag in zip(parameters, used.tolist(), strict=True):
        if flag:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            by_dtype.setdefault(parameter.grad.dtype, []).append(parameter.grad)
    for grads in by_dtype.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat /= world_size()
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()


@contextlib.contextmanager
def averaging_gradients(optimizers: Sequence[torch.optim.Optimizer]) -> Iterator[None]:
    """In the body, each ``optimizer.step()`` first averages its parameters' gradients over ranks.

    For training-step hooks, which get the plain module (they may check its type and call its
    own methods, and DDP only synchronises backward passes of its own ``forward``): their steps
    then apply the same averaged gradients as DDP's (a hook that clips gradients clips each
    rank's own, before the average). No-op in a single process.
    """
    if world_size() == 1:
        yield
        return
    handles = [optimizer.register_step_pre_hook(_average_gradients) for optimizer in optimizers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
