"""crop-test (Table 7) and ablate (Figure 4): the two test transforms, and both commands end to end."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from leoclr_cli.workflows.ablate import remove_parts
from leoclr_cli.cli import main
from leoclr_cli.config import AugmentConfig
from leoclr_cli.data.spec import ViewParams, ViewSpec
from leoclr_cli.data.views import crop_test_transform

TINY = ["--set", "augment.size=32", "--set", "augment.normalize=builtin", "--set", "data.builtin_train=64",
        "--set", "data.builtin_test=32", "--set", "method.queue_size=32", "--set", "model.dim=16",
        "--set", "model.bn_splits=2", "--arch", "resnet18", "--batch-size", "16", "--quiet"]


def call(argv, capsys=None):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    cap = capsys.readouterr() if capsys is not None else None
    return exc.value.code or 0, (cap.err if cap else "")


def one_error(code, err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------- the two test transforms


def coordinate_image(w=64, h=48):
    """Red encodes x (0 at the left edge, 255 at the right), green encodes y."""
    a = np.zeros((h, w, 3), np.float32)
    a[..., 0] = np.linspace(0, 255, w)[None, :]
    a[..., 1] = np.linspace(0, 255, h)[:, None]
    return Image.fromarray(a.round().astype(np.uint8))


def extent(t):
    """(x span, y span, x centre) of a view as fractions of the image it was cut from."""
    v = (t * 0.25 + 0.5) * 255  # 'builtin' normalisation undone
    r, g = v[0], v[1]
    n = t.shape[-1]
    grow = n / (n - 1)  # pixel centres span (n - 1) / n of the crop
    return ((r.max() - r.min()).item() / 255 * grow, (g.max() - g.min()).item() / 255 * grow, r.mean().item() / 255)


def seeded(tf, img, seed):
    torch.manual_seed(seed)
    return tf(img)


def test_center_crop_test_is_deterministic_and_keeps_the_aspect():
    img = coordinate_image()  # 64 x 48: shorter side 48 -> 32, so 43 x 32, then the central 28 x 28
    tf = crop_test_transform("center", 28, 32, "builtin")
    a, b = seeded(tf, img, 0), seeded(tf, img, 1)
    assert a.shape == (3, 28, 28) and torch.equal(a, b)
    wx, wy, cx = extent(a)
    assert wx == pytest.approx(28 / 43, abs=0.05) and wy == pytest.approx(28 / 32, abs=0.05)
    assert cx == pytest.approx(0.5, abs=0.02)


def test_random_crop_test_varies_and_uses_the_configured_scale():
    img = coordinate_image()
    tf = crop_test_transform("random", 28, 32, "builtin", scale=(0.3, 0.6))
    views = [seeded(tf, img, s) for s in range(24)]
    assert all(v.shape == (3, 28, 28) for v in views)
    areas, centres = [], []
    for v in views:
        wx, wy, cx = extent(v)
        areas.append(wx * wy)  # the image is first squashed to 32 x 32, so spans are fractions of a square
        centres.append(cx)
    assert min(areas) > 0.3 - 0.06 and max(areas) < 0.6 + 0.06, areas
    assert max(centres) - min(centres) > 0.1  # the crop moves
    assert len({tuple(v.flatten().tolist()) for v in views}) > 16
    # the whole image when the scale range is (1, 1) and the ratio square: a squash, not a crop
    full = extent(seeded(crop_test_transform("random", 28, 32, "builtin", scale=(1, 1), ratio=(1, 1)), img, 0))
    assert full[0] == pytest.approx(1, abs=0.05) and full[1] == pytest.approx(1, abs=0.05)


def test_all_but_crop_switches_off_every_part_but_the_crop():
    cfg = AugmentConfig(size=32, normalize="builtin")
    fields, already = remove_parts(cfg, ["all-but-crop", "color"])
    assert fields == ["color_jitter", "grayscale", "blur", "flip"] and already == []
    assert cfg.crop and not (cfg.color_jitter or cfg.grayscale or cfg.blur or cfg.flip)
    spec = ViewSpec(cfg, ("crop",))
    torch.manual_seed(0)
    drawn = [spec.draw("crop", 64, 48) for _ in range(50)]
    assert len({p.box for p in drawn}) > 10  # the crop,
    assert all(p == ViewParams(*p[:4]) for p in drawn)  # and nothing else before to-tensor + normalise


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A tiny full-augmentation LeOCLR run with its (cached-feature) linear evaluation."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert call(["pretrain", "--out", run, *TINY, "--epochs", "1"])[0] == 0
    assert call(["linear-eval", run, "--train-augment", "none", "--epochs", "3", "--quiet"])[0] == 0
    return run


def test_crop_test_end_to_end(baseline, capsys, tmp_path):
    code, err = call(["crop-test", baseline, "--repeats", "2", "--out", tmp_path / "ct"], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "ct" / "result.json").read_text())
    lin = json.loads((baseline / "linear-eval" / "result.json").read_text())
    assert r["kind"] == "crop-test" and r["test_images"] == 32 and r["method"] == "leoclr"
    # at 32 px the center test is the image itself, as in the linear evaluation: the saved (selected) classifier,
    # its feature BN included, gives the same accuracy
    assert r["center_top1"] == pytest.approx(lin["top1"])
    assert len(r["random_top1_each"]) == 2
    assert r["random_top1"] == pytest.approx(sum(r["random_top1_each"]) / 2)
    assert r["drop"] == pytest.approx(r["center_top1"] - r["random_top1"])
    proto = yaml.safe_load((tmp_path / "ct" / "protocol.yaml").read_text())
    assert proto["size"] == 32 and proto["resize"] == 32 and proto["normalize"] == "builtin"  # from the linear run

    # a backbone other than the one the classifier was trained on is refused
    from leoclr_cli.core import checkpoint as ckpt
    from leoclr_cli.core.nets import build_backbone

    other = tmp_path / "other.safetensors"
    ckpt.save_backbone(other, build_backbone("resnet18"), arch="resnet18", cifar_stem=False, method="random-init",
                       epoch=0, protocol_json="{}")
    code, err = call(["crop-test", baseline, "--backbone", other, "--out", tmp_path / "ct2"], capsys)
    assert "SHA-256" in one_error(code, err) and not (tmp_path / "ct2").exists()


def test_ablate_end_to_end_records_parts_and_drop(baseline, capsys, tmp_path):
    out = tmp_path / "ab"
    code, err = call(["ablate", "--remove", "color", "--remove", "grayscale,color", "--baseline", baseline,
                      "--quiet", "--out", out], capsys)
    assert code == 0, err
    r = json.loads((out / "result.json").read_text())
    base = json.loads((baseline / "linear-eval" / "result.json").read_text())
    assert r["kind"] == "ablate" and r["removed"] == ["color", "grayscale"]
    assert r["removed_fields"] == ["color_jitter", "grayscale"] and r["differs_from_baseline"] == []
    assert r["baseline_top1"] == base["top1"]
    assert r["drop"] == pytest.approx(base["top1"] - r["top1"])
    lin = json.loads((out / "pretrain" / "linear-eval" / "result.json").read_text())
    assert r["top1"] == lin["top1"]
    # the pretraining is the baseline's protocol with exactly those parts off
    ours = yaml.safe_load((out / "pretrain" / "protocol.yaml").read_text())
    theirs = yaml.safe_load((baseline / "protocol.yaml").read_text())
    assert ours["augment"] == {**theirs["augment"], "color_jitter": False, "grayscale": False}
    assert {k: v for k, v in ours.items() if k != "augment"} == {k: v for k, v in theirs.items() if k != "augment"}
    assert yaml.safe_load((out / "pretrain" / "linear-eval" / "protocol.yaml").read_text()) == \
        yaml.safe_load((baseline / "linear-eval" / "protocol.yaml").read_text())


@pytest.mark.parametrize("extra, needle", [
    (["--remove", "colour"], "remove"),
    (["--remove", "color", "--method", "mocov2"], "same method"),
    (["--remove", "blur", "--set", "augment.blur=false"], "nothing would be removed"),
])
def test_ablate_bad_input_one_line(baseline, capsys, tmp_path, extra, needle):
    code, err = call(["ablate", *extra, "--baseline", baseline, "--out", tmp_path / "ab"], capsys)
    assert needle in one_error(code, err)
    assert not (tmp_path / "ab").exists()
