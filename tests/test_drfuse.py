"""DrFuse: equivalence with the original model, its losses and its training step.

``tests/fixtures/drfuse_original_outputs.npz`` holds the original code's outputs (github.com/
dorothy-yao/drfuse at a148979) on the cases of ``tests/equivalence/drfuse_cases.py``, written by
``tests/equivalence/make_drfuse_outputs.py`` with the fusebench model's weights; here the
fusebench model is rebuilt from the same seed and compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusebench.plugins.drfuse import DrFuse, drfuse_losses, jensen_shannon, logit_pooling
from fusebench.plugins.transformer_ehr import TransformerEHREncoder
from fusebench.registry import load_registry
from fusebench.specs import ModelConfig
from fusebench.steps import build_optimizers, training_step
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY, PHENOTYPING
from fusebench.testing import make_batch, parameter_count_on_meta
from tests.equivalence.drfuse_cases import TASKS, fusebench_outputs

FIXTURE = Path(__file__).parent / "fixtures" / "drfuse_original_outputs.npz"
# Logits, attention weights and losses: the bound. Features (up to ~20 in size):
# relative to their largest value. Gradient projections (sums over up to millions of products,
# up to ~500 in size; measured agreement 1.6e-5 of max(1, |value|)): per parameter.
ABSOLUTE = 1e-5
FEATURE_RELATIVE = 1e-6
GRADIENT_RELATIVE = 1e-4


@pytest.fixture(scope="module")
def original() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


@pytest.fixture
def fixture_threads():
    """The torch thread count the fixture was written with (2): the train-mode gradient
    projections through two ResNet-50 trunks depend on the summation order (measured 1.6e-5 of
    max(1, |value|) with 2 threads, 3.5e-2 with the test process's 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_outputs_losses_and_gradients_match_the_original(task, original, fixture_threads) -> None:
    ours = fusebench_outputs(task)
    expected_keys = {key.split("/", 1)[1] for key in original if key.startswith(f"{task}/")}
    assert set(ours) == expected_keys
    for key, value in ours.items():
        theirs = torch.from_numpy(original[f"{task}/{key}"])
        assert tuple(value.shape) == tuple(theirs.shape), key
        difference = (value.double() - theirs).abs()
        if "grad_projection" in key:
            worst = (difference / theirs.abs().clamp(min=1.0)).max().item()
            assert worst <= GRADIENT_RELATIVE, f"{task} {key}: relative difference {worst:.2e}"
            continue
        scale = max(1.0, theirs.abs().max().item()) if "feat_" in key else 1.0
        bound = (FEATURE_RELATIVE if "feat_" in key else ABSOLUTE) * scale
        worst = difference.max().item()
        assert worst <= bound, f"{task} {key}: max |diff| {worst:.2e} > {bound:.1e}"


def test_logit_pooling_is_the_logit_of_the_mean_probability() -> None:
    first, second = torch.randn(2, 64, dtype=torch.float64) * 4
    pooled = logit_pooling(first, second)
    mean = (torch.sigmoid(first) + torch.sigmoid(second)) / 2
    torch.testing.assert_close(torch.sigmoid(pooled), mean)


def test_jensen_shannon_is_zero_for_equal_features_and_ignores_unmasked_rows() -> None:
    first, second = torch.randn(2, 4, 8)
    rows = torch.tensor([True, True, False, False])
    assert jensen_shannon(first, first, rows).item() == pytest.approx(0.0, abs=1e-7)
    value = jensen_shannon(first, second, rows)
    assert value.item() > 0
    torch.testing.assert_close(jensen_shannon(second, first, rows), value)
    moved = second.clone()
    moved[~rows] += 3.0  # stays without an image: their CXR features must not count
    torch.testing.assert_close(jensen_shannon(first, moved, rows), value)
    # divided by the number of rows counted: the mean of the per-row terms
    single = [jensen_shannon(first[i:i + 1], second[i:i + 1], torch.tensor([True]))
              for i in range(2)]
    torch.testing.assert_close(value, (single[0] + single[1]) / 2)


def _outputs(attention: torch.Tensor, ehr: float, shared: float, cxr: float) -> dict:
    """Model outputs for one stay with an image, C = 1, whose heads' logits are given."""
    zeros = torch.zeros(1, 4)
    return {"feat_ehr_shared": zeros + 1, "feat_ehr_distinct": zeros + 2,
            "feat_cxr_shared": zeros + 1, "feat_cxr_distinct": torch.tensor([[1.0, -1, 1, -1]]),
            "has_cxr": torch.tensor([True]), "final": torch.zeros(1, 1),
            "ehr": torch.tensor([[ehr]]), "shared": torch.tensor([[shared]]),
            "cxr": torch.tensor([[cxr]]), "attention": attention}


def test_attention_ranking_loss_asks_more_weight_for_the_better_token() -> None:
    y = torch.ones(1, 1)
    # the CXR head is best (largest logit for a positive label), then shared, then EHR
    ordered = torch.tensor([[[0.1, 0.3, 0.6]]], requires_grad=True)  # EHR, shared, CXR weights
    reversed_ = torch.tensor([[[0.6, 0.3, 0.1]]], requires_grad=True)
    good = drfuse_losses(_outputs(ordered, -2.0, 0.0, 2.0), y, {})["attn_ranking"]
    bad = drfuse_losses(_outputs(reversed_, -2.0, 0.0, 2.0), y, {})["attn_ranking"]
    assert good.item() == 0.0
    assert bad.item() > 0.0
    bad.backward()
    ehr_grad, shared_grad, cxr_grad = reversed_.grad[0, 0]
    assert cxr_grad < 0 < ehr_grad  # descent raises the CXR weight and lowers the EHR one


def test_loss_weights_come_from_the_hparams() -> None:
    outputs = _outputs(torch.tensor([[[0.6, 0.3, 0.1]]]), -2.0, 0.0, 2.0)
    y = torch.ones(1, 1)
    terms = drfuse_losses(outputs, y, {})
    without_ranking = drfuse_losses(outputs, y, {"lambda_attn_aux": 0.0})
    torch.testing.assert_close(without_ranking["total"], terms["total"] - terms["attn_ranking"])
    doubled_cxr = drfuse_losses(outputs, y, {"lambda_pred_cxr": 2.0})
    torch.testing.assert_close(doubled_cxr["total"], terms["total"] + terms["pred_cxr"])


def _small_model(task=IN_HOSPITAL_MORTALITY, **hparams) -> DrFuse:
    torch.manual_seed(0)
    spec = load_registry().method("drfuse")
    config = ModelConfig(task=task.name, num_classes=task.num_classes, image_size=32,
                         hparams={**spec.hparams_for(task.name), "hidden_size": 32,
                                  "ehr_heads": 2, **hparams})
    return DrFuse(config)


@pytest.mark.slow  # builds three ResNet-50s
def test_stays_without_an_image_change_no_loss_in_training() -> None:
    model = _small_model().train()
    batch = make_batch(IN_HOSPITAL_MORTALITY, 4, cxr_present="some", image_size=32)
    moved = dict(batch, cxr=batch["cxr"] + (~batch["has_cxr"])[:, None, None, None] * 5.0)
    losses = []
    for each in (batch, moved):
        torch.manual_seed(1)  # same dropout masks
        losses.append(model.losses(each))
    for term, value in losses[0].items():
        torch.testing.assert_close(losses[1][term], value, msg=term)


@pytest.mark.slow  # builds three ResNet-50s
def test_training_step_without_images_leaves_the_cnn_alone() -> None:
    registry = load_registry()
    spec = registry.method("drfuse")
    model = _small_model().train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizers = build_optimizers(registry, spec, model, spec.hparams_for("in-hospital-mortality"))
    batch = make_batch(IN_HOSPITAL_MORTALITY, 4, cxr_present="none", image_size=32)
    torch.manual_seed(3)
    expected = model.losses(batch)["total"].detach()
    torch.manual_seed(3)
    loss = training_step(registry, spec, model, batch, optimizers)
    torch.testing.assert_close(loss, expected)  # the step reports the total of every term
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    cnn = {name for name in before if name.startswith(("cxr_stem", "cxr_shared.", "cxr_distinct"))}
    assert cnn and not changed & cnn
    assert "ehr.embedding.weight" in changed and "final_head.weight" in changed


@pytest.mark.slow  # builds three ResNet-50s, twice
def test_phenotyping_reads_the_first_48_hours_of_a_stay_as_the_codes_data() -> None:
    batch = make_batch(PHENOTYPING, 3, cxr_present="none", seq_len=80)
    batch["ehr_lengths"] = torch.tensor([80, 60, 30])
    cut = dict(batch, ehr=batch["ehr"][:, :49], ehr_lengths=torch.tensor([49, 49, 30]))
    with torch.no_grad():
        first_hours = _small_model(PHENOTYPING).eval()
        assert torch.equal(first_hours(batch), first_hours(cut))
        whole_stay = _small_model(PHENOTYPING, ehr_first_bins=0).eval()
        assert not torch.allclose(whole_stay(batch)[:2], whole_stay(cut)[:2])
        torch.testing.assert_close(whole_stay(batch)[2], whole_stay(cut)[2])


def test_a_stay_longer_than_the_positional_table_is_cut_to_its_first_bins() -> None:
    torch.manual_seed(0)
    encoder = TransformerEHREncoder(76, 16, 2, ("only",), max_len=10, feedforward=32).eval()
    series = torch.randn(2, 15, 76)
    lengths = torch.tensor([15, 6])
    with torch.no_grad():
        long = encoder(series, lengths)["only"]
        cut = encoder(series[:, :10], torch.tensor([10, 6]))["only"]
    torch.testing.assert_close(long, cut)


def test_the_plugin_table_counts_its_parameters_on_the_meta_device() -> None:
    spec = load_registry().method("drfuse")
    config = ModelConfig(task=PHENOTYPING.name, num_classes=PHENOTYPING.num_classes,
                         hparams=spec.hparams_for(PHENOTYPING.name))
    with torch.device("meta"):  # raises if the builder needs real tensors
        on_meta = spec.build(config)
    assert all(p.is_meta for p in on_meta.parameters())
    count = sum(p.numel() for p in on_meta.parameters())
    assert parameter_count_on_meta(spec, PHENOTYPING) == count
    # two ResNet-50 trunks (23.5 M parameters each) dominate
    assert 47_000_000 < count < 60_000_000
