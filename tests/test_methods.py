"""The built-in fusion methods: conformance, published parameter counts, method-specific rules."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fusebench.errors import FusebenchError
from fusebench.plugins.encoders import CXR_STAGE, EHR_STAGE, CXREncoder, EHREncoder, _length_groups
from fusebench.plugins.pretraining import run_cxr_radiology, run_ehr_uni
from fusebench.registry import load_registry
from fusebench.specs import MethodSpec, ModelConfig
from fusebench.steps import build_optimizers, training_step
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY, PHENOTYPING
from fusebench.testing import check_method, make_batch, trainable_parameter_count
from tests.fixtures.packed_lstm import packed_lstm_features

REGISTRY = load_registry(strict=True)
BUILTIN = ("medfuse", "medfuse-ri", "early", "joint", "late", "mmtm", "daft", "uni-ehr", "uni-cxr")
TASKS = (IN_HOSPITAL_MORTALITY.name, PHENOTYPING.name)
IHM, PHENO = TASKS
IHM_SPEC = IN_HOSPITAL_MORTALITY


@cache
def built(method: str, task: str) -> nn.Module:
    """The method's model at the published default configuration, built once per test module."""
    spec = REGISTRY.method(method)
    torch.manual_seed(0)
    return spec.build(ModelConfig(task=task, num_classes=REGISTRY.task(task).num_classes))


def small_config(task: str, **changes) -> ModelConfig:
    return ModelConfig(task=task, num_classes=REGISTRY.task(task).num_classes, image_size=32,
                       **changes)


def test_every_builtin_method_is_registered_through_entry_points():
    assert set(BUILTIN) <= set(REGISTRY.methods)
    assert {CXR_STAGE, EHR_STAGE} <= set(REGISTRY.stages)
    assert REGISTRY.method("medfuse").distribution == "fusebench"


# drfuse's two ResNet-50 trunks make its conformance run take minutes of CPU: end to end
HEAVY = {"drfuse"}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", [
    pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name
    for name in sorted(REGISTRY.methods)])
def test_conformance(method, task):
    results = check_method(REGISTRY.method(method), REGISTRY, tasks=(task,))
    failures = [f"{r.name}: {r.reason}" for r in results if not r.passed]
    assert not failures
    assert {"build", "output-shape", "training-step", "state-dict-round-trip"} <= {
        r.name for r in results
    }


PUBLISHED_COUNTS = {
    "medfuse": (23_861_825, 23_874_137),
    "medfuse-ri": (23_861_825, 23_874_137),
    "joint": (22_284_865, 22_297_177),
    "early": (131_841, 144_153),
    "uni-ehr": (868_609, 874_777),
    "uni-cxr": (21_285_185, 21_297_497),
    "mmtm": (22_877_379, 22_920_459),
    "daft": (22_249_281, 9_083_993),
}


@pytest.mark.parametrize("method", sorted(PUBLISHED_COUNTS))
def test_trainable_parameters_match_the_published_configuration(method):
    counts = tuple(trainable_parameter_count(built(method, task)) for task in TASKS)
    assert counts == PUBLISHED_COUNTS[method]


def test_mmtm_optimizers_own_the_original_parameter_sets_without_its_defect():
    model = built("mmtm", IHM)
    optimizers = build_optimizers(REGISTRY, REGISTRY.method("mmtm"), model,
                                  REGISTRY.method("mmtm").hparams_for(IHM))
    owned = [{id(p) for group in o.param_groups for p in group["params"]} for o in optimizers]
    ehr, cxr, joint = owned
    transfer = {id(p) for p in model.mmtm.parameters()}
    assert joint == {id(p) for p in model.parameters() if p.requires_grad}
    assert ehr == {id(p) for m in (model.ehr, model.ehr_head) for p in m.parameters()} | transfer
    assert cxr == {id(p) for m in (model.cxr, model.cxr_head) for p in m.parameters()} | transfer
    assert not ehr & {id(p) for p in model.cxr.parameters()}  # the original's defect
    assert optimizers[0].param_groups[0]["lr"] == pytest.approx(4.355e-5)


def test_mmtm_training_step_returns_the_joint_loss_and_steps_all_three_optimizers():
    torch.manual_seed(0)
    method = REGISTRY.method("mmtm")
    # No dropout: the joint loss can then be recomputed from the parameters alone.
    model = method.build(small_config(IHM, dropout=0.0)).train()
    optimizers = build_optimizers(REGISTRY, method, model, {"lr": 1e-3})
    batch = make_batch(IHM_SPEC, 4, cxr_present="all")
    with torch.no_grad():
        joint_before = nn.functional.binary_cross_entropy_with_logits(
            model.head_logits(batch)["joint"], batch["y"])
    before = {head: [p.detach().clone() for p in params]
              for head, params in model.parameter_groups().items()}
    stepped, joint_at_its_step = [], []

    def recording(index, step):
        def wrapped(*args, **kwargs):
            stepped.append(index)
            if index == 2:  # the joint loss, on the parameters the EHR and CXR steps left
                with torch.no_grad():
                    joint_at_its_step.append(nn.functional.binary_cross_entropy_with_logits(
                        model.head_logits(batch)["joint"], batch["y"]))
            return step(*args, **kwargs)
        return wrapped

    for index, optimizer in enumerate(optimizers):
        optimizer.step = recording(index, optimizer.step)
    loss = training_step(REGISTRY, method, model, batch, optimizers)

    assert stepped == [0, 1, 2]  # EHR, CXR, joint: one step each, in the original's order
    for head, params in model.parameter_groups().items():
        assert any(not torch.equal(p, old) for p, old in zip(params, before[head], strict=True))
    assert loss.ndim == 0
    torch.testing.assert_close(loss, joint_at_its_step[0])
    assert not torch.allclose(loss, joint_before)  # the EHR and CXR steps changed it


def test_daft_does_not_build_cnn_layers_after_its_insertion_point():
    phenotyping, mortality = built("daft", PHENO), built("daft", IHM)
    assert not any("layer4" in name for name, _ in phenotyping.named_parameters())
    assert hasattr(phenotyping.cxr, "layer3") and not hasattr(phenotyping.cxr, "layer4")
    assert hasattr(mortality.cxr, "layer4")
    assert phenotyping.init_info["layer_after"] == 3


def test_ehr_encoder_equals_the_packed_lstm_in_value_and_gradient():
    torch.manual_seed(0)
    encoder = EHREncoder(76, 32, 2, dropout=0.0)
    lengths = torch.tensor([9, 1, 5, 9, 3, 2, 7])  # two length groups: [1, 2, 3, 5], [7, 9, 9]
    ehr = torch.randn(7, 9, 76)
    ehr[torch.arange(9) >= lengths[:, None]] = 7.0  # padding must not leak into the feature
    ours = encoder(ehr, lengths)
    ours.square().sum().backward()
    our_grads = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    reference = packed_lstm_features(encoder, ehr, lengths)
    reference.square().sum().backward()
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    for ours_grad, parameter in zip(our_grads, encoder.parameters(), strict=True):
        torch.testing.assert_close(ours_grad, parameter.grad, rtol=1e-4, atol=1e-6)


def test_length_groups_follow_length_and_keep_equal_lengths_together():
    groups = _length_groups(torch.tensor([9, 1, 5, 9, 3, 2, 7, 4, 8]), rows=4)
    assert [g.tolist() for g in groups] == [[1, 5, 4, 7], [2, 6, 8, 0, 3]]
    assert len(_length_groups(torch.full((32,), 48), rows=4)) == 1


def test_ehr_encoder_split_at_a_layer_is_zero_after_each_length_and_composes():
    torch.manual_seed(0)
    encoder = EHREncoder(76, 16, 2, dropout=0.0)
    lengths = torch.tensor([4, 2])
    ehr = torch.randn(2, 4, 76)
    sequence = encoder.sequence(ehr, lengths, stop=1)
    assert sequence[1, 2:].abs().sum() == 0 and sequence[1, :2].abs().min() > 0
    torch.testing.assert_close(encoder.features_from(sequence, lengths, start=1),
                               encoder(ehr, lengths))


def test_medfuse_encodes_only_the_present_images():
    model = REGISTRY.method("medfuse").build(small_config(IHM)).eval()
    seen = []
    model.cxr.conv1.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    with torch.no_grad():
        model(make_batch(IHM_SPEC, 5, cxr_present=[True, False, False, True, False]))
        model(make_batch(IHM_SPEC, 3, cxr_present="none"))
    assert seen == [2]


def test_medfuse_output_without_cxr_is_the_length_one_sequence():
    model = REGISTRY.method("medfuse-ri").build(small_config(IHM)).eval()
    batch = make_batch(IHM_SPEC, 2, cxr_present="none")
    with torch.no_grad():
        ehr = model.ehr(batch["ehr"], batch["ehr_lengths"])
        _, (hidden, _) = model.fusion(ehr[:, None, :])
        assert torch.allclose(model(batch), model.classifier(hidden[-1]), atol=1e-6)


def test_late_averages_probabilities_and_uses_uni_ehr_alone_without_cxr():
    model = REGISTRY.method("late").build(small_config(PHENO)).eval()
    batch = make_batch(PHENOTYPING, 4, cxr_present=[True, False, True, False])
    with torch.no_grad():
        ehr = torch.sigmoid(model.uni_ehr(batch))
        cxr = torch.sigmoid(model.uni_cxr(batch))
        probability = torch.sigmoid(model(batch))
    present = batch["has_cxr"]
    assert torch.allclose(probability[present], (ehr[present] + cxr[present]) / 2, atol=1e-5)
    assert torch.allclose(probability[~present], ehr[~present], atol=1e-5)


def test_late_trains_the_cxr_model_on_present_images_only():
    method = REGISTRY.method("late")
    model = method.build(small_config(IHM)).train()
    before = model.uni_cxr.head.weight.detach().clone()
    optimizers = build_optimizers(REGISTRY, method, model, {"lr": 1e-2})
    training_step(REGISTRY, method, model, make_batch(IHM_SPEC, 4, cxr_present="none"), optimizers)
    assert torch.equal(model.uni_cxr.head.weight, before)


def _random_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: torch.randn_like(value) if value.is_floating_point() else value
            for key, value in module.state_dict().items()}


@pytest.mark.parametrize(("method", "task"), [("medfuse", IHM), ("early", IHM), ("daft", PHENO)])
def test_builders_load_the_pretraining_stages_weights(method, task):
    config = small_config(task)
    ehr_state = _random_state(EHREncoder.from_config(config))
    cxr_state = _random_state(CXREncoder())
    model = REGISTRY.method(method).build(
        small_config(task, pretrained={EHR_STAGE: ehr_state, CXR_STAGE: cxr_state})
    )
    assert torch.equal(model.ehr.layers[1].weight_hh_l0, ehr_state["layers.1.weight_hh_l0"])
    assert torch.equal(model.cxr.conv1.weight, cxr_state["conv1.weight"])
    assert torch.equal(model.cxr.bn1.running_mean, cxr_state["bn1.running_mean"])
    assert model.init_info["ehr"] == f"pretrained:{EHR_STAGE}"
    assert model.init_info["cxr"] == f"pretrained:{CXR_STAGE}"


def test_without_stage_weights_the_model_records_its_initialisation():
    assert built("medfuse", IHM).init_info == {"ehr": "random", "cxr": "random"}


def test_imagenet_weights_come_from_a_local_file(tmp_path: Path):
    source = CXREncoder()
    weights = tmp_path / "resnet34.pth"
    full = {f"fc.{k}": v for k, v in nn.Linear(512, 1000).state_dict().items()}
    torch.save({**source.state_dict(), **full}, weights)
    model = REGISTRY.method("uni-cxr").build(small_config(IHM, cxr_weights=weights))
    assert torch.equal(model.cxr.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert model.init_info == {"cxr": "imagenet:resnet34.pth"}
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FusebenchError, match="bad.pth"):
        REGISTRY.method("uni-cxr").build(small_config(IHM, cxr_weights=tmp_path / "bad.pth"))


class FakeStageContext:
    """Records what a stage asks to fit and returns the model untrained."""

    def __init__(self, task) -> None:
        self.task, self.seed, self.device = task, 0, torch.device("cpu")
        self.model_config = ModelConfig(task=task.name, num_classes=task.num_classes, image_size=32)
        self.calls: list[SimpleNamespace] = []

    def fit(self, model, *, cohort, hparams):
        self.calls.append(SimpleNamespace(model=model, cohort=cohort, hparams=dict(hparams)))
        return model


def test_pretraining_stages_fit_on_their_cohorts_and_return_loadable_encoder_weights():
    context = FakeStageContext(PHENOTYPING)
    cxr_state, ehr_state = run_cxr_radiology(context), run_ehr_uni(context)
    radiology, uni_ehr = context.calls
    assert radiology.cohort == "radiology" and radiology.hparams["epochs"] == 100
    batch = make_batch(PHENOTYPING, 2, cxr_present="all")
    assert radiology.model(batch).shape == (2, 14)
    assert uni_ehr.cohort == "partial" and uni_ehr.hparams["lr"] == pytest.approx(5.3985e-4)
    model = REGISTRY.method("medfuse").build(
        small_config(PHENO, pretrained={CXR_STAGE: cxr_state, EHR_STAGE: ehr_state})
    )
    assert torch.equal(model.cxr.conv1.weight, cxr_state["conv1.weight"])


def test_stage_weights_of_the_wrong_shape_are_a_one_line_error():
    state = _random_state(EHREncoder(76, 64, 2, 0.3))
    with pytest.raises(FusebenchError, match="ehr-uni"):
        REGISTRY.method("joint").build(small_config(IHM, pretrained={EHR_STAGE: state}))


def test_recipe_hyperparameters_are_the_medfuse_2022_ones():
    medfuse = REGISTRY.method("medfuse")
    assert medfuse.hparams_for(PHENO)["lr"] == pytest.approx(7e-5)
    assert medfuse.hparams_for(IHM) | {"lr": 0} == {
        "lr": 0, "batch_size": 16, "epochs": 50, "betas": (0.9, 0.9), "patience": 15,
        "lr_patience": 10, "lr_factor": 0.5,
    }
    assert REGISTRY.method("uni-ehr").train_cohorts == ("partial", "paired")
    assert REGISTRY.method("medfuse").pretraining == (CXR_STAGE, EHR_STAGE)
    assert REGISTRY.method("medfuse-ri").pretraining == ()


def test_make_batch_follows_the_contract():
    batch = make_batch(PHENOTYPING, 3, cxr_present="some", seq_len=7, seed=3)
    assert batch["ehr"].shape == (3, 7, 76) and batch["y"].shape == (3, 25)
    assert batch["has_cxr"].tolist() == [True, False, True]
    assert batch["cxr"][1].abs().sum() == 0
    for row, length in enumerate(batch["ehr_lengths"].tolist()):
        assert batch["ehr"][row, length:].abs().sum() == 0
    assert batch["ehr_lengths"].max() == 7
    assert torch.equal(make_batch(PHENOTYPING, 3, seed=3, seq_len=7)["ehr"], batch["ehr"])


class UsesAbsentImages(nn.Module):
    """A non-conforming model: flat outputs that read the image of every stay."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, batch):
        return self.weight * batch["cxr"].mean(dim=(1, 2, 3))


def test_check_method_reports_what_is_broken():
    broken = MethodSpec(name="broken", description="-", reference="-", handles_missing_cxr=True,
                        default_train_cohort="partial", hparams={}, build=UsesAbsentImages)
    failed = {r.name for r in check_method(broken, REGISTRY, tasks=(IHM,)) if not r.passed}
    assert {"output-shape", "ignores-absent-cxr", "training-step"} <= failed
