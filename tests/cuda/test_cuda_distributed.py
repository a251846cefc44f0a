"""A 1-rank process group (NCCL on CUDA; gloo on the CPU in the normal suite), as ``torchrun
--nproc_per_node 1`` starts it: pretraining takes the distributed code paths (DDP, the all-gathered
queue, shuffle-BN's gather and broadcast) and trains as one process does; ``distributed.bn: sync``
converts both encoders to SyncBatchNorm."""

import collections

import pytest
import torch
import torch.distributed as dist

from cudaharness import devices, free_port
from leoclr_cli.config import load_protocol
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core import distributed
from leoclr_cli.errors import UserError
from leoclr_cli.methods import build_method
from leoclr_cli.workflows import pretrain
from leoclr_cli.core.checkpoint import seed_everything
from leoclr_cli.workflows.pretrain import run_pretrain
from test_amp import TINY

ONE = {**TINY, "model.bn_splits": 1, "data.shuffle": False, "amp": "off", "checkpoint_every": 1}
# the query encoder's update with the group against without it, relative to the update's size: on the CPU
# the same arithmetic; on CUDA cuDNN's nondeterministic backward kernels
UPDATE_RTOL = {"cpu": 1e-5, "cuda": 0.05}


def one_rank_group(monkeypatch):
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)


def encoder_q(path):
    state, _ = ckpt.load_tensors(path)
    return {k: v for k, v in state.items() if k.startswith("model.encoder_q.") and v.is_floating_point()}


@pytest.mark.parametrize("device", devices("cpu", "cuda"))
def test_one_rank_group_takes_the_distributed_paths_and_trains_as_one_process(device, tmp_path, monkeypatch):
    p = load_protocol("pretrain", None, {**ONE, "device": device})
    alone = run_pretrain(p, tmp_path / "alone", quiet=True)
    calls, seen = collections.Counter(), {}
    for name in ("all_gather", "broadcast", "all_reduce"):
        def counted(*args, _name=name, _fn=getattr(dist, name), **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)
        monkeypatch.setattr(dist, name, counted)
    wrap = distributed.wrap

    def spy(task, dev):
        seen.update(backend=dist.get_backend(), world=dist.get_world_size(), device=dev)
        model = wrap(task, dev)
        seen["ddp"] = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        return model

    monkeypatch.setattr(distributed, "wrap", spy)
    one_rank_group(monkeypatch)
    ranked = run_pretrain(p, tmp_path / "ranked", quiet=True)
    assert not distributed.active()  # the group is closed after the run
    assert seen["ddp"] and seen["world"] == 1 and ranked["world_size"] == 1
    assert seen["backend"] == ("nccl" if device == "cuda" else "gloo") and seen["device"].type == device
    # the queue's keys and shuffle-BN's batch went through the collectives at every step
    steps = ONE["data.builtin_train"] // ONE["optim.batch_size"]
    assert calls["all_gather"] >= 3 * steps and calls["broadcast"] >= 2 * steps and calls["all_reduce"] > 0
    seed_everything(p.seed)
    start = {f"model.{k}": v for k, v in build_method(p.model, p.method).state_dict().items()}
    a, b = encoder_q(ckpt.state_path(tmp_path / "ranked", 1)), encoder_q(ckpt.state_path(tmp_path / "alone", 1))
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in b) ** 0.5
    den = sum(float(((b[k] - start[k]) ** 2).sum()) for k in b) ** 0.5
    print(f"{device}: 1-rank group against one process, update error {num / den:.2e}")
    assert den > 0 and num / den < UPDATE_RTOL[device]
    assert ranked["final_loss"] == pytest.approx(alone["final_loss"], rel=UPDATE_RTOL[device])


@pytest.mark.parametrize("device", devices("cpu", "cuda"))
def test_sync_bn_converts_both_encoders_under_a_one_rank_group(device, tmp_path, monkeypatch):
    built = []

    def spy(*args):
        built.append(build_method(*args))
        return built[-1]

    monkeypatch.setattr(pretrain, "build_method", spy)
    one_rank_group(monkeypatch)
    p = load_protocol("pretrain", None, {**ONE, "device": device, "distributed.bn": "sync"})
    if device == "cpu":  # torch's SyncBatchNorm runs on GPUs only: one sentence, nothing trained
        with pytest.raises(UserError, match="distributed.bn 'sync' needs CUDA"):
            run_pretrain(p, tmp_path / "sync", quiet=True)
        assert not distributed.active()
        return
    result = run_pretrain(p, tmp_path / "sync", quiet=True)
    method = built[0]
    norms = [m for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert {n for n, m in method.named_modules() if m in norms} >= {"encoder_q.backbone.bn1", "encoder_k.backbone.bn1"}
    assert method.shuffle_bn is False  # SyncBN sees the whole batch: no shuffle
    assert result["final_loss"] > 0 and (tmp_path / "sync" / "backbone.safetensors").is_file()
