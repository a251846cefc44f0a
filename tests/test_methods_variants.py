"""SimCLR, LeOCLR-e2e and the Table 8 ablations: losses against hand computations, registry, views."""

import math
import typing

import pytest
import torch
import torch.nn.functional as F

from leoclr_cli.methods import METHODS, build_method
from leoclr_cli.methods.endtoend import in_batch_nce
from leoclr_cli.config import MethodConfig, ModelConfig
from test_methods import FixedEncoder, _ids, _with_fixed_encoders, hand_info_nce

MODEL = ModelConfig(arch="resnet18", dim=4, bn_splits=1, shuffle_bn=False)


def hand_nce(anchor, positive, negatives, t):
    """-log(exp(a.p/t) / (exp(a.p/t) + sum_n exp(a.n/t))) per row; negatives[i] is row i's list; mean."""
    total = 0.0
    for i in range(anchor.shape[0]):
        pos = math.exp(float(anchor[i] @ positive[i]) / t)
        neg = sum(math.exp(float(anchor[i] @ n) / t) for n in negatives[i])
        total += -math.log(pos / (pos + neg))
    return total / anchor.shape[0]


def others(views, i):
    """Every view of every image but image i."""
    return [v[j] for v in views for j in range(v.shape[0]) if j != i]


def test_in_batch_nce_drops_own_image_views():
    g = torch.Generator().manual_seed(1)
    a, p, o = (F.normalize(torch.randn(3, 5, generator=g), dim=1) for _ in range(3))
    loss, logits = in_batch_nce(a, p, [a, p, o], 0.3)
    assert logits.shape == (3, 1 + 3 * 2)
    assert loss.item() == pytest.approx(hand_nce(a, p, [others([a, p, o], i) for i in range(3)], 0.3), rel=1e-5)


def test_in_batch_nce_anchors_can_be_a_slice_of_the_batch():
    # a rank's anchors (rows 2..3 of a global batch of 5) against every view of the global batch
    g = torch.Generator().manual_seed(2)
    a, p, o = (F.normalize(torch.randn(5, 5, generator=g), dim=1) for _ in range(3))
    loss, logits = in_batch_nce(a[2:4], p[2:4], [a, p, o], 0.3, offset=2)
    assert logits.shape == (2, 1 + 3 * 4)
    want = hand_nce(a[2:4], p[2:4], [others([a, p, o], i) for i in (2, 3)], 0.3)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_simclr_is_nt_xent_over_the_2n_anchors():
    torch.manual_seed(0)
    table = torch.randn(6, 4)
    m = build_method(MODEL, MethodConfig(name="simclr", temperature=0.5))
    m.encoder_q = FixedEncoder(table)
    loss, _ = m([_ids(0, 1, 2), _ids(3, 4, 5)])
    # NT-Xent as SimCLR writes it: 2N embeddings, for each k the positive is its pair, the
    # denominator every other embedding (k itself excluded)
    z = F.normalize(table, dim=1)
    pair = {0: 3, 1: 4, 2: 5, 3: 0, 4: 1, 5: 2}
    total = 0.0
    for k in range(6):
        num = math.exp(float(z[k] @ z[pair[k]]) / 0.5)
        den = sum(math.exp(float(z[k] @ z[j]) / 0.5) for j in range(6) if j != k)
        total += -math.log(num / den)
    assert loss.item() == pytest.approx(total / 6, rel=1e-5)


def test_leoclr_e2e_anchors_are_the_originals():
    torch.manual_seed(0)
    table = torch.randn(6, 4)
    m = build_method(MODEL, MethodConfig(name="leoclr-e2e", temperature=0.2))
    m.encoder_q = FixedEncoder(table)
    loss, stats = m([_ids(0, 1), _ids(2, 3), _ids(4, 5)])  # originals 0,1; crops 2,3 and 4,5
    z = F.normalize(table, dim=1)
    x, x1, x2 = z[[0, 1]], z[[2, 3]], z[[4, 5]]
    negs = [others([x, x1, x2], i) for i in range(2)]  # image 0: 1, 3, 5; image 1: 0, 2, 4
    assert [len(n) for n in negs] == [3, 3]
    expected = hand_nce(x, x1, negs, 0.2) + hand_nce(x, x2, negs, 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["loss1"].item() + stats["loss2"].item() == pytest.approx(expected, rel=1e-5)


def test_leoclr_attract_all_adds_the_crop_to_crop_terms():
    torch.manual_seed(0)
    table = torch.randn(6, 4)
    m = build_method(MODEL, MethodConfig(name="leoclr-attract-all", queue_size=8, momentum=0.0, temperature=0.5))
    _with_fixed_encoders(m, table)
    queue0 = m.queue.clone()
    loss, _ = m([_ids(0, 1), _ids(2, 3), _ids(4, 5)])
    e = F.normalize(table, dim=1)
    x, x1, x2 = e[[0, 1]], e[[2, 3]], e[[4, 5]]
    expected = sum(hand_info_nce(a, k, queue0, 0.5) for a, k in ((x, x1), (x, x2), (x1, x2), (x2, x1)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(m.queue[:, :4], e[[2, 3, 4, 5]].T)  # both crops' keys enqueued


def test_leoclr_random_original_is_leoclr_on_a_cropped_anchor():
    torch.manual_seed(0)
    table = torch.randn(6, 4)
    m = build_method(MODEL, MethodConfig(name="leoclr-random-original", queue_size=8, momentum=0.0, temperature=0.5))
    assert m.views == ("random-original", "crop", "crop")
    _with_fixed_encoders(m, table)
    queue0 = m.queue.clone()
    loss, _ = m([_ids(0, 1), _ids(2, 3), _ids(4, 5)])
    e = F.normalize(table, dim=1)
    expected = hand_info_nce(e[[0, 1]], e[[2, 3]], queue0, 0.5) + hand_info_nce(e[[0, 1]], e[[4, 5]], queue0, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_every_method_is_registered_trains_and_exports_a_backbone(tiny_model_cfg):
    assert set(METHODS) == set(typing.get_args(MethodConfig.model_fields["name"].annotation))
    for name in METHODS:
        torch.manual_seed(0)
        m = build_method(tiny_model_cfg, MethodConfig(name=name, queue_size=16))
        views = [torch.randn(4, 3, 16, 16, requires_grad=True) for _ in m.views]
        loss, stats = m(views)
        loss.backward()
        assert torch.isfinite(loss) and 0 <= float(stats["acc"]) <= 100  # a percent
        assert "conv1.weight" in m.backbone.state_dict()
        # end to end: every view gets a gradient; momentum: only the query encoder's views do
        has_grad = [v.grad is not None and v.grad.abs().sum() > 0 for v in views]
        if name in ("simclr", "leoclr-e2e"):
            assert all(has_grad) and not hasattr(m, "queue")
        elif name == "leoclr-attract-all":
            assert all(has_grad)
        else:
            assert has_grad[0] and not any(has_grad[1:])


@pytest.mark.parametrize("stem, name, table_row", [
    ("simclr", "simclr", "Table 5"), ("leoclr_e2e", "leoclr-e2e", "Table 5"),
    ("leoclr_random_original", "leoclr-random-original", "Table 8"),
    ("leoclr_attract_all", "leoclr-attract-all", "Table 8"),
])
def test_protocol_files_match_their_table_rows(stem, name, table_row):
    from pathlib import Path

    from leoclr_cli.config import load_protocol

    path = Path(__file__).parent.parent / "protocols" / f"imagenet_r50_{stem}_200ep.yaml"
    p = load_protocol("pretrain", path, {"data.root": "/imagenet"})
    assert p.method.name == name and p.model.arch == "resnet50" and p.data.source == "imagefolder"
    assert (p.optim.epochs, p.optim.batch_size, p.optim.lr, p.optim.weight_decay) == (200, 256, 0.03, 1e-4)
    text = path.read_text()
    assert text.startswith(f"# {table_row}:") and "Single device:" in text
    # end to end: global BN over the whole batch; momentum methods: MoCo's 8-split shuffle-BN
    assert p.model.bn_splits == (1 if name in ("simclr", "leoclr-e2e") else 8)
