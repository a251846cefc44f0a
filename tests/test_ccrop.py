"""ContrastiveCrop: boxes from a feature map, the fallback, Beta sampling inside the image, boxes reaching
DataLoader workers, the warm-up -> box switch in a pretraining run, boxes in the resumable state, `leoclr boxes`."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.data.ccrop import CropBoxes, boxes_from_features, load_boxes, sample_crop
from leoclr_cli.data.views import AugmentedDataset, ViewMaker
from leoclr_cli.workflows.pretrain import run_pretrain
from leoclr_cli.config import AugmentConfig, load_protocol
from cliutil import error_line, run


def test_hot_region_gives_its_box():
    feat = torch.zeros(2, 3, 4, 4)
    feat[0, :, 1:3, 2:4] = 1.0  # rows 1-2, columns 2-3 hot
    feat[1, 1, 0, 0] = 5.0  # one hot cell in the top-left corner
    # same size: no interpolation, the box is exactly the hot cells
    boxes = boxes_from_features(feat, (4, 4), threshold=0.1)
    torch.testing.assert_close(boxes[0], torch.tensor([2 / 4, 1 / 4, 4 / 4, 3 / 4]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0.0, 1 / 4, 1 / 4]))
    # upsampled x8 (bilinear, half-pixel centres): output pixel y samples source row (y + 0.5) / 8 - 0.5,
    # so rising edges pass 0.1 from pixel 5 (rows) / 13 (columns), the falling row edge is last above at 26
    up = boxes_from_features(feat[:1], (32, 32), threshold=0.1)
    torch.testing.assert_close(up[0], torch.tensor([13 / 32, 5 / 32, 32 / 32, 27 / 32]))


def test_nothing_above_the_threshold_falls_back_to_the_whole_image():
    feat = torch.randn(3, 8, 2, 2)
    feat[0] = 0.7  # constant map: min-max normalises to all zeros
    feat[1] = -3.0
    boxes = boxes_from_features(feat, (16, 16), threshold=0.5)
    torch.testing.assert_close(boxes[:2], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
    assert (boxes[2, 2:] > boxes[2, :2]).all()  # a real map gives a non-empty box


def test_beta_sampling_never_leaves_the_image():
    rng = random.Random(0)
    torch.manual_seed(0)
    for _ in range(2000):
        H, W = rng.randint(8, 80), rng.randint(8, 80)
        xs, ys = sorted([rng.random(), rng.random()]), sorted([rng.random(), rng.random()])
        if rng.random() < 0.2:  # degenerate boxes on the image border
            xs = [rng.choice([0.0, 1.0])] * 2
        box = (xs[0], ys[0], xs[1], ys[1])
        alpha = rng.choice([0.1, 0.6, 1.0, 3.0])
        top, left, h, w = sample_crop(H, W, box, (0.2, 1.0), (3 / 4, 4 / 3), alpha)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W and h > 0 and w > 0


def test_crops_centre_in_the_box_and_alpha_below_one_favours_its_edges():
    torch.manual_seed(0)
    box = (0.25, 0.5, 0.5, 0.75)  # x 25..50, y 50..75 of a 100 x 100 image
    centres, near_edge = [], 0
    for _ in range(400):
        top, left, h, w = sample_crop(100, 100, box, (0.01, 0.02), (1.0, 1.0), 0.3)
        cy, cx = top + h // 2, left + w // 2
        centres.append((cx, cy))
        near_edge += min(cx - 25, 50 - cx) < 5
    assert all(24 <= cx <= 51 and 49 <= cy <= 76 for cx, cy in centres)
    assert near_edge > 0.5 * 400  # U-shaped Beta(0.3, 0.3): most centres within 5 px of a vertical box edge


def quadrants(w=32, h=32):
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2:] = (0, 255, 0)
    a[h // 2:, : w // 2] = (0, 0, 255)
    a[h // 2:, w // 2:] = (255, 255, 255)
    return Image.fromarray(a)


class Pictures(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return quadrants(), 0


def test_box_updates_reach_persistent_workers():
    cfg = AugmentConfig(size=8, color_jitter=False, grayscale=False, blur=False, flip=False, normalize="builtin",
                        crops="contrastive", crop_scale=(0.05, 0.06))
    cfg.ccrop.warmup_epochs = 1
    boxes = CropBoxes(4, cfg)
    ds = AugmentedDataset(Pictures(), ViewMaker(cfg, ("crop",), boxes))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True)
    first = next(iter(loader))[0][0]
    boxes.update(torch.tensor([[0.8, 0.8, 1.0, 1.0]] * 4), epoch=1)  # the white quadrant only
    ds.set_epoch(1)  # boxes active from epoch 1
    crops = next(iter(loader))[0][0]  # the same (persistent) worker process
    white = (crops * 0.25 + 0.5 > 0.9).all(dim=1)
    assert white.all(), "the worker cropped outside the updated box"
    assert not torch.equal(first, crops)


TINY = ["--set", "augment.size=32", "--set", "augment.normalize=builtin", "--set", "augment.blur=false",
        "--set", "data.builtin_train=16", "--set", "data.builtin_test=16", "--set", "method.queue_size=16",
        "--set", "model.dim=8", "--set", "model.bn_splits=1", "--arch", "resnet18", "--batch-size", "8", "--quiet",
        "--device", "cpu", "--set", "checkpoint_every=1", "--set", "keep_checkpoints=5"]
CCROP = ["--crops", "contrastive", "--set", "augment.ccrop.warmup_epochs=1", "--set", "augment.ccrop.loc_interval=1",
         "--epochs", "3"]


def test_warmup_then_boxes_resume_and_drawing(capsys, tmp_path):
    run_dir = tmp_path / "run"
    # 2 steps per epoch: global step 5 is a mid-epoch checkpoint in epoch 3, where the boxes are used
    code, _, err = run(["pretrain", "--method", "mocov2", "--out", str(run_dir), *TINY, *CCROP,
                        "--set", "checkpoint_every_steps=5"], capsys)
    assert code in (0, None), err
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # warm-up epoch 1 with random crops, boxes after epochs 1 and 2 (not after the last), box crops from epoch 2
    assert [m["ccrop_active"] for m in metrics] == [False, True, True]
    assert [m.get("ccrop_updated", False) for m in metrics] == [True, True, False]
    boxes, meta = load_boxes(run_dir / "boxes.safetensors")
    assert boxes.shape == (16, 4) and meta["epoch"] == "2" and meta["mode"] == "contrastive"
    assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= 1) & (boxes[:, 2:] > boxes[:, :2])).all()
    state, _ = ckpt.load_tensors(ckpt.state_path(run_dir, 3))
    torch.testing.assert_close(state["extra.dataset.ccrop.boxes"], boxes)
    mid, _ = ckpt.load_tensors(ckpt.state_path(run_dir, 2, 1))
    torch.testing.assert_close(mid["extra.dataset.ccrop.boxes"], boxes)

    # resume from epoch 2, and from the middle of epoch 3, ends bit-identical to the straight run
    # (boxes restored through the dataset's state hook, used in epoch 3)
    p = load_protocol("pretrain", run_dir / "protocol.yaml")
    for name, start in [("resumed", ckpt.state_path(run_dir, 2)), ("resumed_mid", ckpt.state_path(run_dir, 2, 1))]:
        resumed = tmp_path / name
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copy(start, resumed / "checkpoints" / start.name)
        shutil.copy(run_dir / "protocol.yaml", resumed / "protocol.yaml")
        run_pretrain(p, resumed, resume="auto", quiet=True)
        again, _ = ckpt.load_tensors(ckpt.state_path(resumed, 3))
        assert [k for k in state if not torch.equal(state[k], again[k])] == [], name

    png = tmp_path / "grid.png"
    code, out, err = run(["boxes", str(run_dir), "--out", str(png), "--count", "4", "--cell", "32"], capsys)
    assert code in (0, None), err
    grid = np.asarray(Image.open(png))
    assert grid.shape == (2 * 36 + 4, 2 * 36 + 4, 3)
    red = (grid[..., 0] == 255) & (grid[..., 1] == 0) & (grid[..., 2] == 0)
    assert red.sum() >= 4 * 4 * 8  # four drawn rectangles, at least 8 px a side each


def test_boxes_command_errors(capsys, tmp_path):
    code, _, err = run(["boxes", str(tmp_path), "--out", str(tmp_path / "b.png")], capsys)
    assert "no boxes.safetensors" in err and code == 2
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--crops", "sometimes"], "augment.crops"),
    (["--crops", "contrastive", "--set", "augment.ccrop.warmup_epochs=5", "--epochs", "5"], "warmup_epochs"),
    (["--crops", "center-box", "--set", "augment.crop=false"], "augment.crop"),
    (["--set", "augment.ccrop.alpha=0"], "augment.ccrop.alpha"),
])
def test_bad_crop_settings_give_one_line(argv, needle, capsys, tmp_path):
    code, _, err = run(["pretrain", *argv, "--out", str(tmp_path / "r")], capsys)
    assert needle in error_line(code, err)
    assert not (tmp_path / "r").exists()
