"""Conformance suite for fusion-method plugins, on synthetic batches of the contract.

Used by the built-in tests, by ``fusebench plugins check NAME`` and by outside plugin authors.
Everything runs on the CPU with tiny images (32 px by default) in seconds per method.

Example:
    In a plugin package's tests::

        from fusebench.testing import assert_conforms

        def test_conformance():
            assert_conforms("my-method")
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fusebench.registry import Registry, load_registry
from fusebench.specs import MethodSpec, ModelConfig, TaskSpec
from fusebench.steps import build_optimizers, training_step

__all__ = [
    "CheckResult",
    "assert_conforms",
    "check_method",
    "make_batch",
    "trainable_parameter_count",
]

Batch = dict[str, torch.Tensor]
EHR_FEATURES = 76


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one conformance check.

    Attributes:
        name: the check, e.g. ``"output-shape"``.
        task: the task it ran on.
        passed: whether the method conforms.
        reason: why it failed (empty when passed).
    """

    name: str
    task: str
    passed: bool
    reason: str = ""


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (what the parameter-count table reports)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _presence_mask(cxr_present: str | Sequence[bool] | torch.Tensor, batch_size: int) -> torch.Tensor:
    if isinstance(cxr_present, str):
        patterns = {"all": lambda i: True, "none": lambda i: False, "some": lambda i: i % 2 == 0}
        if cxr_present not in patterns:
            raise ValueError(f"cxr_present must be all, some, none or a mask, got {cxr_present!r}")
        return torch.tensor([patterns[cxr_present](i) for i in range(batch_size)])
    mask = torch.as_tensor(cxr_present, dtype=torch.bool)
    if mask.shape != (batch_size,):
        raise ValueError(f"cxr_present mask has shape {tuple(mask.shape)}, expected ({batch_size},)")
    return mask


def make_batch(
    task: TaskSpec,
    batch_size: int,
    *,
    cxr_present: str | Sequence[bool] | torch.Tensor = "some",
    image_size: int = 32,
    seq_len: int = 12,
    seed: int = 0,
) -> Batch:
    """A synthetic batch of the contract in :mod:`fusebench.specs`.

    Args:
        task: gives the number of labels C.
        batch_size: B.
        cxr_present: ``"all"``, ``"none"``, ``"some"`` (every other stay, starting with one
            that has an image) or a boolean mask of length B.
        image_size: side of the square images.
        seq_len: T; the first stay has exactly T bins, the others 1 to T.
        seed: the same seed gives the same batch.

    Returns:
        ``{"ehr", "ehr_lengths", "cxr", "has_cxr", "y", "stay_id"}``; series are zero after each
        stay's length and images are zero where ``has_cxr`` is False.

    Example:
        >>> from fusebench.tasks.builtin import PHENOTYPING
        >>> make_batch(PHENOTYPING, 4, cxr_present="none")["y"].shape
        torch.Size([4, 25])
    """
    generator = torch.Generator().manual_seed(seed)
    has_cxr = _presence_mask(cxr_present, batch_size)
    lengths = torch.randint(1, seq_len + 1, (batch_size,), generator=generator)
    lengths[0] = seq_len
    steps = torch.arange(seq_len)[None, :] < lengths[:, None]
    ehr = torch.randn(batch_size, seq_len, EHR_FEATURES, generator=generator) * steps[:, :, None]
    cxr = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    cxr = cxr * has_cxr[:, None, None, None]
    labels = torch.randint(0, 2, (batch_size, task.num_classes), generator=generator)
    return {"ehr": ehr, "ehr_lengths": lengths.long(), "cxr": cxr, "has_cxr": has_cxr,
            "y": labels.float(), "stay_id": torch.arange(batch_size, dtype=torch.long)}


class _CheckFailed(Exception):
    """A conformance check did not hold; the message is the reason."""


class _Checker:
    """Builds a method's model for one task and runs the checks on it."""

    def __init__(self, method: MethodSpec, registry: Registry, task: TaskSpec,
                 image_size: int, seed: int) -> None:
        self.method, self.registry, self.task = method, registry, task
        self.seed, self.image_size = seed, image_size
        self.hparams = method.hparams_for(task.name)
        self.config = ModelConfig(task=task.name, num_classes=task.num_classes,
                                  image_size=image_size, hparams=self.hparams)
        self.model = self.build(seed)
        # A method that needs the image is trained on stays that all have one.
        self.train_presence = "some" if method.handles_missing_cxr else "all"

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = self.method.build(self.config)
        if not isinstance(model, nn.Module):
            raise _CheckFailed(f"build returned {type(model).__name__}, not a torch.nn.Module")
        return model.eval()

    def batch(self, size: int, presence: str | Sequence[bool], seed: int = 0) -> Batch:
        return make_batch(self.task, size, cxr_present=presence, image_size=self.image_size,
                          seed=self.seed + seed)

    def outputs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            logits = model(batch)
        if not isinstance(logits, torch.Tensor):
            raise _CheckFailed(f"forward returned {type(logits).__name__}, not a tensor")
        return logits

    def check_output_shape(self) -> None:
        cases = [(4, "all"), (4, "some"), (4, "none"), (1, "all"), (1, "none")]
        for size, presence in cases:
            logits = self.outputs(self.model, self.batch(size, presence))
            if tuple(logits.shape) != (size, self.task.num_classes):
                raise _CheckFailed(f"batch of {size} with {presence} CXR present: logits shape "
                                   f"{tuple(logits.shape)}, expected ({size}, {self.task.num_classes})")

    def check_finite(self) -> None:
        for presence in ("all", "some", "none"):
            if not torch.isfinite(self.outputs(self.model, self.batch(4, presence))).all():
                raise _CheckFailed(f"NaN or infinite logits with {presence} CXR present")

    def check_deterministic(self) -> None:
        batch = self.batch(4, "some")
        twin = self.build(self.seed)
        if not torch.equal(self.outputs(self.model, batch), self.outputs(twin, batch)):
            raise _CheckFailed("two models built with the same seed give different outputs")

    def check_state_dict_round_trip(self) -> None:
        batch = self.batch(4, "some")
        other = self.build(self.seed + 1)
        other.load_state_dict(copy.deepcopy(self.model.state_dict()))
        if not torch.equal(self.outputs(self.model, batch), self.outputs(other.eval(), batch)):
            raise _CheckFailed("a model loaded from another's state_dict gives different outputs")

    def check_ignores_absent_cxr(self) -> None:
        batch = self.batch(4, "some")
        changed = dict(batch, cxr=batch["cxr"] + (~batch["has_cxr"])[:, None, None, None] * 5.0)
        for mode in ("eval", "train"):  # train mode: BatchNorm uses the batch's statistics
            if not torch.allclose(self.seeded_outputs(batch, mode),
                                  self.seeded_outputs(changed, mode)):
                raise _CheckFailed(f"in {mode} mode, changing the image of a stay with has_cxr "
                                   "False changed the outputs: absent images must not be used")

    def seeded_outputs(self, batch: Batch, mode: str) -> torch.Tensor:
        """Outputs of a copy of the model (BatchNorm statistics untouched), same dropout masks."""
        model = copy.deepcopy(self.model).train(mode == "train")
        torch.manual_seed(self.seed)
        return self.outputs(model, batch)

    def check_training_step(self) -> None:
        model = self.build(self.seed).train()
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        optimizers = build_optimizers(self.registry, self.method, model, self.hparams)
        loss = training_step(self.registry, self.method, model,
                             self.batch(4, self.train_presence, seed=1), optimizers)
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and torch.isfinite(loss)):
            raise _CheckFailed(f"training step returned {loss!r}, expected a finite scalar loss")
        after = dict(model.named_parameters())
        frozen_changed = [n for n in before if n not in trainable
                          and not torch.equal(before[n], after[n])]
        if frozen_changed:
            raise _CheckFailed(f"frozen parameter {frozen_changed[0]} changed in a training step")
        unchanged = [n for n in sorted(trainable) if torch.equal(before[n], after[n])]
        if unchanged:
            raise _CheckFailed(f"{len(unchanged)} trainable parameters unchanged by a training "
                               f"step, e.g. {unchanged[0]} (unused modules must not be built)")

    def check_pretraining_stages(self) -> None:
        unknown = [name for name in self.method.pretraining if name not in self.registry.stages]
        if unknown:
            raise _CheckFailed(f"pretraining stage {unknown[0]!r} is not registered")

    def checks(self) -> dict[str, Callable[[], None]]:
        checks = {
            "output-shape": self.check_output_shape,
            "finite": self.check_finite,
            "deterministic": self.check_deterministic,
            "state-dict-round-trip": self.check_state_dict_round_trip,
            "training-step": self.check_training_step,
            "pretraining-stages": self.check_pretraining_stages,
        }
        if self.method.handles_missing_cxr:
            checks["ignores-absent-cxr"] = self.check_ignores_absent_cxr
        return checks


def _run(name: str, task: str, check: Callable[[], None]) -> CheckResult:
    try:
        check()
    except _CheckFailed as failure:
        return CheckResult(name, task, False, str(failure))
    except Exception as error:  # a crashing plugin is a failed check, not a crashed suite
        return CheckResult(name, task, False, f"{type(error).__name__}: {error}".splitlines()[0])
    return CheckResult(name, task, True)


def check_method(
    method: MethodSpec,
    registry: Registry,
    *,
    tasks: Sequence[str] | None = None,
    image_size: int = 32,
    seed: int = 0,
) -> list[CheckResult]:
    """Run every conformance check of ``method`` on each task.

    Checks: ``build``; ``output-shape`` (B, C) with all, some and no CXR present and with batch
    size 1; ``finite`` outputs; ``deterministic`` (same seed, same outputs);
    ``state-dict-round-trip``; ``training-step`` (the method's optimizers and step change every
    trainable parameter and no frozen one); ``pretraining-stages`` registered; and for methods
    with ``handles_missing_cxr``, ``ignores-absent-cxr`` (the image of a stay whose ``has_cxr``
    is False changes no output, in eval and in train mode). Other checks use eval mode.

    Args:
        method: the method to check.
        registry: the registry holding its hooks and the tasks.
        tasks: task names; default every registered task.
        image_size: side of the synthetic images.
        seed: seed of the models and batches.

    Returns:
        One :class:`CheckResult` per check and task.
    """
    results = []
    for task_name in tasks if tasks is not None else sorted(registry.tasks):
        task = registry.task(task_name)
        try:
            checker = _Checker(method, registry, task, image_size, seed)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            results.append(CheckResult("build", task.name, False, reason))
            continue
        results.append(CheckResult("build", task.name, True))
        results += [_run(name, task.name, check) for name, check in checker.checks().items()]
    return results


def assert_conforms(
    method_name: str, *, tasks: Sequence[str] | None = None, registry: Registry | None = None
) -> None:
    """Assert that the installed method ``method_name`` passes :func:`check_method`.

    Raises:
        AssertionError: listing every failed check with its task and reason.
    """
    registry = registry if registry is not None else load_registry()
    failures = [r for r in check_method(registry.method(method_name), registry, tasks=tasks)
                if not r.passed]
    assert not failures, f"{method_name} does not conform:\n" + "\n".join(
        f"  {r.task}: {r.name}: {r.reason}" for r in failures
    )
