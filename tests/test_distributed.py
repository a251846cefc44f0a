"""DDP: two gloo processes under torchrun train exactly like one process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core import distributed
from leoclr_cli.cli import main
from leoclr_cli.core.engine import read_metrics

# 16 images, global batch 8: 2 steps, fixed order; per-rank BN in 2 ranks = SplitBatchNorm(2) in one
# (well conditioned: CIFAR stem, so BN never sees 4 values alone; the DistributedSampler deals rank r the samples r, r+2, ..., as SplitBatchNorm's split r holds)
COMMON = ["--source", "builtin", "--method", "leoclr", "--arch", "resnet18", "--epochs", "1", "--batch-size", "8",
          "--lr", "0.03", "--device", "cpu", "--quiet",
          "--set", "data.builtin_train=16", "--set", "data.builtin_test=16", "--set", "data.shuffle=false",
          "--set", "augment.size=16", "--set", "augment.normalize=builtin", "--set", "model.dim=8", "--set", "model.cifar_stem=true",
          "--set", "model.shuffle_bn=false", "--set", "method.queue_size=32", "--set", "checkpoint_every=1",
          "--set", "optim.weight_decay=0.001"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "leoclr_cli",
         "pretrain", *COMMON, "--set", "model.bn_splits=1", *args], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_two_rank_ddp_equals_one_process(tmp_path):
    # also a mid-epoch checkpoint after step 1 (BN statistics and partial sums reduced over the ranks)
    ddp = torchrun("--set", "checkpoint_every_steps=1", "--set", "keep_checkpoints=4", "--set", "log.tensorboard=true",
                   "--out", str(tmp_path / "ddp"))
    # rank 0 alone reports, and states the global batch and the lr rule; rank 0 alone writes TensorBoard events
    assert ddp.stdout.count("pretrained leoclr") == 1
    assert len(list((tmp_path / "ddp" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "distributed: 2 ranks x 4 = global batch 8; lr 0.03 as in the protocol" in ddp.stderr
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", *COMMON, "--set", "model.bn_splits=2", "--threads", "1", "--out", str(tmp_path / "one")])
    assert exc.value.code in (0, None)

    a, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "ddp", 1))
    b, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "one", 1))
    assert a.keys() == b.keys()
    weights = [k for k in a if k.startswith("model.encoder") and a[k].is_floating_point()]
    diff = max((a[k] - b[k]).abs().max().item() for k in weights)
    print(f"max |DDP - one process| over {len(weights)} tensors: {diff:.3g}")
    assert diff < 1e-4
    moved = (a["model.encoder_q.backbone.conv1.weight"] - a["model.encoder_k.backbone.conv1.weight"]).abs().max()
    assert moved > 1e-3  # the query encoder really trained away from its EMA copy
    # the queue: the same 32 keys (16 per step: k1 and k2 of both ranks), in gathered order
    qa, qb = a["model.queue"].T, b["model.queue"].T
    assert torch.equal(a["model.queue_ptr"], b["model.queue_ptr"])
    perm = torch.cdist(qa, qb).argmin(dim=1)
    assert sorted(perm.tolist()) == list(range(qa.shape[0]))  # a one-to-one matching
    assert (qa - qb[perm]).abs().max() < 1e-4
    # step 1 wrote rank 0's (k1, k2) of samples 0, 2, 4, 6, then rank 1's of samples 1, 3, 5, 7
    assert perm[:8].tolist() == [0, 2, 4, 6, 8, 10, 12, 14] and perm[8:12].tolist() == [1, 3, 5, 7]
    # the optimizer state too (momentum buffers): the same updates, up to float32 summation order (the
    # ranks' all-reduce against one process's batch; 0.08-0.4% of a buffer's largest value measured on
    # 2-core CPUs); summed instead of averaged gradients would be off by 100%
    mom = [k for k in a if k.startswith("optim") and a[k].is_floating_point() and a[k].dim() > 0]
    assert mom and max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in mom) < 1e-2

    # resumed from the mid-epoch checkpoint, each rank skips the batch it had consumed from its own
    # shard and the run ends exactly as the uninterrupted one, metrics included
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ddp", resumed)
    ckpt.state_path(resumed, 1).unlink()
    assert ckpt.latest_state(resumed) == ckpt.state_path(resumed, 0, 1)
    torchrun("--set", "checkpoint_every_steps=1", "--set", "keep_checkpoints=4", "--set", "log.tensorboard=true",
             "--out", str(resumed), "--resume", "auto")
    c, _ = ckpt.load_tensors(ckpt.state_path(resumed, 1))
    assert c.keys() == a.keys()
    assert max((c[k].double() - a[k].double()).abs().max().item() for k in a if k.startswith(("model", "optim"))) < 1e-6
    m_a, m_c = read_metrics(tmp_path / "ddp" / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert len(m_a) == len(m_c) == 1 and m_c[0]["loss"] == pytest.approx(m_a[0]["loss"], rel=1e-6)

def test_one_process_is_the_identity(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "SLURM_NTASKS", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.env_world() == (0, 1, 0)
    x = torch.arange(12.0).view(6, 2)
    assert torch.equal(distributed.all_gather(x), x)
    shuffled, undo = distributed.batch_shuffle(x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(distributed.batch_unshuffle(shuffled, undo), x)
    # SLURM's variables stand in for torchrun's when MASTER_ADDR is set
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed.env_world() == (0, 1, 0)
    monkeypatch.setenv("MASTER_ADDR", "node1")
    assert distributed.env_world() == (5, 8, 1)


def test_global_batch_must_divide(tmp_path, capsys):
    from leoclr_cli.workflows.pretrain import scale_out
    from leoclr_cli.errors import UserError
    from leoclr_cli.config import load_protocol

    p = load_protocol("pretrain", None, {"optim.batch_size": 10, "model.bn_splits": 1})
    with pytest.raises(UserError, match="multiple of the 3 ranks"):
        scale_out(p, 3)
    local, lr, text = scale_out(load_protocol("pretrain", None, {"optim.batch_size": 64, "optim.lr": 0.03,
                                                                 "distributed.batch_size": "per_rank"}), 4)
    assert (local, lr) == (64, pytest.approx(0.12)) and "linear scaling" in text



def two_ranks(tmp_path, source: str) -> list[dict]:
    """Run the Python ``source`` as two gloo ranks under torchrun; each calls ``report(dict)`` once.

    Each rank writes its own file: two processes printing to one pipe can interleave their lines.
    """
    script = tmp_path / "two_ranks.py"
    script.write_text(REPORT + source)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "REPORT_DIR": str(tmp_path),
           "TESTS_DIR": os.path.dirname(os.path.abspath(__file__))}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


REPORT = """
import json, os, pathlib
def report(row):
    pathlib.Path(os.environ["REPORT_DIR"], f"rank{row['rank']}.json").write_text(json.dumps(row))
"""


FLAG_SCRIPT = """
import torch
from leoclr_cli.core import distributed
rank, world, _ = distributed.init_from_env(torch.device("cpu"))
flag = distributed.HostFlag()
# rank 1 raises its flag at step 2 only; rank 0 never does
seen = [flag.exchange(15 if (rank == 1 and step == 2) else 0) for step in range(5)]
seen.append(flag.drain())
report({"rank": rank, "seen": seen})
distributed.shutdown()
"""


def test_host_flag_reaches_every_rank_one_step_late(tmp_path):
    seen = {r["rank"]: r["seen"] for r in two_ranks(tmp_path, FLAG_SCRIPT)}
    # the value raised at step 2 is read by both ranks at step 3; nothing is left in flight
    assert seen[0] == seen[1] == [0, 0, 0, 15, 0, 0]
    # one process: the value itself, at once
    assert distributed.HostFlag().exchange(7) == 7


BOXES_SCRIPT = """
import torch
from leoclr_cli.core import distributed
from leoclr_cli.data.builtin import BuiltinTextures
from leoclr_cli.data.ccrop import localise
from leoclr_cli.data.views import AugmentedDataset, eval_transform
from leoclr_cli.core.nets import build_backbone
from leoclr_cli.workflows.pretrain import localise_shared
rank, world, dev = distributed.init_from_env(torch.device("cpu"))
torch.manual_seed(0)
backbone = build_backbone("resnet18").eval()
plain = AugmentedDataset(BuiltinTextures("train", 13), eval_transform(64, 64, "none", "builtin"))
shared = localise_shared(backbone, plain, 4, 0, dev, 0.8)
whole = torch.utils.data.DataLoader(plain, batch_size=4)
alone = localise(backbone, whole, dev, 0.8)
report({"rank": rank, "n": len(shared), "equal": bool(torch.equal(shared, alone)),
        "distinct": len({tuple(b) for b in alone.tolist()})})
distributed.shutdown()
"""


def test_contrastive_crop_boxes_are_shared_across_ranks(tmp_path):
    # each rank localises every other image (13: shares of 7 and 6, padded); the gathered boxes are
    # those of one process over all images, in dataset order, on both ranks
    rows = two_ranks(tmp_path, BOXES_SCRIPT)
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert all(r["n"] == 13 and r["equal"] for r in rows)
    assert rows[0]["distinct"] > 8  # the boxes differ from image to image, so the order is checked


def e2e_case(name: str):
    """A ``name`` method (simclr / leoclr-e2e) whose encoder is one seeded linear layer, and its views
    of a global batch of 8 (the same in every process)."""
    from leoclr_cli.methods import build_method
    from leoclr_cli.config import MethodConfig, ModelConfig

    torch.manual_seed(0)
    views = [torch.randn(8, 6) for _ in range(3 if name == "leoclr-e2e" else 2)]
    m = build_method(ModelConfig(arch="resnet18", dim=4, bn_splits=1, shuffle_bn=False),
                     MethodConfig(name=name, temperature=0.5))
    m.encoder_q = torch.nn.Linear(6, 4)
    return m, views


E2E_SCRIPT = """
import sys, torch
sys.path.insert(0, os.environ["TESTS_DIR"])
from leoclr_cli.core import distributed
from test_distributed import e2e_case
rank, world, _ = distributed.init_from_env(torch.device("cpu"))
out = {"rank": rank}
for name in ("simclr", "leoclr-e2e"):
    m, views = e2e_case(name)
    loss, _ = m([v[rank * 4:(rank + 1) * 4] for v in views])  # this rank's half of the global batch of 8
    loss.backward()
    grad = m.encoder_q.weight.grad
    distributed.all_reduce_sum(grad)  # what DDP does, then / world
    distributed.all_reduce_sum(loss := loss.detach())
    out[name] = {"loss": loss.item() / world, "grad": (grad / world).tolist()}
report(out)
distributed.shutdown()
"""


def test_end_to_end_negatives_span_the_global_batch(tmp_path):
    # two ranks of 4 images each: the same loss and the same averaged gradient as one process over
    # all 8 (each rank's anchors meet the other rank's images as negatives, and their gradient
    # flows back to the rank that embedded them)
    rows = two_ranks(tmp_path, E2E_SCRIPT)
    for name in ("simclr", "leoclr-e2e"):
        m, views = e2e_case(name)
        loss, _ = m(views)
        loss.backward()
        local, _ = m([v[:4] for v in views])  # what a rank alone would compute: a different loss
        for row in rows:
            got = row[name]
            assert got["loss"] == pytest.approx(loss.item(), rel=1e-5), name
            assert torch.allclose(torch.tensor(got["grad"]), m.encoder_q.weight.grad, atol=1e-6), name
        assert abs(local.item() - loss.item()) > 1e-3
