"""The optimizer factory every built-in method uses (fusebench.steps.adam)."""

from __future__ import annotations

import torch
from torch import nn

from fusebench.steps import adam

HPARAMS = {"lr": 1e-3, "betas": (0.9, 0.9), "weight_decay": 1e-4}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(torch.randn(4, 3, 6, 6, generator=generator)).square().mean().backward()
        optimizer.step()


def test_adam_runs_the_fused_kernel_with_the_same_updates_as_torchs_reference_loop() -> None:
    ours, reference = _model(), _model()
    ours(torch.zeros(1, 3, 6, 6)), reference(torch.zeros(1, 3, 6, 6))  # materialise LazyLinear
    reference.load_state_dict(ours.state_dict())
    optimizer = adam(ours.parameters(), HPARAMS)
    assert optimizer.defaults["fused"] is True
    _train(ours, optimizer)
    _train(reference, torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.9, 0.9),
                                       weight_decay=1e-4, foreach=False))
    for (name, mine), theirs in zip(ours.state_dict().items(), reference.state_dict().values(),
                                    strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7, msg=name)


def test_adam_accepts_parameter_groups_given_as_generators() -> None:
    model = _model()
    model(torch.zeros(1, 3, 6, 6))
    optimizer = adam([{"params": (p for p in model[0].parameters())},
                      {"params": (p for p in model[2].parameters()), "lr": 1e-2}], HPARAMS)
    assert [len(group["params"]) for group in optimizer.param_groups] == [2, 2]
    assert optimizer.param_groups[1]["lr"] == 1e-2
