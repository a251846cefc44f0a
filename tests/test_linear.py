"""The linear-eval frozen-backbone check fails when any backbone tensor moves."""

import pytest
import torch

from leoclr_cli.evaluate.linear import LinearClassifier, check_unchanged
from leoclr_cli.core.nets import build_backbone


def test_check_unchanged_catches_a_moved_bn_buffer():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    check_unchanged(backbone, reference, "b.safetensors")  # untouched: passes
    backbone.train()  # what the classifier must never do: BN in train mode updates running stats
    backbone(torch.randn(4, 3, 32, 32))
    with pytest.raises(RuntimeError, match="running_mean of b.safetensors changed"):
        check_unchanged(backbone, reference, "b.safetensors")


def test_linear_classifier_keeps_backbone_in_eval_mode():
    model = LinearClassifier(build_backbone("resnet18"), 512, 10)
    model.train()
    assert model.training and not model.backbone.training
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
