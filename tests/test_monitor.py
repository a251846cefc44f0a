"""The pretraining monitors (monitor.*): the online linear probe trains beside the method without moving
it (bit-identical backbone, bit-exact resume), both monitors land in metrics.jsonl per epoch, they are off
with one line on data without labels, and the picture of learning (learning.png) draws them per seed."""

import io
import shutil

import pytest
import torch
from PIL import Image
from rich.console import Console

from leoclr_cli.config import load_protocol
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core.engine import read_metrics
from leoclr_cli.evaluate.monitor import online_probe
from leoclr_cli.report.pictures import learning_picture, learning_series
from leoclr_cli.report.report import build_report
from leoclr_cli.workflows.pretrain import run_pretrain
from leoclr_cli.workflows.quickstart import run_quickstart

TINY = {"augment.size": 32, "augment.blur": False, "augment.normalize": "builtin", "data.builtin_train": 32,
        "data.builtin_test": 30, "method.queue_size": 64, "model.arch": "resnet18", "model.dim": 16,
        "model.bn_splits": 2, "optim.batch_size": 16, "optim.epochs": 2, "checkpoint_every": 1, "device": "cpu",
        "monitor.k": 10, "threads": 1}
MONITORS = {"monitor.knn_every": 1, "monitor.linear_every": 1}


def pretrain(out, **overrides):
    p = load_protocol("pretrain", None, {**TINY, **overrides})
    return run_pretrain(p, out, quiet=True), read_metrics(out / "metrics.jsonl")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """LeOCLR on the built-in data with both monitors, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("monitored")
    return {seed: (root / f"seed-{seed}", *pretrain(root / f"seed-{seed}", seed=seed, **MONITORS)) for seed in (0, 1)}


def test_metrics_hold_both_monitors_every_epoch(monitored):
    out, result, metrics = monitored[0]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0 <= m["knn_top1"] <= 100 and 0 <= m["linear_top1"] <= 100 and 0 <= m["linear_train_top1"] <= 100
        assert m["linear_loss"] > 0
        # the records' loss is the method's (the two InfoNCE terms), not the probe's added to it
        assert m["loss"] == pytest.approx(m["loss1"] + m["loss2"], rel=1e-5)
    assert result["linear_top1"] == metrics[-1]["linear_top1"] and result["knn_top1"] == metrics[-1]["knn_top1"]
    assert result["monitor_classes"] == 10 and 0 <= result["knn_top1_random_init"] <= 100
    # the head trained: its weights moved from the seeded init, and its lr followed the schedule at linear_lr
    state, meta = ckpt.load_tensors(ckpt.state_path(out, 2))
    init = online_probe(512, 10, 0)
    assert state["model.probe.fc.weight"].shape == (10, 512)
    assert not torch.equal(state["model.probe.fc.weight"], init.fc.weight)
    assert state["model.probe.norm.running_mean"].abs().sum() > 0


def test_the_probe_and_the_monitors_leave_the_backbone_bit_identical(tmp_path):
    """Same seed with and without the monitors: every tensor of the method (both encoders, the queue) and its
    optimizer state are the same after two epochs; the with-run has the probe on top."""
    pretrain(tmp_path / "plain")
    pretrain(tmp_path / "probed", **MONITORS)
    a, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "plain", 2))
    b, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "probed", 2))
    method = [k for k in a if k.startswith("model.")]
    assert "model.encoder_q.backbone.conv1.weight" in method and "model.queue" in method
    assert [k for k in method if not torch.equal(a[k], b[k])] == []
    assert sorted(k for k in b if k.startswith("model.") and k not in a) == [
        "model.probe.fc.bias", "model.probe.fc.weight", "model.probe.norm.num_batches_tracked",
        "model.probe.norm.running_mean", "model.probe.norm.running_var"]
    momentum = [k for k in a if k.startswith("optim.")]
    assert momentum and all(torch.equal(a[k], b[k]) for k in momentum)


def test_a_probe_on_features_that_are_not_detached_would_move_the_backbone(tmp_path, monkeypatch):
    """The bit-identical check above can fail: the probe's loss flowing into the backbone changes it."""
    from leoclr_cli.methods.base import ContrastiveMethod

    probed = ContrastiveMethod.probed

    def leaky(self, loss, stats, features, labels):
        total, out = probed(self, loss, stats, features, labels)
        return (total + 0.1 * features.pow(2).mean(), out) if self.probe is not None else (total, out)

    monkeypatch.setattr(ContrastiveMethod, "probed", leaky)
    pretrain(tmp_path / "plain", **{"optim.epochs": 1})
    pretrain(tmp_path / "leaky", **{"optim.epochs": 1, "monitor.linear_every": 1})
    a, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "plain", 1))
    b, _ = ckpt.load_tensors(ckpt.state_path(tmp_path / "leaky", 1))
    assert not torch.equal(a["model.encoder_q.backbone.conv1.weight"], b["model.encoder_q.backbone.conv1.weight"])


def test_resume_with_the_probe_is_bit_exact(tmp_path, monitored):
    straight, _, metrics = monitored[0]
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt.state_path(straight, 1), ckpt.state_path(resumed, 1))
    shutil.copy(straight / "protocol.yaml", resumed / "protocol.yaml")
    shutil.copy(straight / "metrics.jsonl", resumed / "metrics.jsonl")  # the resume cuts it back to epoch 1
    p = load_protocol("pretrain", None, {**TINY, **MONITORS, "seed": 0})
    run_pretrain(p, resumed, resume="auto", quiet=True)
    a, _ = ckpt.load_tensors(ckpt.state_path(straight, 2))
    b, _ = ckpt.load_tensors(ckpt.state_path(resumed, 2))
    assert a.keys() == b.keys() and "model.probe.fc.weight" in a
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    timeless = [{k: v for k, v in m.items() if k not in ("samples_per_s", "time_s")} for m in metrics]
    again = [{k: v for k, v in m.items() if k not in ("samples_per_s", "time_s")}
             for m in read_metrics(resumed / "metrics.jsonl")]
    assert again == timeless


def test_on_data_without_labels_the_probe_is_off_with_one_line(tmp_path):
    from fakedata import make_stl10

    root = make_stl10(tmp_path / "stl", n_train=20, n_test=20, n_unlabeled=32)
    text = io.StringIO()
    p = load_protocol("pretrain", None, {**TINY, **MONITORS, "optim.epochs": 1, "data.source": "stl10",
                                         "data.root": str(root), "data.split": "unlabeled",
                                         "data.verify_checksums": False})
    run_pretrain(p, tmp_path / "run", quiet=True, console=Console(file=text, width=200))
    lines = [ln for ln in text.getvalue().splitlines() if ln.startswith("monitor:")]
    assert lines == ["monitor: the pretraining split 'unlabeled' of stl10 has no labels; the online linear probe "
                     "(monitor.linear_every) is off"]
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert "linear_top1" not in record and "linear_loss" not in record
    assert 0 <= record["knn_top1"] <= 100  # the kNN monitor uses STL-10's labelled train and test splits


def check_png(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 200


def test_the_learning_picture_draws_each_seed_its_monitors_random_init_and_chance(monitored):
    series = [learning_series(out, "leoclr") for out, _, _ in monitored.values()]
    data, lines = learning_picture(series)
    check_png(data)
    for seed, (_, result, metrics) in monitored.items():
        mine = {line["kind"]: line for line in lines if line["seed"] == seed}
        assert sorted(mine) == ["chance", "knn_top1", "linear_top1", "random_init"]
        assert len([line for line in lines if line["seed"] == seed]) == 4
        assert mine["knn_top1"]["x"] == [1, 2] and mine["knn_top1"]["y"] == [m["knn_top1"] for m in metrics]
        assert mine["linear_top1"]["y"] == [m["linear_top1"] for m in metrics]
        assert mine["random_init"]["y"] == [result["knn_top1_random_init"]] * 2
        assert mine["chance"]["y"] == [10.0, 10.0]


def test_report_writes_the_learning_picture(tmp_path, monitored):
    r = build_report([out for out, _, _ in monitored.values()], tmp_path / "report")
    check_png((tmp_path / "report" / "learning.png").read_bytes())
    assert sorted({(line["seed"], line["kind"]) for line in r["learning"]}) == [
        (s, k) for s in (0, 1) for k in ("chance", "knn_top1", "linear_top1", "random_init")]
    assert "![Learning](learning.png)" in (tmp_path / "report" / "report.md").read_text()


def test_random_init_value_is_the_knn_monitor_of_the_run_before_its_first_step(tmp_path, monitored):
    """The random-init line is the kNN monitor of the weights the run starts from (same arch and seed)."""
    from leoclr_cli.evaluate.monitor import Monitor
    from leoclr_cli.data import open_pretrain_data
    from leoclr_cli.methods import build_method
    from leoclr_cli.core.checkpoint import seed_everything

    p = load_protocol("pretrain", None, {**TINY, **MONITORS})
    seed_everything(p.seed)
    method = build_method(p.model, p.method)
    monitor = Monitor(p, open_pretrain_data(p.data), torch.device("cpu"))
    assert monitor.knn_top1(method.backbone) == monitored[0][1]["knn_top1_random_init"]


def test_quickstart_writes_learning_png(tmp_path, small_probe):
    out = tmp_path / "qs"
    run_quickstart(["leoclr", "mocov2"], out, epochs=2, quiet=True, console=Console(file=io.StringIO()),
                   overrides={**{k: v for k, v in TINY.items() if k.startswith(("data.", "method.", "monitor."))},
                              "optim.batch_size": 16, "threads": 1, **MONITORS})
    check_png((out / "learning.png").read_bytes())
    series = [learning_series(out / "seed-0" / m, m) for m in ("leoclr", "mocov2")]
    # both methods of a seed share the random-init backbone, so one line draws it
    assert series[0]["random_init"] == series[1]["random_init"] is not None
    _, lines = learning_picture(series)
    kinds = sorted((line["label"], line["kind"]) for line in lines)
    assert kinds == sorted([("leoclr, kNN", "knn_top1"), ("leoclr, online probe", "linear_top1"),
                            ("mocov2, kNN", "knn_top1"), ("mocov2, online probe", "linear_top1"),
                            (f"random init, kNN ({series[0]['random_init']:.1f})", "random_init"),
                            ("chance (1/10)", "chance")])


@pytest.mark.parametrize("name", ["leoclr", "mocov2", "simclr", "leoclr-e2e", "leoclr-attract-all",
                                  "leoclr-random-original"])
def test_every_method_trains_the_probe_without_touching_its_gradients(name, tiny_model_cfg):
    """One step of each method with and without the probe: the same backbone gradients, bit for bit; the
    probe's loss is added to the backpropagated loss but not to the reported one; unlabelled images (-1)
    are left out of it."""
    import copy

    from leoclr_cli.config import MethodConfig
    from leoclr_cli.methods import build_method

    torch.manual_seed(0)
    plain = build_method(tiny_model_cfg, MethodConfig(name=name, queue_size=32))
    probed = copy.deepcopy(plain)
    probed.attach_probe(online_probe(plain.backbone.feature_dim, 10, 0))
    views = [torch.randn(8, 3, 16, 16) for _ in plain.views]
    labels = torch.tensor([0, 1, 2, 3, -1, -1, 4, 5])
    grads = []
    for method in (plain, probed):
        torch.manual_seed(1)  # shuffle-BN's permutation
        loss, stats = method(views, labels)
        loss.backward()
        grads.append({n: q.grad for n, q in method.encoder_q.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])
    assert stats["loss"] == pytest.approx(loss.item() - stats["linear_loss"].item(), rel=1e-5)
    assert probed.probe.fc.weight.grad is not None and probed.probe.fc.weight.grad.abs().sum() > 0
    # the probe's loss is the cross-entropy over the labelled images only (features of the whole batch)
    feats = torch.randn(8, plain.backbone.feature_dim)
    total, stats = probed.probed(torch.tensor(1.0), {}, feats, labels)
    logits = probed.probe.logits(feats)
    keep = labels >= 0
    assert stats["linear_loss"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits[keep], labels[keep]).item(), rel=1e-6)
    assert total.item() == pytest.approx(1.0 + stats["linear_loss"].item(), rel=1e-6)
    assert stats["linear_train_top1"].item() == pytest.approx(
        100.0 * (logits[keep].argmax(1) == labels[keep]).float().mean().item(), rel=1e-6)
