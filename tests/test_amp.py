"""Mixed precision through the one engine: dtype choice, a bf16 and an fp16 (scaled) run on the CPU."""

import math

import pytest
import torch

from leoclr_cli import checkpoint as ckpt
from leoclr_cli.engine import amp_dtype
from leoclr_cli.pretrain import run_pretrain
from leoclr_cli.schema import load_protocol

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
