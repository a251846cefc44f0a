"""LeOCLR's multi-crop (augment.local_crops): the local views from the one augmentation spec and its three
executors, the loss (one InfoNCE term per crop toward the original, averaged over the 2 + N crops and
scaled by 2) against a hand computation, what is enqueued, local_crops 0 equal to the method without the
feature bit for bit, the methods that refuse it; and the optimizer field (SGD exactly MoCo's, AdamW with
norm and bias parameters out of weight decay, warm-up then cosine)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cliutil import error_line, run
from leoclr_cli.config import AugmentConfig, MethodConfig, ModelConfig, OptimConfig, default_local_size, load_protocol
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.data import gpu_views as gv
from leoclr_cli.data.spec import ViewSpec
from leoclr_cli.data.views import AugmentedDataset, PILViews, ViewMaker
from leoclr_cli.methods import METHODS, LeOCLR, build_method
from leoclr_cli.methods.base import top1_positive
from leoclr_cli.methods.momentum import MomentumContrast
from leoclr_cli.workflows.pretrain import build_optimizer, lr_schedule, run_pretrain
from test_gpu_views import raw
from test_methods import _ids, _with_fixed_encoders, hand_info_nce

KINDS = ("original", "crop", "crop")


def test_local_views_come_from_the_spec_after_the_others():
    assert [default_local_size(s) for s in (224, 32, 96)] == [96, 12, 40]
    assert default_local_size(64, multiple=8) == 24
    rng = np.random.default_rng(0)
    images = [(Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)), 0) for _ in range(6)]
    plain = AugmentedDataset(images, ViewMaker(AugmentConfig(size=32, normalize="builtin"), KINDS), seed=3)
    cfg = AugmentConfig(size=32, normalize="builtin", local_crops=3)
    multi = AugmentedDataset(images, ViewMaker(cfg, (*KINDS, *("local",) * 3)), seed=3)
    for i in range(len(images)):
        a, b = plain[i][0], multi[i][0]
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # the global views are untouched
        assert [tuple(v.shape) for v in b[3:]] == [(3, 12, 12)] * 3
    draws = [ViewSpec(cfg, ("local",)).draw("local", 48, 40) for _ in range(400)]
    areas = np.array([p.height * p.width / (48 * 40) for p in draws])
    assert all(p.local for p in draws) and 0.04 < areas.min() and areas.max() < 0.45  # local_scale (0.05, 0.4)


def test_the_three_executors_make_a_local_view_alike():
    cfg = AugmentConfig(size=32, normalize="builtin", hue="fused", decode_size=64, local_crops=1, local_size=16)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(70, 180, (5, 5, 3), dtype=np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
    spec = ViewSpec(cfg, ("local",))
    torch.manual_seed(0)
    records = [spec.draw("local", 64, 64) for _ in range(6)]
    decoded, _ = gv.DecodeAndDraw(cfg, ("local",))(img)
    rows = torch.tensor([[gv.param_row(p, 64, 64)] for p in records])
    (tensor,) = gv.TensorViews(cfg, ("local",))((decoded.expand(len(records), -1, -1, -1), rows))
    assert tensor.shape == (6, 3, 16, 16)
    for i, p in enumerate(records):
        a, b, c = (raw(v, cfg) for v in (PILViews(cfg)(img, p), gv.DirectViews(cfg)(img, p), tensor[i]))
        assert a.shape[-2:] == b.shape[-2:] == (16, 16)
        for other in (b, c):
            assert (a - other).abs().max() < 0.06 and (a - other).abs().mean() < 0.01, p


@pytest.mark.parametrize("enqueue", ["both", "k1"])
def test_each_local_crop_is_one_more_term_toward_the_original(enqueue):
    torch.manual_seed(0)
    table = torch.randn(10, 4)
    m = build_method(ModelConfig(arch="resnet18", dim=4, bn_splits=1, shuffle_bn=False),
                     MethodConfig(name="leoclr", queue_size=12, momentum=0.0, temperature=0.5, enqueue=enqueue), 3)
    assert m.views == (*KINDS, "local", "local", "local")
    _with_fixed_encoders(m, table)
    queue0 = m.queue.clone()
    views = [_ids(0, 1), _ids(2, 3), _ids(4, 5), _ids(6, 7), _ids(8, 9), _ids(6, 9)]
    loss, stats = m(views)
    e = F.normalize(table, dim=1)
    terms = [hand_info_nce(e[[0, 1]], e[ids], queue0, 0.5) for ids in ([2, 3], [4, 5], [6, 7], [8, 9], [6, 9])]
    assert loss.item() == pytest.approx(2 * sum(terms) / 5, rel=1e-5)  # 2/(2+N) x the sum: eq. 3's scale
    assert stats["loss_local"].item() == pytest.approx(sum(terms[2:]) / 3, rel=1e-5)
    # only the crop keys are enqueued, as without local crops
    written = [2, 3, 4, 5] if enqueue == "both" else [2, 3]
    assert int(m.queue_ptr) == len(written)
    torch.testing.assert_close(m.queue[:, : len(written)], e[written].T)
    torch.testing.assert_close(m.queue[:, len(written):], queue0[:, len(written):])


class TodaysLeOCLR(MomentumContrast):
    """LeOCLR's forward as it was before local crops existed (eq. 3, copied): the reference of bit-identity."""

    views = KINDS

    def forward(self, views, labels=None):
        x, x1, x2 = views
        h, q = self.query(x)
        with torch.no_grad():
            self.momentum_update()
            k1, k2 = self.encode_keys(x1), self.encode_keys(x2)
        loss1, logits1 = self.contrast(q, k1)
        loss2, logits2 = self.contrast(q, k2)
        self.enqueue(torch.cat([k1, k2]))
        acc = (top1_positive(logits1) + top1_positive(logits2)) / 2
        return self.probed(loss1 + loss2, {"acc": acc, "loss1": loss1.detach(), "loss2": loss2.detach()}, h,
                           labels)

    @classmethod
    def keys_per_image_of(cls, method):
        return 2


def test_local_crops_zero_is_todays_leoclr_bit_for_bit(tmp_path, monkeypatch):
    overrides = {"augment.size": 32, "augment.blur": False, "augment.normalize": "builtin", "data.builtin_train": 16,
                 "data.builtin_test": 16, "method.queue_size": 16, "model.arch": "resnet18", "model.dim": 8,
                 "model.bn_splits": 2, "optim.batch_size": 8, "optim.epochs": 2, "checkpoint_every": 2, "device": "cpu"}
    p = load_protocol("pretrain", None, overrides)
    assert p.augment.local_crops == 0 and p.optim.name == "sgd"
    run_pretrain(p, tmp_path / "now", quiet=True)
    monkeypatch.setitem(METHODS, "leoclr", TodaysLeOCLR)
    run_pretrain(p, tmp_path / "before", quiet=True)
    a, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "now", 2))
    b, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "before", 2))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert (tmp_path / "now" / "metrics.jsonl").read_text().count("loss1") == 2
    before = [line.split('"samples_per_s"')[0] for line in (tmp_path / "before" / "metrics.jsonl").read_text().split("\n")]
    now = [line.split('"samples_per_s"')[0] for line in (tmp_path / "now" / "metrics.jsonl").read_text().split("\n")]
    assert before == now  # the same losses and accuracies, epoch by epoch


def test_local_crops_train_leoclr(tmp_path):
    p = load_protocol("pretrain", None, {
        "augment.size": 32, "augment.blur": False, "augment.normalize": "builtin", "augment.local_crops": 2,
        "data.builtin_train": 16, "data.builtin_test": 16, "method.queue_size": 16, "model.arch": "resnet18",
        "model.dim": 8, "model.bn_splits": 2, "optim.batch_size": 8, "optim.epochs": 1, "device": "cpu",
        "augment.backend": "tensor"})
    r = run_pretrain(p, tmp_path / "r", quiet=True)
    saved = load_protocol("pretrain", tmp_path / "r" / "protocol.yaml")
    assert saved.augment.local_size == 12 and math.isfinite(r["final_loss"])
    assert "loss_local" in (tmp_path / "r" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("method", ["mocov2", "simclr", "leoclr-attract-all"])
def test_other_methods_refuse_local_crops_in_one_sentence(method, capsys, tmp_path):
    code, _, err = run(["pretrain", "--method", method, "--set", "augment.local_crops=2", "--out",
                        str(tmp_path / "r")], capsys)
    assert f"augment.local_crops (2) is LeOCLR's multi-crop, which method '{method}' does not take" in error_line(code, err)
    assert not (tmp_path / "r").exists()


def test_sgd_is_mocos_and_adamw_leaves_norm_and_bias_out_of_weight_decay():
    model = ModelConfig(arch="resnet18", dim=8, bn_splits=1)
    method = LeOCLR(model, MethodConfig(queue_size=16))
    params = [q for q in method.parameters() if q.requires_grad]
    sgd = build_optimizer(method, OptimConfig(), 0.03)
    mocos = torch.optim.SGD(params, lr=0.03, momentum=0.9, weight_decay=1e-4)
    assert sgd.state_dict()["param_groups"] == mocos.state_dict()["param_groups"]
    plain = lr_schedule(OptimConfig(epochs=10), 0.03, 7, seed=0)
    assert plain.lr_at_step is None and plain.lr_at(5) == pytest.approx(0.015)

    adamw = build_optimizer(method, OptimConfig(name="adamw", weight_decay=0.05), 1e-3)
    assert isinstance(adamw, torch.optim.AdamW) and [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    decayed, free = (set(map(id, g["params"])) for g in adamw.param_groups)
    assert decayed | free == set(map(id, params)) and not decayed & free
    assert all(q.ndim <= 1 for q in params if id(q) in free)  # biases and BN weights
    assert id(method.encoder_q.backbone.layer1[0].bn1.weight) in free
    assert id(method.encoder_q.backbone.conv1.weight) in decayed

    s = lr_schedule(OptimConfig(name="adamw", epochs=10, warmup_epochs=2, lr=1e-3), 1e-3, 5, seed=0)
    lrs = [s.lr_at_step(i) for i in range(50)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # 10 warm-up steps
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 1e-5
