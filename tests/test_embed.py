"""``leoclr embed`` (one row per image: path, label, pooled feature, projection head) and ``leoclr export --to
torchvision|timm`` (a state dict that the stock ResNets load, only the classifier missing)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
import torchvision
from safetensors import safe_open

from cliutil import error_line, run
from fakedata import make_imagefolder, make_photos
from leoclr_cli.config import EvalTransformConfig
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core.nets import projection_head
from leoclr_cli.data import open_data
from leoclr_cli.data.sources import FolderReader
from leoclr_cli.data.views import eval_transform
from leoclr_cli.errors import EXIT_PREEMPTED

PRETRAIN = ["--device", "cpu", "--epochs", "1", "--set", "augment.size=32", "--set", "model.dim=8", "--quiet"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("embed") / "photos", n=8, size=32)


@pytest.fixture(scope="module")
def run_dir(photos, tmp_path_factory):
    """A LeOCLR run pretrained for one epoch on the photos, by the own-data recipe."""
    from leoclr_cli.cli import main

    out = tmp_path_factory.mktemp("embed-run") / "mine"
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--data", str(photos), "-o", str(out), *PRETRAIN])
    assert exc.value.code in (0, None)
    return out


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_embed_writes_one_row_per_image_with_its_path_and_the_backbones_feature(run_dir, photos, tmp_path, capsys):
    out = tmp_path / "emb.safetensors"
    code, text, err = run(["embed", str(run_dir), "--data", str(photos), "-o", str(out), "--head"], capsys)
    assert code in (0, None), err
    assert "embedded 8 images of folder data (512 features, head)" in text
    tensors, meta = read(out)
    paths = json.loads(meta["paths"])
    source = open_data("folder", str(photos), "train")
    assert paths == source.files and meta["source"] == "folder" and meta["root"] == str(photos)
    assert tensors["features"].shape == (8, 512) and tensors["head"].shape == (8, 8)
    assert tensors["labels"].tolist() == [-1] * 8
    # row 5 is the backbone's feature of image 5 under the test transform the run implies
    backbone, _ = ckpt.load_backbone(run_dir / "backbone.safetensors")
    tf = EvalTransformConfig.model_validate_json(meta["transform"])
    assert tf.size == 32 and tf.normalize == "custom"  # the run's own view size and measured mean/std
    x = eval_transform(tf.size, tf.resize, tf.test, tf.norm)(source[5][0])[None]
    with torch.no_grad():
        feature = backbone.eval()(x)[0]
    torch.testing.assert_close(tensors["features"][5], feature, atol=1e-4, rtol=1e-4)
    # the head is the run's projection head (its newest training state) on those features
    state, _ = ckpt.load_tensors(ckpt.latest_state(run_dir))
    head = projection_head(512, 8, True)
    head.load_state_dict({k[len("model.encoder_q.head."):]: v for k, v in state.items()
                          if k.startswith("model.encoder_q.head.")})
    with torch.no_grad():
        torch.testing.assert_close(tensors["head"], head(tensors["features"]), atol=1e-4, rtol=1e-4)


def test_embed_keeps_the_labels_of_a_labelled_dataset_and_writes_parquet(tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    root = make_imagefolder(tmp_path / "in", classes=3, per_class=2, size=24)
    out = tmp_path / "emb.parquet"
    code, _, err = run(["embed", "random:resnet18", "--data", str(root), "-o", str(out), "--batch-size", "4"], capsys)
    assert code in (0, None), err
    table = pq.read_table(out)
    source = open_data("imagefolder", str(root), "train")
    assert table.column("path").to_pylist() == source.files
    assert table.column("label").to_pylist() == source.targets == [0, 0, 1, 1, 2, 2]
    features = torch.tensor(table.column("feature").to_pylist())
    assert features.shape == (6, 512) and table.schema.metadata[b"source"] == b"imagefolder"
    # the same rows as the safetensors file
    again = tmp_path / "emb.safetensors"
    run(["embed", "random:resnet18", "--data", str(root), "-o", str(again), "--batch-size", "4"], capsys)
    torch.testing.assert_close(read(again)[0]["features"], features)


def test_embed_leaves_an_undecodable_image_out_when_asked(photos, run_dir, tmp_path, capsys):
    copy = tmp_path / "p"
    copy.mkdir()
    (copy / "IMG_0000.PNG").write_bytes((photos / "IMG_0000.PNG").read_bytes())  # the one flat photo
    (copy / "zz-broken.jpg").write_bytes(b"not a jpeg")
    code, _, err = run(["embed", str(run_dir), "--data", str(copy), "-o", str(tmp_path / "e.safetensors")], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "zz-broken.jpg could not be decoded" in lines[0], err
    assert not (tmp_path / "e.safetensors").exists()
    code, text, err = run(["embed", str(run_dir), "--data", str(copy), "-o", str(tmp_path / "e.safetensors"),
                           "--on-bad-image", "skip"], capsys)
    assert code in (0, None), err
    assert "1 undecodable images left out" in text
    tensors, meta = read(tmp_path / "e.safetensors")
    assert json.loads(meta["paths"]) == ["IMG_0000.PNG"] and tensors["features"].shape[0] == 1


@pytest.mark.parametrize("argv, needle", [
    (["-o", "emb.npy"], "must end in .safetensors or .parquet"),
    (["-o", "exists.safetensors"], "already exists; use --force"),
    (["-o", "e.safetensors", "--head", "--target-backbone"], "--head needs a pretraining run directory"),
])
def test_embed_bad_inputs_are_one_sentence(argv, needle, run_dir, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exists.safetensors").write_text("keep me")
    target = str(run_dir / "backbone.safetensors") if "--target-backbone" in argv else str(run_dir)
    argv = [a for a in argv if a != "--target-backbone"]
    code, _, err = run(["embed", target, "--data", str(photos), *argv], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert (tmp_path / "exists.safetensors").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["exists.safetensors"]


def test_parquet_without_pyarrow_is_one_sentence(run_dir, photos, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("pyarrow") else real(name, *a, **k))
    code, _, err = run(["embed", str(run_dir), "--data", str(photos), "-o", str(tmp_path / "e.parquet")], capsys)
    assert code == 2 and "needs pyarrow (pip install pyarrow" in err
    assert not (tmp_path / "e.parquet").exists()


def test_sigterm_stops_embed_with_exit_75_and_no_file(run_dir, photos, tmp_path, capsys, monkeypatch):
    read_image = FolderReader.__getitem__

    def signalled(self, index):
        if index == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the command's handler: stop after this batch
        return read_image(self, index)

    monkeypatch.setattr(FolderReader, "__getitem__", signalled)
    out = tmp_path / "emb.safetensors"
    code, _, err = run(["embed", str(run_dir), "--data", str(photos), "-o", str(out), "--batch-size", "2"], capsys)
    assert code == EXIT_PREEMPTED
    assert [ln for ln in err.splitlines() if ln.startswith("stopped: SIGTERM during feature extraction")]
    assert os.listdir(tmp_path) == []  # no half file, no temporary


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("to", ["torchvision", "timm"])
def test_export_loads_into_the_stock_model_with_only_the_classifier_missing(to, run_dir, tmp_path, capsys):
    out = tmp_path / f"{to}.pth"
    code, text, err = run(["export", str(run_dir), "--to", to, "--out", str(out)], capsys)
    assert code in (0, None), err
    assert "only fc.* missing" in text
    sd = torch.load(out, weights_only=True)
    if to == "timm":
        timm = pytest.importorskip("timm")
        model = timm.create_model("resnet18", pretrained=False)
    else:
        model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    # the stock model without its classifier computes the run's features
    backbone, _ = ckpt.load_backbone(run_dir / "backbone.safetensors")
    model.fc = torch.nn.Identity()
    if to == "timm":
        model.reset_classifier(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), backbone.eval()(x))


def test_export_refuses_a_cifar_stem_and_other_endings(tmp_path, capsys):
    code, _, err = run(["export", "random:resnet18-cifar", "--to", "torchvision", "--out", str(tmp_path / "c.pth")],
                       capsys)
    assert "has the CIFAR stem" in error_line(code, err)
    code, _, err = run(["export", "random:resnet18", "--to", "timm", "--out", str(tmp_path / "c.safetensors")], capsys)
    assert "must end in .pth" in error_line(code, err)
    code, _, err = run(["export", "random:resnet18", "--to", "onnx", "--out", str(tmp_path / "c.pth")], capsys)
    assert "choose detectron2, torchvision or timm" in error_line(code, err)
    assert not list(tmp_path.glob("c.*"))
