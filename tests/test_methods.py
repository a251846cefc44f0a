"""Losses against hand computations, gradient flow, momentum update, queue order and policy."""

import math

import pytest
import torch
import torch.nn.functional as F

from leoclr_cli.methods import LeOCLR, MoCoV2
from leoclr_cli.methods.base import top1_positive
from leoclr_cli.methods.momentum import info_nce
from leoclr_cli.config import MethodConfig, ModelConfig


def hand_info_nce(q, k, queue, t):
    """-log( exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.n_j/t)) ), averaged over rows, in plain Python."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[:, j]) / t) for j in range(queue.shape[1]))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_info_nce_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    k = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    queue = F.normalize(torch.randn(4, 5, generator=g), dim=0)
    loss, logits = info_nce(q, k, queue, 0.2)
    assert logits.shape == (3, 6)
    assert loss.item() == pytest.approx(hand_info_nce(q, k, queue, 0.2), rel=1e-5)


class FixedEncoder(torch.nn.Module):
    """An 'encoder' that returns a fixed embedding per image id (pixel [0,0,0]) so the loss is known."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def _with_fixed_encoders(method, table):
    method.encoder_q = FixedEncoder(table)
    method.encoder_k = FixedEncoder(table)
    for p in method.encoder_k.parameters():
        p.requires_grad_(False)
    return method


def _ids(*ids):
    x = torch.zeros(len(ids), 3, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32)
    return x


@pytest.mark.parametrize("enqueue", ["both", "k1"])
def test_leoclr_loss_is_sum_of_two_infonce_terms_against_the_original(enqueue):
    torch.manual_seed(0)
    table = torch.randn(6, 4)
    m = LeOCLR(ModelConfig(arch="resnet18", dim=4, bn_splits=1, shuffle_bn=False),
               MethodConfig(name="leoclr", queue_size=8, momentum=0.0, temperature=0.5, enqueue=enqueue))
    _with_fixed_encoders(m, table)
    queue0 = m.queue.clone()
    x, x1, x2 = _ids(0, 1), _ids(2, 3), _ids(4, 5)  # original ids 0,1; crops 2,3 and 4,5
    loss, _ = m([x, x1, x2])
    e = F.normalize(table, dim=1)
    expected = hand_info_nce(e[[0, 1]], e[[2, 3]], queue0, 0.5) + hand_info_nce(e[[0, 1]], e[[4, 5]], queue0, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # enqueue policy: both -> k1 then k2 (4 keys), k1 -> only the first crop's keys (2 keys)
    written = [2, 3, 4, 5] if enqueue == "both" else [2, 3]
    assert int(m.queue_ptr) == len(written)
    torch.testing.assert_close(m.queue[:, : len(written)], e[written].T)
    torch.testing.assert_close(m.queue[:, len(written):], queue0[:, len(written):])


def test_mocov2_loss_and_enqueue():
    torch.manual_seed(0)
    table = torch.randn(4, 4)
    m = MoCoV2(ModelConfig(arch="resnet18", dim=4, bn_splits=1, shuffle_bn=False),
               MethodConfig(name="mocov2", queue_size=6, momentum=0.0, temperature=0.2))
    _with_fixed_encoders(m, table)
    queue0 = m.queue.clone()
    loss, _ = m([_ids(0, 1), _ids(2, 3)])
    e = F.normalize(table, dim=1)
    assert loss.item() == pytest.approx(hand_info_nce(e[[0, 1]], e[[2, 3]], queue0, 0.2), rel=1e-5)
    torch.testing.assert_close(m.queue[:, :2], e[[2, 3]].T)


def test_queue_is_a_fifo_ring():
    m = MoCoV2(ModelConfig(arch="resnet18", dim=2, bn_splits=1), MethodConfig(name="mocov2", queue_size=5))
    batches = [torch.full((2, 2), float(i)) for i in range(1, 5)]  # 8 keys through a ring of 5
    for b in batches:
        m.enqueue(b)
    # written in order 1,1,2,2,3 | 3,4,4 wraps over the first three slots
    assert m.queue[0].tolist() == [3.0, 4.0, 4.0, 2.0, 3.0]
    assert int(m.queue_ptr) == 8 % 5


def test_gradients_reach_only_the_query_encoder(tiny_model_cfg):
    torch.manual_seed(0)
    for cls, name in ((LeOCLR, "leoclr"), (MoCoV2, "mocov2")):
        m = cls(tiny_model_cfg, MethodConfig(name=name, queue_size=16))
        views = [torch.randn(4, 3, 32, 32) for _ in cls.views]
        loss, _ = m(views)
        loss.backward()
        assert all(p.grad is None for p in m.encoder_k.parameters())
        assert not m.queue.requires_grad
        grads = [p.grad for p in m.encoder_q.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_momentum_update_formula(tiny_model_cfg):
    torch.manual_seed(0)
    m = LeOCLR(tiny_model_cfg, MethodConfig(queue_size=16, momentum=0.9))
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(1.0)
    before_k = [p.clone() for p in m.encoder_k.parameters()]
    q = [p.clone() for p in m.encoder_q.parameters()]
    m.momentum_update()
    for pk, bk, pq in zip(m.encoder_k.parameters(), before_k, q):
        torch.testing.assert_close(pk, 0.9 * bk + 0.1 * pq)


def test_leoclr_forward_updates_key_encoder_before_keys(tiny_model_cfg):
    """The momentum update happens in the step (before the key forward), once per step."""
    torch.manual_seed(0)
    m = LeOCLR(tiny_model_cfg, MethodConfig(queue_size=16, momentum=0.5))
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.mul_(2.0)
    k_before = next(m.encoder_k.parameters()).clone()
    q_now = next(m.encoder_q.parameters()).clone()
    m([torch.randn(4, 3, 32, 32) for _ in range(3)])
    torch.testing.assert_close(next(m.encoder_k.parameters()), 0.5 * k_before + 0.5 * q_now)


def test_split_batchnorm_normalises_each_split_separately():
    from leoclr_cli.core.nets import SplitBatchNorm

    bn = SplitBatchNorm(3, num_splits=2)
    x = torch.randn(8, 3, 4, 4)
    x[1::2] += 10.0  # samples are interleaved across splits: (n/s, s*c) grouping takes every 2nd sample
    y = bn(x)
    groups = y.view(4, 2, 3, 4, 4)
    for s in range(2):
        g = groups[:, s]
        assert g.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    # running stats average the splits' statistics
    assert bn.running_mean.mean() > 0.4
    bn.eval()
    torch.testing.assert_close(bn(x), torch.nn.functional.batch_norm(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))


def test_split_batchnorm_accepts_channels_last_input():
    from leoclr_cli.core.nets import SplitBatchNorm

    bn = SplitBatchNorm(3, num_splits=2)
    x = torch.randn(8, 3, 4, 4)
    ref = bn(x)
    bn2 = SplitBatchNorm(3, num_splits=2)
    torch.testing.assert_close(bn2(x.contiguous(memory_format=torch.channels_last)), ref)


def test_a_syncbn_method_does_not_shuffle_the_key_batch(monkeypatch):
    """distributed.bn sync: the method makes every BN of both encoders a SyncBatchNorm and its key
    forward stops shuffling (SyncBN sees the global batch); with per-rank BN it shuffles."""
    from leoclr_cli.core import distributed

    shuffled, real = [], distributed.batch_shuffle
    monkeypatch.setattr(distributed, "batch_shuffle", lambda x: shuffled.append(len(x)) or real(x))
    cfg, x = ModelConfig(arch="resnet18", dim=4, bn_splits=1, shuffle_bn=True), torch.randn(4, 3, 16, 16)
    per_rank = MoCoV2(cfg, MethodConfig(name="mocov2", queue_size=8))
    per_rank.encode_keys(x)
    assert shuffled == [4]

    synced = MoCoV2(cfg, MethodConfig(name="mocov2", queue_size=8))
    synced.use_sync_batchnorm(torch.device("cuda"))  # the device is only checked; the conversion runs anywhere
    bns = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, torch.nn.SyncBatchNorm) for m in bns)
    assert {n.split(".")[0] for n, m in synced.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)} == {
        "encoder_q", "encoder_k"}
    shuffled.clear()
    synced.encode_keys(x)  # without a process group SyncBatchNorm normalises as BatchNorm does
    assert shuffled == []


def test_the_pretraining_acc_is_a_percent_like_every_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [1.0, 0.5]])  # the positive wins in 3 of 4 rows
    assert float(top1_positive(logits)) == pytest.approx(75.0)
