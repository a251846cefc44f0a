"""Normalisation of a user's own data: augment.normalize auto (measured, recorded, reused by evaluations)
and explicit mean/std."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import fakedata
from cliutil import error_line, run
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.evaluate.crop_test import linear_run_defaults
from leoclr_cli.evaluate.inputs import backbone_and_defaults, own_stats
from leoclr_cli.data import open_data
from leoclr_cli.data.ops import ToNormalized
from leoclr_cli.data.views import measure_normalization

TINY = ["--source", "imagefolder", "--set", "augment.size=32", "--set", "model.dim=8", "--set", "model.bn_splits=2",
        "--arch", "resnet18", "--batch-size", "4", "--set", "method.queue_size=8", "--epochs", "1", "--quiet",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return fakedata.make_imagefolder(tmp_path_factory.mktemp("if") / "data", classes=3, per_class=4, size=32)


def reference_stats(paths):
    pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255
                             for p in paths])
    return pixels.mean(0), pixels.std(0)


def test_measured_stats_are_the_pixels_mean_and_std(folder):
    source = open_data("imagefolder", str(folder), "train")
    mean, std = measure_normalization(source, 32, 1000, seed=0)  # more than the 12 images: all of them
    ref_mean, ref_std = reference_stats(sorted((folder / "train").rglob("*.JPEG")))
    assert np.allclose(mean, ref_mean, atol=1e-6) and np.allclose(std, ref_std, atol=1e-6)
    # a sample: seeded (the same images again), and another seed draws other images
    assert measure_normalization(source, 32, 5, seed=1) == measure_normalization(source, 32, 5, seed=1)
    assert measure_normalization(source, 32, 5, seed=1) != measure_normalization(source, 32, 5, seed=2)


def test_a_constant_channel_is_refused(tmp_path):
    root = tmp_path / "grey"
    for k in range(2):
        (root / "train" / f"c{k}").mkdir(parents=True)
        Image.new("RGB", (16, 16), (10 + 50 * k, 7, 30 * k)).save(root / "train" / f"c{k}" / "a.png")
    with pytest.raises(Exception, match="channel G has one value"):
        measure_normalization(open_data("imagefolder", str(root), "train"), 16, 10, seed=0)


def test_auto_is_measured_before_training_recorded_and_reused(folder, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    code, _, err = run(["pretrain", "--data", str(folder), *TINY, "--set", "augment.normalize=auto",
                        "--set", "augment.normalize_sample=6", "--out", str(run_dir)], capsys)
    assert code in (0, None), err
    expected = measure_normalization(open_data("imagefolder", str(folder), "train"), 32, 6, seed=0)
    aug = yaml.safe_load((run_dir / "protocol.yaml").read_text())["augment"]
    assert aug["normalize"] == "auto" and (tuple(aug["mean"]), tuple(aug["std"])) == expected
    meta = ckpt.read_metadata(run_dir / "backbone.safetensors", ckpt.KIND_BACKBONE)
    assert tuple(json.loads(meta["normalize_mean"])) == expected[0]
    assert json.loads(meta["protocol"])["augment"]["std"] == list(expected[1])

    # a resume takes the recorded values instead of measuring again
    monkeypatch.setattr("leoclr_cli.workflows.pretrain.measure_normalization",
                        lambda *a, **k: pytest.fail("measured again"))
    code, _, err = run(["pretrain", "--data", str(folder), *TINY, "--set", "augment.normalize=auto",
                        "--set", "augment.normalize_sample=6", "--out", str(run_dir), "--resume", "auto"], capsys)
    assert code in (0, None), err

    # every evaluation of the backbone uses them: linear eval (kNN and fine-tuning share its defaults),
    # the crop test after it
    code, _, err = run(["linear-eval", str(run_dir), "--train-augment", "none", "--epochs", "1", "--quiet"], capsys)
    assert code in (0, None), err
    t = yaml.safe_load((run_dir / "linear-eval" / "protocol.yaml").read_text())["transform"]
    assert t["normalize"] == "custom" and (tuple(t["mean"]), tuple(t["std"])) == expected
    crop = linear_run_defaults(run_dir / "linear-eval")
    assert crop["normalize"] == "custom" and (tuple(crop["mean"]), tuple(crop["std"])) == expected
    # transfer and detection take the backbone's own statistics too (detection on the 0..255 scale)
    _, _, defaults = backbone_and_defaults(run_dir)
    own = own_stats(defaults)
    assert own == {"transform.normalize": "custom", "transform.mean": list(expected[0]),
                   "transform.std": list(expected[1])}


def test_named_constants_leave_transfer_and_detection_defaults_alone(random_backbone):
    _, _, defaults = backbone_and_defaults(random_backbone)
    assert defaults["transform.normalize"] == "builtin" and own_stats(defaults) == {}


def test_explicit_mean_and_std(tmp_path, capsys):
    from leoclr_cli.config import load_protocol

    p = load_protocol("pretrain", None, {"augment.mean": [0.2, 0.4, 0.6], "augment.std": [0.5, 0.25, 0.125]})
    assert p.augment.normalize == "custom"
    img = Image.new("RGB", (2, 2), (51, 102, 153))  # 0.2, 0.4, 0.6
    x = ToNormalized(p.augment.norm)(img)
    assert torch.allclose(x, torch.zeros_like(x), atol=1e-6)
    x = ToNormalized(p.augment.norm)(Image.new("RGB", (2, 2), (255, 255, 255)))
    assert torch.allclose(x[:, 0, 0], torch.tensor([0.8 / 0.5, 0.6 / 0.25, 0.4 / 0.125]), atol=1e-5)


@pytest.mark.parametrize("sets, needle", [
    (["augment.mean=[0.5,0.5,0.5]"], "std is missing"),
    (["augment.normalize=imagenet", "augment.mean=[0.5,0.5,0.5]", "augment.std=[0.2,0.2,0.2]"], "set normalize: custom"),
    (["augment.normalize=custom"], "needs mean and std"),
    (["augment.mean=[0.5,0.5,0.5]", "augment.std=[0.2,0,0.2]"], "std must be > 0"),
    (["augment.mean=[0.5,0.5]", "augment.std=[0.2,0.2,0.2]"], "augment.mean"),
])
def test_bad_normalisation_is_one_line(sets, needle, tmp_path, capsys):
    argv = ["pretrain", "--out", str(tmp_path / "r")]
    for item in sets:
        argv += ["--set", item]
    code, _, err = run(argv, capsys)
    line = error_line(code, err)
    assert needle in line and "augment" in line
    assert not (tmp_path / "r").exists()
