"""A checkpoint written on one device resumes on another (CUDA -> CPU and CPU -> CUDA; CPU -> CPU in the
normal suite): the model and optimizer tensors arrive bit-exactly, on the resuming device."""

import pytest
import torch

from cudaharness import devices
from leoclr_cli.config import load_protocol
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core.engine import Engine
from leoclr_cli.workflows.pretrain import run_pretrain
from test_amp import TINY

PAIRS = [pytest.param("cpu", "cpu", id="cpu-cpu")] + [
    pytest.param(a, b, marks=pytest.mark.cuda, id=f"{a}-{b}") for a, b in (("cuda", "cpu"), ("cpu", "cuda"))]


@pytest.mark.parametrize("written, resumed", PAIRS)
def test_checkpoint_resumes_on_another_device_bit_exactly(written, resumed, tmp_path, monkeypatch):
    over = {**TINY, "optim.epochs": 2, "checkpoint_every": 1}
    run = tmp_path / "run"
    run_pretrain(load_protocol("pretrain", None, {**over, "device": written}), run, quiet=True)
    whole, _ = ckpt.load_tensors(ckpt.state_path(run, 2))
    saved, _ = ckpt.load_tensors(ckpt.state_path(run, 1))
    ckpt.state_path(run, 2).unlink()

    loaded = {}
    original = Engine._resume

    def spy(self, path):
        out = original(self, path)
        loaded.update({f"model.{k}": v.clone() for k, v in self.task.state_dict().items()})
        for idx, st in self.optimizer.state_dict()["state"].items():
            loaded.update({f"optim.{idx}.{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
        return out

    monkeypatch.setattr(Engine, "_resume", spy)
    result = run_pretrain(load_protocol("pretrain", None, {**over, "device": resumed}), run, resume="auto", quiet=True)
    keys = [k for k in saved if k.startswith(("model.", "optim."))]
    assert keys and set(keys) == set(loaded)
    for k in keys:
        assert loaded[k].device.type == resumed, k
        assert loaded[k].dtype == saved[k].dtype and torch.equal(loaded[k].cpu(), saved[k]), k
    assert result["final_loss"] > 0 and ckpt.state_path(run, 2).is_file()
    if written == resumed == "cpu":  # on one CPU the resumed run ends as the uninterrupted one did
        again, _ = ckpt.load_tensors(ckpt.state_path(run, 2))
        assert all(torch.equal(again[k], whole[k]) for k in whole if k.startswith(("model.", "optim.")))
