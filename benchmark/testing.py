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
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fusebench.errors import PluginError
from fusebench.registry import Registry, load_registry
from fusebench.specs import MethodSpec, ModelConfig, TaskSpec
from fusebench.steps import (
    build_model,
    build_optimizers,
    trainable_parameter_count,
    training_step,
)

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
        traceback: the full traceback when the check crashed (shown by ``--debug``).
        blocked_by: the failed check that kept this one from running (e.g. ``"finite"``: NaN
            logits make every comparison of outputs meaningless); ``passed`` is False.
    """

    name: str
    task: str
    passed: bool
    reason: str = ""
    traceback: str = ""
    blocked_by: str = ""


def parameter_count_on_meta(method: MethodSpec, task: TaskSpec) -> int:
    """Trainable parameters of ``method``'s model for ``task`` at its default configuration,
    built on the meta device: shapes only, no memory and no weight initialisation (a builder
    that cannot run there is built on the CPU instead)."""
    config = ModelConfig(task=task.name, num_classes=task.num_classes,
                         hparams=method.hparams_for(task.name))
    try:
        with torch.device("meta"):
            return trainable_parameter_count(build_model(method, config))
    except PluginError:
        return trainable_parameter_count(build_model(method, config))


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
        self.case = "building the model"  # what ran last: named when a check crashes
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
        self.case = f"batch of {size}, {presence} CXR present, seed {self.seed + seed}"
        return make_batch(self.task, size, cxr_present=presence, image_size=self.image_size,
                          seed=self.seed + seed)

    def outputs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        mode = "train" if model.training else "eval"
        self.case = f"{self.case.split(', forward in ')[0]}, forward in {mode} mode"
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

    def check_returns_logits(self) -> None:
        """Outputs that all lie in [0, 1] over varied batches are probabilities, not logits."""
        outputs = []
        for seed in range(3):
            for presence in ("all", "some", "none"):
                for scale in (1.0, 10.0):  # larger inputs spread logits well beyond [0, 1]
                    batch = self.batch(8, presence, seed=10 + seed)
                    self.case += f", inputs x{scale:g}"
                    batch = dict(batch, ehr=batch["ehr"] * scale, cxr=batch["cxr"] * scale)
                    outputs.append(self.outputs(self.model, batch).flatten())
        values = torch.cat(outputs)
        if ((values >= 0) & (values <= 1)).all():
            raise _CheckFailed(
                f"all {values.numel()} outputs over {len(outputs)} varied batches lie in [0, 1] "
                f"({values.min().item():.3g} to {values.max().item():.3g}): they look like "
                "probabilities; return logits (the harness applies the sigmoid)")

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
        batch = self.batch(4, self.train_presence, seed=1)
        self.case += ", training step"
        loss = training_step(self.registry, self.method, model, batch, optimizers)
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and torch.isfinite(loss)):
            raise _CheckFailed(f"training step returned {loss!r}, expected a finite scalar loss")
        after = dict(model.named_parameters())
        frozen_changed = [n for n in before if n not in trainable
                          and not torch.equal(before[n], after[n])]
        if frozen_changed:
            raise _CheckFailed(f"frozen parameter {frozen_changed[0]} changed in a training step")
        unchanged = [n for n in sorted(trainable) if torch.equal(before[n], after[n])]
        if unchanged:
            grad = after[unchanged[0]].grad
            found = ("it got no gradient" if grad is None else "its gradient is zero"
                     if not grad.any() else "its gradient did not move it")
            raise _CheckFailed(
                f"{len(unchanged)} trainable parameters unchanged by a training step, e.g. "
                f"{unchanged[0]} ({found}): either a module is built but never used in forward "
                "(do not build it), or its path to the loss is masked or detached (multiplied "
                "by a zero mask, .detach(), torch.no_grad(), a non-differentiable op)")

    def check_pretraining_stages(self) -> None:
        unknown = [name for name in self.method.pretraining if name not in self.registry.stages]
        if unknown:
            raise _CheckFailed(f"pretraining stage {unknown[0]!r} is not registered")

    def checks(self) -> dict[str, Callable[[], None]]:
        checks = {
            "output-shape": self.check_output_shape,
            "finite": self.check_finite,
            "returns-logits": self.check_returns_logits,
            "deterministic": self.check_deterministic,
            "state-dict-round-trip": self.check_state_dict_round_trip,
            "training-step": self.check_training_step,
            "pretraining-stages": self.check_pretraining_stages,
        }
        if self.method.handles_missing_cxr:
            checks["ignores-absent-cxr"] = self.check_ignores_absent_cxr
        return checks


# Checks that compare or train on outputs: NaN logits break them all, so they are not run then.
_NEED_FINITE_OUTPUTS = ("returns-logits", "deterministic", "state-dict-round-trip",
                        "training-step", "ignores-absent-cxr")
# Frames in these folders are not the plugin's: a crash is located in the plugin's own code.
_HARNESS_AND_TORCH = (str(Path(__file__).resolve().parent), str(Path(torch.__file__).parent))
_STANDARD_LIBRARY = str(Path(copy.__file__).parent)


def _is_plugin_code(filename: str) -> bool:
    if filename.startswith(_HARNESS_AND_TORCH):
        return False
    return not filename.startswith(_STANDARD_LIBRARY) or "site-packages" in filename


def _crash(name: str, task: str, error: Exception, case: str) -> CheckResult:
    """A failed check for a crash: the error, the batch case and the plugin's file:line."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if _is_plugin_code(f.filename)] or frames
    where = f" at {own[-1].filename}:{own[-1].lineno}" if own else ""
    message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return CheckResult(name, task, False, f"{message} ({case}){where}",
                       traceback="".join(traceback.format_exception(error)))


def _run(name: str, task: str, checker: _Checker) -> CheckResult:
    checker.case = name
    try:
        checker.checks()[name]()
    except _CheckFailed as failure:
        return CheckResult(name, task, False, str(failure))
    except Exception as error:  # a crashing plugin is a failed check, not a crashed suite
        return _crash(name, task, error, checker.case)
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
    size 1; ``finite`` outputs; ``returns-logits`` (outputs that all lie in [0, 1] over varied
    batches are probabilities); ``deterministic`` (same seed, same outputs);
    ``state-dict-round-trip``; ``training-step`` (the method's optimizers and step change every
    trainable parameter and no frozen one); ``pretraining-stages`` registered; and for methods
    with ``handles_missing_cxr``, ``ignores-absent-cxr`` (the image of a stay whose ``has_cxr``
    is False changes no output, in eval and in train mode). Other checks use eval mode.
    When ``finite`` fails, the checks that compare outputs are not run: they fail with
    ``blocked_by="finite"`` and name it as the cause. A crash names its batch case and the
    plugin's file and line; ``CheckResult.traceback`` holds the traceback.

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
        except _CheckFailed as failure:
            results.append(CheckResult("build", task.name, False, str(failure)))
            continue
        except Exception as error:
            results.append(_crash("build", task.name, error, "building the model"))
            continue
        results.append(CheckResult("build", task.name, True))
        finite = True
        for name in checker.checks():
            if not finite and name in _NEED_FINITE_OUTPUTS:
                results.append(CheckResult(name, task.name, False, "not checked: the logits are "
                                           "NaN or infinite (see `finite`)", blocked_by="finite"))
                continue
            results.append(_run(name, task.name, checker))
            finite = finite and not (name == "finite" and not results[-1].passed)
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
