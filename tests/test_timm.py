"""Backbones from timm (model.arch: timm:NAME): built for the view size, BatchNorm-only things applied where
there is BatchNorm, pretraining that resumes bit-exactly, a backbone file that loads into timm.create_model
exactly, the evaluations and random:timm:NAME floors on it, and one sentence where something does not fit."""

import json
import sys

import pytest
import torch

timm = pytest.importorskip("timm")

from cliutil import error_line, run  # noqa: E402
from leoclr_cli.config import load_protocol  # noqa: E402
from leoclr_cli.core import checkpoint as ckpt  # noqa: E402
from leoclr_cli.core.nets import SplitBatchNorm, build_backbone, has_batchnorm  # noqa: E402
from leoclr_cli.core.timm_nets import fit_kwargs, fit_patch  # noqa: E402
from leoclr_cli.detection.export import load_detection_backbone  # noqa: E402
from leoclr_cli.errors import UserError  # noqa: E402
from leoclr_cli.methods import build_method  # noqa: E402
from leoclr_cli.workflows.pretrain import resolve_model  # noqa: E402
from test_resume import straight_and_resumed  # noqa: E402

VIT = "timm:vit_tiny_patch16_224"
#: a real timm ViT at 32 px (patch 4 chosen for it) on a few built-in images
TINY = {"augment.size": 32, "augment.blur": False, "augment.normalize": "builtin", "data.builtin_train": 16,
        "data.builtin_test": 16, "method.queue_size": 16, "model.arch": VIT, "model.dim": 8, "model.bn_splits": 2,
        "optim.batch_size": 8, "optim.epochs": 2, "checkpoint_every": 1, "device": "cpu", "optim.name": "adamw",
        "optim.lr": 1e-3, "optim.warmup_epochs": 1, "method.queue_init": "keys"}


def test_the_model_is_built_for_the_view_size():
    assert [fit_patch(16, s) for s in (224, 32, 96, 64)] == [16, 4, 12, 8]
    assert fit_patch(32, 224) == 32  # 7 patches a side: its own
    assert fit_kwargs(VIT, 32) == {"img_size": 32, "patch_size": 4, "dynamic_img_size": True}
    assert fit_kwargs(VIT, 224) == {"img_size": 224, "patch_size": 16, "dynamic_img_size": True}
    assert fit_kwargs(VIT, 32, {"patch_size": 8}) == {"img_size": 32, "patch_size": 8, "dynamic_img_size": True}
    assert fit_kwargs("timm:convnext_tiny", 32) == {}  # no img_size: a ConvNet takes any size
    net = build_backbone(VIT, timm_kwargs=fit_kwargs(VIT, 32))
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 192) == (2, net.feature_dim)
    assert net(torch.randn(2, 3, 12, 12)).shape == (2, 192)  # dynamic_img_size: a local crop's size too
    with pytest.raises(UserError, match="could not be built"):
        fit_kwargs(VIT, 32, {"no_such_argument": 1})


def test_batchnorm_only_things_follow_the_backbone():
    plain = build_backbone("timm:test_resnet")
    split = build_backbone("timm:test_resnet", bn_splits=2)
    assert has_batchnorm(plain) and any(isinstance(m, SplitBatchNorm) for m in split.modules())
    assert not any(isinstance(m, SplitBatchNorm) for m in plain.modules())
    assert split.state_dict().keys() == plain.state_dict().keys()  # the file stays timm's
    p = resolve_model(load_protocol("pretrain", None, {"model.arch": "timm:test_resnet", "model.bn_splits": 2,
                                                       "optim.batch_size": 8, "augment.size": 32,
                                                       "method.queue_size": 16}))
    assert build_method(p.model, p.method).shuffle_bn is True
    vit = resolve_model(load_protocol("pretrain", None, {**TINY, "model.bn_splits": 2}))
    method = build_method(vit.model, vit.method)
    assert not has_batchnorm(method.backbone) and method.shuffle_bn is False


def test_vit_pretraining_resumes_bit_exactly_and_its_backbone_loads_into_timm(tmp_path, capsys):
    a, _ = straight_and_resumed(load_protocol("pretrain", None, TINY), tmp_path)  # killed after epoch 1, resumed
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    saved = load_protocol("pretrain", straight / "protocol.yaml")
    assert saved.model.timm_kwargs == {"img_size": 32, "patch_size": 4, "dynamic_img_size": True}
    e1, _ = ckpt.load_tensors(ckpt.state_path(straight, 1))
    assert not torch.equal(e1["model.encoder_q.backbone.pos_embed"], a["model.encoder_q.backbone.pos_embed"])
    assert (straight / "backbone.safetensors").read_bytes() == (resumed / "backbone.safetensors").read_bytes()

    # the backbone file: timm's keys, its name, arguments and version in the header, exact in timm.create_model
    path = straight / "backbone.safetensors"
    tensors, meta = ckpt.load_tensors(path)
    assert meta["timm_model"] == "vit_tiny_patch16_224" and meta["timm_version"] == timm.__version__
    reference = timm.create_model(meta["timm_model"], num_classes=0, **json.loads(meta["timm_kwargs"]))
    reference.load_state_dict(tensors, strict=True)
    ours, _ = ckpt.load_backbone(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reference.eval()(x), ours.eval()(x))
    trained = {k[len("model.encoder_q.backbone."):]: v for k, v in a.items()
               if k.startswith("model.encoder_q.backbone.")}
    assert trained.keys() == tensors.keys() and all(torch.equal(trained[k], tensors[k]) for k in tensors)

    code, out, err = run(["info", str(path)], capsys)
    assert code in (0, None), err
    assert "timm_model: vit_tiny_patch16_224" in out and f"timm_version: {timm.__version__}" in out
    assert 'timm_kwargs: {"dynamic_img_size": true, "img_size": 32, "patch_size": 4}' in out

    # the evaluations take it
    code, _, err = run(["knn", str(straight), "--k", "5", "--quiet", "--out", str(tmp_path / "knn")], capsys)
    assert code in (0, None), err
    knn = json.loads((tmp_path / "knn" / "result.json").read_text())
    assert knn["arch"] == VIT and 0 <= knn["top1"] <= 100
    code, _, err = run(["linear-eval", str(straight), "--epochs", "2", "--quiet", "--out",
                        str(tmp_path / "lin")], capsys)
    assert code in (0, None), err
    lin = json.loads((tmp_path / "lin" / "result.json").read_text())
    assert lin["arch"] == VIT and lin["num_classes"] == 10 and 0 <= lin["top1"] <= 100
    # detection needs a torchvision ResNet-50: one sentence, before anything is built
    with pytest.raises(UserError, match="is a timm:vit_tiny_patch16_224 backbone; detection needs a torchvision"):
        load_detection_backbone(path, archs=("resnet50",))


def test_random_timm_floor(tmp_path, capsys):
    out = tmp_path / "runs" / "knn"
    code, _, err = run(["knn", "random:timm:test_vit", "--seed", "2", "--k", "5", "--set", "data.builtin_train=32",
                        "--set", "data.builtin_test=16", "--quiet", "--out", str(out)], capsys)
    assert code in (0, None), err
    r = json.loads((out / "result.json").read_text())
    assert r["method"] == "random-init" and r["arch"] == "timm:test_vit"
    path = tmp_path / "runs" / "random-timm-test_vit-32px-seed2" / "backbone.safetensors"
    tensors, meta = ckpt.load_tensors(path)
    assert json.loads(meta["timm_kwargs"]) == {"img_size": 32, "patch_size": 4, "dynamic_img_size": True}
    torch.manual_seed(2)
    expected = timm.create_model("test_vit", num_classes=0, img_size=32, patch_size=4, dynamic_img_size=True)
    assert all(torch.equal(tensors[k], v) for k, v in expected.state_dict().items())
    assert ckpt.random_backbone_file("random:timm:test_vit", 2, path, 32) == path  # reused
    with pytest.raises(UserError, match="is not the random:timm:test_vit backbone of seed 2"):
        ckpt.random_backbone_file("random:timm:test_vit", 2, path, 64)  # another view size: another model


@pytest.mark.parametrize("sets, needle", [
    (["model.arch=timm:no_such_model"], "timm 1"),
    (["model.arch=timm:vit_tiny_patch16_224", "model.cifar_stem=true"], "model.cifar_stem changes a torchvision"),
    (["model.arch=resnet18", "model.timm_kwargs={patch_size: 4}"], "model.timm_kwargs apply to a timm:NAME arch"),
    (["model.arch=timm:test_vit", "augment.crops=contrastive", "augment.ccrop.warmup_epochs=0", "optim.epochs=1"],
     "which timm:test_vit does not have"),
])
def test_bad_timm_input_one_line(sets, needle, capsys, tmp_path):
    argv = ["pretrain", "--set", "data.builtin_train=16", "--set", "augment.size=32", "--set", "optim.batch_size=16",
            "--out", str(tmp_path / "r")]
    code, _, err = run([*argv, *[a for s in sets for a in ("--set", s)]], capsys)
    assert needle in error_line(code, err)
    assert not (tmp_path / "r").exists()


def test_a_missing_timm_is_one_sentence(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    code, _, err = run(["pretrain", "--set", f"model.arch={VIT}", "--out", str(tmp_path / "r")], capsys)
    assert "needs the timm package, which is not installed (pip install 'leoclr[timm]')" in error_line(code, err)
    code, _, err = run(["knn", "random:timm:test_vit", "--out", str(tmp_path / "k")], capsys)
    assert "needs the timm package" in error_line(code, err)
    assert not (tmp_path / "r").exists() and not (tmp_path / "k").exists()
