"""Your own images: ``source: folder`` (every image under a folder, unlabeled), the own-data recipe of
``leoclr pretrain --data DIR`` without ``-p``, and a batch larger than the images."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from PIL import Image

from cliutil import error_line, run
from fakedata import make_imagefolder, make_photos
from leoclr_cli.config import MethodConfig, PretrainProtocol, load_protocol
from leoclr_cli.data.sources import infer_source, list_folder, open_source
from leoclr_cli.data.views import AugmentedDataset
from leoclr_cli.errors import BadImage, UserError
from leoclr_cli.core.tracking import flat
from leoclr_cli.methods.momentum import own_key_share
from leoclr_cli.workflows.own_data import bn_splits_for, fitting_batch, own_data_protocol, own_data_recipe, queue_for
from leoclr_cli.config.catalog import installed as protocol_file


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """10 photo crops nested by date (``.jpg``, ``.jpeg``, ``.PNG``), plus a text file and a JSON file."""
    return make_photos(tmp_path_factory.mktemp("own") / "photos", n=10, size=32, others=("notes.txt", "a.json"))


# --------------------------------------------------------------------------- the folder source


def test_folder_reads_every_image_at_any_depth_unlabeled_in_a_sorted_order(photos, capsys):
    src = open_source("folder", photos, "train")
    on_disk = sorted(os.path.relpath(os.path.join(d, f), photos).replace(os.sep, "/")
                     for d, _, names in os.walk(photos) for f in names if not f.endswith((".txt", ".json")))
    assert src.files == on_disk and len(src) == 10
    assert any(f.endswith(".PNG") for f in src.files) and any("/" not in f for f in src.files)  # any case, depth
    assert src.targets == [-1] * 10 and src.num_classes == 0
    image, label = src[3]
    assert label == -1 and image.mode == "RGB"
    assert image.size == Image.open(photos / src.files[3]).size
    assert "2 files of other types ignored (.json 1, .txt 1)" in capsys.readouterr().err


def test_folder_follows_symlinks_once_and_never_outside(tmp_path):
    root = make_photos(tmp_path / "p", n=4, others=())
    outside = make_photos(tmp_path / "elsewhere", n=2, others=())
    (root / "link-out").symlink_to(outside, target_is_directory=True)  # leads outside: ignored
    (root / "2023" / "loop").symlink_to(root, target_is_directory=True)  # back to the top: not read twice
    (root / "again").symlink_to(root / "2023", target_is_directory=True)  # a folder also reached directly
    listing = list_folder(root)
    assert len(listing.files) == 4 and len(set(listing.files)) == 4
    assert listing.outside == 1 and listing.looped == 2
    assert "1 symbolic link that lead outside it ignored" in listing.ignored()


def test_folder_bad_images_stop_naming_the_file_or_are_skipped(tmp_path, capsys):
    root = make_photos(tmp_path / "p", n=4, others=())
    bad = root / "2024" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    src = open_source("folder", root, "train")
    i = src.files.index("2024/broken.jpg")
    with pytest.raises(BadImage, match=f"folder image {bad} could not be decoded"):
        src[i]
    skipping = AugmentedDataset(src, lambda im: im.size, on_bad_image="skip")
    assert skipping[i][2] == 1 and skipping[i][0] == src[(i + 1) % len(src)][0].size


def test_folder_without_images_is_one_sentence(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    with pytest.raises(UserError, match=r"holds no image file \(1 file of other types ignored"):
        open_source("folder", tmp_path / "d", "train")


def test_data_inference_reads_a_folder_without_class_folders_as_folder(photos, tmp_path):
    flat_dir = tmp_path / "flat"
    flat_dir.mkdir()
    Image.new("RGB", (8, 8)).save(flat_dir / "a.jpg")
    assert infer_source(flat_dir)[0] == "folder"
    assert infer_source(photos)[0] == "folder"  # nested by year, then by day
    labelled = make_imagefolder(tmp_path / "in", classes=2, per_class=2, size=16)
    assert infer_source(labelled)[0] == "imagefolder"
    assert infer_source(labelled / "train")[0] == "folder"  # class folders alone: images, not a split
    custom = make_imagefolder(tmp_path / "custom", classes=2, per_class=2, size=16, splits=("mine",))
    assert infer_source(custom)[0] == "folder"
    assert infer_source(custom, declared="imagefolder")[0] == "imagefolder"  # a protocol that says so is kept


@pytest.mark.parametrize("command", ["linear-eval", "knn", "finetune"])
def test_commands_that_need_labels_refuse_a_folder_in_one_sentence(command, photos, random_backbone, tmp_path,
                                                                    capsys):
    code, _, err = run([command, str(random_backbone), "--data", str(photos), "-o", str(tmp_path / "r")], capsys)
    line = error_line(code, err)
    assert f"{command} needs labelled images" in line and str(photos) in line
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- the own-data recipe


def test_own_data_yaml_holds_what_the_rule_chooses_for_500_images_on_a_cpu():
    base = flat(yaml.safe_load(protocol_file("own_data.yaml").read_text()))
    p = load_protocol("pretrain", None, {"data.root": "photos"}, base)
    chosen, _ = own_data_recipe(500, "cpu", p, set())
    assert {k: base[k] for k in chosen} == chosen
    assert chosen == {"model.arch": "resnet18", "augment.size": 64, "optim.epochs": 100, "optim.batch_size": 64,
                      "model.bn_splits": 8, "method.queue_size": 256}


@pytest.mark.parametrize("images, device, arch, size, epochs, batch", [
    (12, "cpu", "resnet18", 64, 100, 2),
    (5_000, "cpu", "resnet18", 64, 10, 64),
    (2_000, "cuda", "resnet18", 96, 500, 128),
    (20_000, "cuda", "resnet18", 96, 100, 128),
    (1_281_167, "cuda", "resnet50", 224, 200, 256),
])
def test_the_rule_sizes_the_run_to_the_images_and_the_device(images, device, arch, size, epochs, batch):
    chosen, line = own_data_recipe(images, device, PretrainProtocol(), set())
    assert (chosen["model.arch"], chosen["augment.size"], chosen["optim.epochs"], chosen["optim.batch_size"]) == \
        (arch, size, epochs, batch)
    assert f"{images:,} images on {device}" in line and f"batch {batch}" in line and "\n" not in line
    assert ("augment.backend" in chosen) == (device == "cuda")


@pytest.mark.parametrize("images", [8, 9, 13, 50, 63, 64, 65, 200, 999, 4096, 100_000, 10**7])
@pytest.mark.parametrize("method", ["leoclr", "mocov2"])
def test_the_queue_keeps_own_image_keys_under_5_percent_and_is_a_multiple_of_a_steps_keys(images, method):
    p = PretrainProtocol(method=MethodConfig(name=method))
    chosen, _ = own_data_recipe(images, "cpu", p, set())
    batch, queue, splits = chosen["optim.batch_size"], chosen["method.queue_size"], chosen["model.bn_splits"]
    keys = batch * (2 if method == "leoclr" else 1)
    assert 2 <= batch <= max(2, images // 4) and images // batch >= 4
    assert queue % keys == 0 and 0 < queue <= 65536
    share = own_key_share(images, batch, queue, keys // batch)
    assert share <= 0.05 or queue == keys, share  # one step's keys when even those exceed 5%
    if queue + keys <= 65536:  # the largest such multiple: one step more exceeds 5%
        assert own_key_share(images, batch, queue + keys, keys // batch) > 0.05
    assert batch % splits == 0 and batch >= 2 * splits


def test_a_given_batch_is_kept_and_the_queue_and_bn_splits_follow_it():
    p = PretrainProtocol(optim={"batch_size": 20}, model={"bn_splits": 1})
    chosen, line = own_data_recipe(500, "cpu", p, {"optim.batch_size", "model.arch"})
    assert "optim.batch_size" not in chosen and "model.arch" not in chosen and "resnet18" not in line
    assert chosen["method.queue_size"] == queue_for(500, 20, 2) == 280 and chosen["model.bn_splits"] == 4
    simclr = own_data_recipe(500, "cpu", PretrainProtocol(method={"name": "simclr"}), set())[0]
    assert "method.queue_size" not in simclr  # no queue to size
    assert (fitting_batch(40, 64), bn_splits_for(10), bn_splits_for(2)) == (10, 2, 1)


def test_flags_override_the_rule_and_the_file(photos):
    p, line = own_data_protocol({"data.source": "folder", "data.root": str(photos), "device": "cpu",
                                 "optim.epochs": 3, "augment.size": 32})
    assert p.data.source == "folder" and p.method.name == "leoclr" and p.augment.normalize == "auto"
    assert (p.optim.epochs, p.augment.size, p.optim.batch_size, p.method.queue_size) == (3, 32, 2, 4)
    assert "10 images on cpu" in line and "3 epochs" not in line and "32 px" not in line
    # a batch the file's 8 BN splits do not divide: the splits follow it instead of refusing it
    p, _ = own_data_protocol({"data.source": "folder", "data.root": str(photos), "optim.batch_size": 6})
    assert (p.optim.batch_size, p.model.bn_splits, p.method.queue_size) == (6, 2, 12)  # one step of keys: the most that fits


def test_pretrain_on_a_photo_folder_with_no_protocol_says_its_recipe(photos, tmp_path, capsys):
    run_dir = tmp_path / "mine"
    code, out, err = run(["pretrain", "--data", str(photos), "-o", str(run_dir), "--epochs", "1", "--device", "cpu",
                          "--set", "augment.size=32", "--set", "monitor.knn_every=1"], capsys)
    assert code in (0, None), err
    assert "reading it as --source folder" in err
    assert "own-data recipe" in err and "10 images on cpu" in err and "queue 4" in err
    assert "the kNN monitor (monitor.knn_every 1) needs labels and folder data has none, so it is off" in err
    assert "pretrained leoclr resnet18 for 1 epochs" in out
    saved = yaml.safe_load((run_dir / "protocol.yaml").read_text())
    assert saved["data"]["source"] == "folder" and saved["method"]["queue_size"] == 4
    assert saved["augment"]["mean"] is not None  # normalize auto, measured on the photos
    result = json.loads((run_dir / "result.json").read_text())
    assert result["knn_top1"] is None and (run_dir / "backbone.safetensors").is_file()


def test_a_batch_larger_than_the_images_names_both_numbers(photos, tmp_path, capsys):
    code, _, err = run(["pretrain", "--data", str(photos), "-o", str(tmp_path / "r"), "--batch-size", "16",
                        "--device", "cpu", "--set", "augment.normalize=imagenet"], capsys)
    line = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(line) == 1, err
    assert "the batch size (16) is larger than the 10 images" in line[0]
    assert not (tmp_path / "r").exists()
