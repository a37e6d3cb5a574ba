"""Per-method training: a method trains only the way its own plugin says."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
import torch
from torch import nn

from fusebench import MethodSpec
from fusebench.errors import PluginError
from fusebench.registry import FusebenchDeprecationWarning, load_registry
from fusebench.specs import ModelConfig
from fusebench.steps import build_model, build_optimizers, training_step
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY
from fusebench.testing import make_batch
from tests.fixtures.rogue_training import ROGUE_LR

ROGUE = "tests.fixtures.rogue_training"
TASK = IN_HOSPITAL_MORTALITY


@pytest.fixture(scope="module")
def registry():
    with pytest.warns(FusebenchDeprecationWarning, match=f"plugin '{ROGUE}'.*fusebench_training_step"):
        return load_registry([ROGUE], strict=True)


def _model(method: MethodSpec) -> nn.Module:
    torch.manual_seed(0)
    return build_model(method, ModelConfig(task=TASK.name, num_classes=TASK.num_classes,
                                           image_size=32))


def test_another_plugins_guardless_hooks_do_not_touch_a_builtin_method(registry) -> None:
    method = registry.method("uni-ehr")
    model = _model(method)
    hparams = method.hparams_for(TASK.name)
    optimizers = build_optimizers(registry, method, model, hparams)
    assert [type(o) for o in optimizers] == [torch.optim.Adam]
    assert optimizers[0].param_groups[0]["lr"] == pytest.approx(hparams["lr"])
    before = [p.detach().clone() for p in model.parameters()]
    loss = training_step(registry, method, model.train(), make_batch(TASK, 4), optimizers)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_deprecated_hooks_still_apply_to_their_own_plugins_methods(registry) -> None:
    method = registry.method("rogue")
    model = _model(method)
    optimizers = build_optimizers(registry, method, model, {})
    assert optimizers[0].param_groups[0]["lr"] == ROGUE_LR
    with pytest.raises(PluginError, match=r"method 'rogue' \(plugin tests.fixtures.rogue_training"
                       r".*training_step: RuntimeError: rogue step at .*rogue_training.py:\d+"):
        training_step(registry, method, model.train(), make_batch(TASK, 4), optimizers)


def _counting_step(calls: list) -> object:
    def step(model: nn.Module, batch: Mapping, optimizers: Sequence) -> torch.Tensor:
        calls.append(type(model).__name__)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch), batch["y"])
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return loss
    return step


def test_a_methods_own_fields_decide_its_optimizers_and_step(registry) -> None:
    calls: list[str] = []
    base = registry.method("uni-ehr")
    method = MethodSpec(**{**base.__dict__, "name": "own-step",
                           "configure_optimizers": lambda model, hparams: [
                               torch.optim.SGD(model.parameters(), lr=0.5)],
                           "training_step": _counting_step(calls)})
    model = _model(method)
    optimizers = build_optimizers(registry, method, model, {"lr": 1e-3})
    assert [(type(o), o.param_groups[0]["lr"]) for o in optimizers] == [(torch.optim.SGD, 0.5)]
    loss = training_step(registry, method, model.train(), make_batch(TASK, 4), optimizers)
    assert calls == [type(model).__name__]
    assert not loss.requires_grad


def test_an_error_in_a_builder_names_the_method_and_its_plugin(registry) -> None:
    def broken(config: ModelConfig) -> nn.Module:
        raise ValueError("no such layer")
    method = MethodSpec(**{**registry.method("rogue").__dict__, "build": broken})
    with pytest.raises(PluginError, match=r"method 'rogue' \(plugin tests.fixtures.rogue_training"
                       r".*build: ValueError: no such layer at .*test_training_hooks.py:\d+"):
        _model(method)
