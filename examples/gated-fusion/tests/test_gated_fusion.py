"""Tests of the gated-fusion plugin: fusebench's conformance suite and the missing-CXR rule.

The conformance test needs the package installed (``pip install -e .``): it finds the method
through the entry point, the way ``fusebench`` does.
"""

import torch
from fusebench_gated_fusion.method import HPARAMS, GatedFusion

from fusebench.specs import ModelConfig
from fusebench.tasks.builtin import PHENOTYPING
from fusebench.testing import assert_conforms, make_batch


def build_model() -> GatedFusion:
    torch.manual_seed(0)
    config = ModelConfig(task=PHENOTYPING.name, num_classes=PHENOTYPING.num_classes,
                         image_size=32, hparams=HPARAMS["*"])
    return GatedFusion(config).eval()


def test_gated_fusion_conforms_to_the_fusebench_contract():
    assert_conforms("gated-fusion")


def test_the_cnn_sees_only_the_present_images():
    model = build_model()
    seen_batch_sizes = []
    model.cxr.register_forward_hook(lambda module, args, output: seen_batch_sizes.append(len(args[0])))
    batch = make_batch(PHENOTYPING, 6, cxr_present=[True, False, False, True, False, False])
    model(batch)
    assert seen_batch_sizes == [2]
    model(make_batch(PHENOTYPING, 3, cxr_present="none"))
    assert seen_batch_sizes == [2]  # no image at all: the CNN is not run


def test_a_stay_without_image_is_scored_on_the_ehr_alone_and_gates_stay_within_0_and_1():
    model = build_model()
    batch = make_batch(PHENOTYPING, 4, cxr_present="some")  # stays 0 and 2 have an image
    with torch.no_grad():
        fused, gates = model.fuse(batch)
        ehr_only = model.fusion.ehr_only(model.encode_ehr(batch["ehr"], batch["ehr_lengths"]))
    absent = ~batch["has_cxr"]
    assert torch.equal(fused[absent], ehr_only[absent])
    assert torch.equal(gates[absent], torch.ones_like(gates[absent]))
    present_gates = gates[batch["has_cxr"]]
    assert ((present_gates > 0) & (present_gates < 1)).all()
    assert not torch.equal(fused[batch["has_cxr"]], ehr_only[batch["has_cxr"]])
