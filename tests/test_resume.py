"""Resume: 2 epochs straight, or 1 then resume from the epoch-1 checkpoint, end bit-identical."""

import shutil

import torch

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.workflows.pretrain import run_pretrain
from leoclr_cli.config import load_protocol

OVERRIDES = {"augment.size": 32, "augment.blur": False, "augment.normalize": "builtin", "data.builtin_train": 64, "data.builtin_test": 32, "method.queue_size": 48, "model.arch": "resnet18",
             "model.dim": 16, "model.bn_splits": 2, "optim.batch_size": 16, "optim.epochs": 2, "checkpoint_every": 1,
             "device": "cpu"}


def straight_and_resumed(p, tmp_path):
    """Pretrain ``p`` (2 epochs) straight, and again as a run killed after epoch 1 (only the epoch-1
    checkpoint survived) and resumed; returns both runs' epoch-2 states, after checking they are equal
    tensor for tensor."""
    straight = tmp_path / "straight"
    run_pretrain(p, straight, quiet=True)
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt.state_path(straight, 1), ckpt.state_path(resumed, 1))
    shutil.copy(straight / "protocol.yaml", resumed / "protocol.yaml")
    run_pretrain(p, resumed, resume="auto", quiet=True)
    a, _ = ckpt.load_tensors(ckpt.state_path(straight, 2))
    b, _ = ckpt.load_tensors(ckpt.state_path(resumed, 2))
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == []
    return a, b


def test_resume_is_bit_identical(tmp_path):
    p = load_protocol("pretrain", None, OVERRIDES)
    straight = tmp_path / "straight"
    a, _ = straight_and_resumed(p, tmp_path)
    assert "model.queue" in a and "model.encoder_k.backbone.conv1.weight" in a
    # and the run really trained in epoch 2 (the checkpoints differ between epochs)
    e1, _ = ckpt.load_tensors(ckpt.state_path(straight, 1)) if ckpt.state_path(straight, 1).exists() else (None, None)
    assert e1 is None or not torch.equal(e1["model.queue"], a["model.queue"])


def test_resume_refuses_a_different_protocol(tmp_path):
    import pytest

    from leoclr_cli.errors import UserError

    p = load_protocol("pretrain", None, {**OVERRIDES, "optim.epochs": 1})
    run_pretrain(p, tmp_path / "r", quiet=True)
    other = load_protocol("pretrain", None, {**OVERRIDES, "optim.epochs": 1, "optim.lr": 0.5})
    with pytest.raises(UserError, match="optim.lr"):
        run_pretrain(other, tmp_path / "r", resume="auto", quiet=True)
