"""Every damaged file and bad input through the CLI: one sentence naming the file or field, exit
status 2, and no result file left looking complete. Also ``leoclr import`` of MoCo-style
``.pth.tar`` files, which must never unpickle anything but tensors and plain containers."""

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from fakedata import imagefolder_class, make_imagefolder
import leoclr_cli
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core.nets import build_backbone
from cliutil import error_line, run

TINY = ["--method", "mocov2", "--arch", "resnet18", "--batch-size", "4", "--epochs", "1", "--device", "cpu",
        "--quiet", "--set", "augment.size=16", "--set", "augment.blur=false", "--set", "augment.normalize=builtin",
        "--set", "method.queue_size=4", "--set", "model.dim=8", "--set", "model.bn_splits=2"]


def no_result(run_dir: Path):
    assert not (run_dir / "result.json").exists() and not (run_dir / "backbone.safetensors").exists()


# --------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bb") / "backbone.safetensors"
    torch.manual_seed(0)
    ckpt.save_backbone(path, build_backbone("resnet18"), arch="resnet18", cifar_stem=False, method="leoclr",
                       epoch=1, protocol_json=json.dumps({"data": {"source": "builtin"}}))
    return path


def damage(good: Path, out: Path, how: str) -> Path:
    data = bytearray(good.read_bytes())
    n = int.from_bytes(data[:8], "little")
    if how == "truncated-half":
        data = data[: len(data) // 2]
    elif how == "truncated-last-byte":
        data = data[:-1]
    elif how == "truncated-in-header":
        data = data[: 8 + n // 2]
    elif how == "bit-flip-in-tensors":
        data[8 + n + (len(data) - 8 - n) // 2] ^= 0x04
    elif how == "bit-flip-in-metadata":
        at = data.index(b'"method":"leoclr"') + len('"method":"l')
        data[at] ^= 0x01  # 'leoclr' -> 'meoclr': still valid JSON, a different header
    elif how == "appended-bytes":
        data += b"\0" * 16
    out.write_bytes(bytes(data))
    return out


HOWS = ["truncated-half", "truncated-last-byte", "truncated-in-header", "bit-flip-in-tensors",
        "bit-flip-in-metadata", "appended-bytes"]


@pytest.mark.parametrize("how", HOWS)
def test_damaged_backbone_is_refused_by_info(backbone_file, tmp_path, capsys, how):
    bad = damage(backbone_file, tmp_path / f"{how}.safetensors", how)
    line = error_line(*run(["info", str(bad)], capsys)[::2])
    assert str(bad) in line and re.search(r"truncated|corrupted|not a readable", line), line


def test_damaged_backbone_is_refused_by_knn_without_a_result(backbone_file, tmp_path, capsys):
    bad = damage(backbone_file, tmp_path / "flip.safetensors", "bit-flip-in-tensors")
    code, _, err = run(["knn", str(bad), "--out", str(tmp_path / "knn")], capsys)
    assert "is corrupted" in error_line(code, err)
    assert not (tmp_path / "knn").exists()


@pytest.fixture(scope="module")
def state_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "checkpoints" / "state_e0001.safetensors"
    model = torch.nn.Linear(3, 2)
    ckpt.save_train_state(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epoch=1,
                          protocol_json="{}")
    return path


@pytest.mark.parametrize("how", ["truncated-half", "bit-flip-in-tensors"])
def test_damaged_train_state_is_refused_on_resume(state_file, tmp_path, capsys, how):
    bad = damage(state_file, tmp_path / "state_e0001.safetensors", how)
    run_dir = tmp_path / "r"
    code, _, err = run(["pretrain", *TINY, "--set", "data.builtin_train=16", "--set", "data.builtin_test=16",
                        "--out", str(run_dir), "--resume", str(bad)], capsys)
    line = error_line(code, err)
    assert str(bad) in line and ("truncated" in line or "corrupted" in line)
    no_result(run_dir)


def test_intact_files_pass_and_carry_a_checksum(backbone_file, state_file):
    assert len(ckpt.read_metadata(backbone_file)[ckpt.CHECKSUM_KEY]) == 64
    ckpt.verify(backbone_file), ckpt.verify(state_file)


def test_wrong_kind_of_file_for_the_command(state_file, tmp_path, capsys):
    code, _, err = run(["knn", str(state_file), "--out", str(tmp_path / "k")], capsys)
    assert "holds a 'train-state', but a 'backbone' is needed" in error_line(code, err)


def test_a_backbone_whose_tensors_are_not_its_arch(backbone_file, tmp_path, capsys):
    tensors, meta = ckpt.load_tensors(backbone_file)
    liar = tmp_path / "liar.safetensors"
    ckpt.save_tensors(liar, tensors, {**{k: v for k, v in meta.items() if k != ckpt.CHECKSUM_KEY}, "arch": "resnet50"})
    code, _, err = run(["knn", str(liar), "--out", str(tmp_path / "k")], capsys)
    assert "does not match a resnet50" in error_line(code, err)


# --------------------------------------------------------------------------- bad data


def folder_with_bad_images(root: Path) -> tuple[Path, list[Path]]:
    """12 files in 3 classes, 2 of them unreadable: random bytes, and a JPEG cut in half."""
    make_imagefolder(root, classes=3, per_class=4, size=20, splits=("train",))
    junk = root / "train" / imagefolder_class(1) / f"{imagefolder_class(1)}_1.JPEG"
    junk.write_bytes(b"\xff\xd8\xff not an image at all")
    cut = root / "train" / imagefolder_class(2) / f"{imagefolder_class(2)}_2.JPEG"
    Image.effect_noise((20, 20), 64).convert("RGB").save(cut, format="JPEG")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return root, [junk, cut]


def test_bad_image_stops_the_run_naming_the_file_by_default(tmp_path, capsys):
    root, bad = folder_with_bad_images(tmp_path / "data")
    run_dir = tmp_path / "r"
    code, _, err = run(["pretrain", "--source", "imagefolder", "--data", str(root), *TINY, "--out", str(run_dir)],
                       capsys)
    line = error_line(code, err)
    assert any(str(b) in line for b in bad) and "could not be decoded" in line
    no_result(run_dir)


def test_bad_images_skipped_and_counted(tmp_path, capsys):
    root, _ = folder_with_bad_images(tmp_path / "data")
    run_dir = tmp_path / "r"
    code, _, err = run(["pretrain", "--source", "imagefolder", "--data", str(root), *TINY, "--out", str(run_dir),
                        "--on-bad-image", "skip"], capsys)
    assert code in (0, None), err
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["bad_images_skipped"] for m in metrics] == [2]  # 12 files, 3 batches of 4: each drawn once
    assert err.count("warning: imagefolder image") == 2  # each named once
    assert (run_dir / "backbone.safetensors").is_file()


@pytest.mark.parametrize("case, needle", [
    ("empty-class", "has no images"),
    ("empty-dataset", "has no images"),
    ("no-class-folders", "has no class folders"),
    ("bad-choice", "data.on_bad_image"),
    ("batch-larger-than-data", "the batch size (8) is larger than the 4 images of the dataset"),
])
def test_bad_data_inputs(tmp_path, capsys, case, needle):
    root = make_imagefolder(tmp_path / "data", classes=2, per_class=2, size=20, splits=("train",))
    extra = []
    if case == "empty-class":
        for f in (root / "train" / imagefolder_class(1)).iterdir():
            f.unlink()
    elif case == "empty-dataset":
        for folder in (root / "train").iterdir():
            for f in folder.iterdir():
                f.unlink()
    elif case == "no-class-folders":
        for folder in (root / "train").iterdir():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
    elif case == "bad-choice":
        extra = ["--on-bad-image", "ignore"]
    elif case == "batch-larger-than-data":
        extra = ["--batch-size", "8"]
    run_dir = tmp_path / "r"
    code, _, err = run(["pretrain", "--source", "imagefolder", "--data", str(root), *TINY, *extra,
                        "--out", str(run_dir)], capsys)
    line = error_line(code, err)
    assert needle in line
    if case.startswith("empty") or case == "no-class-folders":
        assert str(root / "train") in line
    assert not run_dir.exists()  # refused before its first step: the corrected command needs no --force


# --------------------------------------------------------------------------- import, no unpickling


def moco_checkpoint(path: Path, arch: str = "resnet18", prefix: str = "module.encoder_q.") -> torch.nn.Module:
    """What MoCo's main_moco.py saves: DataParallel keys, an MLP head as fc.0/fc.2, the key encoder,
    the queue, the optimizer state, epoch and arch."""
    torch.manual_seed(1)
    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = torch.nn.Sequential(torch.nn.Linear(net.fc.in_features, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    sd = {f"{prefix}{k}": v for k, v in net.state_dict().items()}
    if "encoder_q" in prefix:
        sd.update({f"module.encoder_k.{k}": v + 1 for k, v in net.state_dict().items()})
        sd["module.queue"], sd["module.queue_ptr"] = torch.randn(16, 32), torch.zeros(1, dtype=torch.long)
    opt = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    torch.save({"epoch": 200, "arch": arch, "state_dict": sd, "optimizer": opt.state_dict()}, path)
    return net


@pytest.mark.parametrize("prefix", ["module.encoder_q.", "encoder_q.", "module.", ""])
def test_import_moco_checkpoint_round_trip(tmp_path, capsys, prefix):
    src = tmp_path / "moco_v2_200ep_pretrain.pth.tar"
    net = moco_checkpoint(src, prefix=prefix)
    out = tmp_path / "backbone.safetensors"
    code, text, err = run(["import", str(src), "--out", str(out)], capsys)
    assert code in (0, None), err
    assert "resnet18" in text
    loaded, meta = ckpt.load_backbone(out)
    assert meta["arch"] == "resnet18" and meta["method"] == "imported" and meta["epoch"] == "200"
    want = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    got = loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)  # encoder_q, not _k
    # and it loads into a stock torchvision model, leaving only fc missing
    stock = torchvision.models.resnet18(weights=None)
    missing, unexpected = stock.load_state_dict(ckpt.load_tensors(out)[0], strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and unexpected == []
    # an existing output is not overwritten without --force
    code, _, err = run(["import", str(src), "--out", str(out)], capsys)
    assert "already exists" in error_line(code, err)


def test_import_wrong_arch_is_one_sentence(tmp_path, capsys):
    src = tmp_path / "r18.pth.tar"
    moco_checkpoint(src)
    code, _, err = run(["import", str(src), "--out", str(tmp_path / "b.safetensors"), "--arch", "resnet50"], capsys)
    line = error_line(code, err)
    assert "does not match a resnet50" in line and str(src) in line
    assert not (tmp_path / "b.safetensors").exists()


class Payload:
    """An object whose unpickling would run code (create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("content", ["code", "junk"])
def test_import_refuses_what_weights_only_cannot_load(tmp_path, capsys, content):
    src, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    if content == "code":
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Payload(str(marker))}, src)
    else:
        src.write_bytes(b"PK\x03\x04 not a torch file")
    code, _, err = run(["import", str(src), "--out", str(tmp_path / "b.safetensors")], capsys)
    line = error_line(code, err)
    assert str(src) in line and "weights_only=True" in line and "\x1b" not in err
    if content == "code":  # the global the pickle needed (Path.touch is reached through getattr), nothing else
        assert line.endswith("refused the Python global 'getattr' it needs")
    else:
        assert line.endswith("cannot read it (PytorchStreamReader failed reading zip archive: not a ZIP archive)")
    assert not marker.exists() and not (tmp_path / "b.safetensors").exists()


def test_no_code_path_unpickles_a_user_file():
    """torch.load only with weights_only=True; pickle only through the restricted CIFAR unpickler."""
    package = Path(leoclr_cli.__file__).parent
    for path in package.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        for m in re.finditer(r"pickle\.(loads?|Unpickler)\b", text):
            assert path.name == "sources.py" and m.group(1) == "Unpickler", (path, m.group(0))
