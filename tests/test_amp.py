"""The engine's speed options on the CPU: mixed precision (dtype choice, a bf16 and an fp16 scaled run) and
torch.compile of the encoders."""

import math

import pytest
import torch

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core.engine import amp_dtype
from leoclr_cli.workflows.pretrain import run_pretrain
from leoclr_cli.config import load_protocol

TINY = {"augment.size": 32, "augment.blur": False, "augment.normalize": "builtin", "data.builtin_train": 32,
        "data.builtin_test": 16, "method.queue_size": 32, "model.arch": "resnet18", "model.dim": 16,
        "model.bn_splits": 2, "optim.batch_size": 16, "optim.epochs": 1, "device": "cpu"}


def test_amp_choice():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16 and amp_dtype("fp16", cpu) == torch.float16


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_pretraining_runs_and_keeps_fp32_state(tmp_path, mode):
    p = load_protocol("pretrain", None, {**TINY, "amp": mode})
    result = run_pretrain(p, tmp_path / mode, quiet=True)
    assert math.isfinite(result["final_loss"]) and result["final_loss"] > 0
    state, meta = ckpt.load_tensors(ckpt.state_path(tmp_path / mode, 1))
    assert state["model.queue"].dtype == torch.float32  # keys are stored in full precision
    assert state["model.encoder_q.backbone.conv1.weight"].dtype == torch.float32
    assert ("scaler" in meta["extra"]) == (mode == "fp16")  # the fp16 loss scale is resumable state


def test_compiled_encoders_train_like_eager_ones(tmp_path, capsys, monkeypatch):
    # the real inductor backend on the CPU (about half a minute of compiling): the same state keys,
    # the same weights to float tolerance, and both encoders really went through torch.compile
    from leoclr_cli.workflows import pretrain

    small = {**TINY, "augment.size": 16, "data.builtin_train": 16, "optim.batch_size": 8, "model.bn_splits": 1,
             "model.cifar_stem": True}
    eager = run_pretrain(load_protocol("pretrain", None, small), tmp_path / "eager", quiet=True)
    compiled_calls = []
    original = pretrain.compile_encoders

    def spy(method, mode):
        names = original(method, mode)
        compiled_calls.extend((n, getattr(method, n)._compiled_call_impl is not None) for n in names)
        return names

    monkeypatch.setattr(pretrain, "compile_encoders", spy)
    result = run_pretrain(load_protocol("pretrain", None, {**small, "compile": "default"}), tmp_path / "compiled")
    assert compiled_calls == [("encoder_q", True), ("encoder_k", True)]
    said = " ".join(capsys.readouterr().err.split())
    assert "compile: encoder_q, encoder_k with torch.compile (mode default)" in said
    a, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "compiled", 1))
    b, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "eager", 1))
    assert a.keys() == b.keys()  # nn.Module.compile keeps the parameter names
    weights = [k for k in a if k.startswith("model.encoder") and a[k].is_floating_point()]
    assert max((a[k] - b[k]).abs().max().item() for k in weights) < 2e-3
    assert result["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-3)
    moved = (a["model.encoder_q.backbone.conv1.weight"] - a["model.encoder_k.backbone.conv1.weight"]).abs().max()
    assert moved > 1e-3
