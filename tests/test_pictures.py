"""``leoclr views``: the grid shows each image beside the method's own views, before normalisation."""

import re

import numpy as np
import pytest
from PIL import Image

from cliutil import error_line, run
from leoclr_cli.data import open_data
from leoclr_cli.config import load_protocol
from leoclr_cli.report.pictures import HEADER, PAD, box_pixels, sample_images, tile_origin, view_boxes

SIZE = 32
PLAIN = ["--source", "builtin", "--set", "data.builtin_train=16", "--set", f"augment.size={SIZE}",
         "--set", "augment.normalize=builtin", "--cell", str(SIZE)]
NO_COLOUR = ["--set", "augment.color_jitter=false", "--set", "augment.grayscale=false", "--set", "augment.blur=false",
             "--set", "augment.flip=false"]


def tiles(path, rows, cols):
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert grid.shape == (HEADER + rows * (SIZE + PAD) + PAD, cols * (SIZE + PAD) + PAD, 3)
    out = []
    for r in range(rows):
        x0 = [tile_origin(r, c, SIZE) for c in range(cols)]
        out.append([grid[y:y + SIZE, x:x + SIZE] for x, y in x0])
    return out


def rows_shown(text):
    """(index, label) of each row that ``leoclr views`` printed."""
    return [(int(m[1]), int(m[2])) for m in re.finditer(r"row \d+: image (\d+), label (\d+)", text)]


def outline(box):
    """Pixels of a box outline drawn on a SIZE px tile (PIL's inclusive rectangle, one pixel wide)."""
    x0, y0, x1, y1 = box_pixels(box, SIZE)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y1 + 1, [x0, x1]] = mask[[y0, y1], x0:x1 + 1] = True
    return mask


def test_leoclr_views_show_the_whole_image_and_two_crops_whose_boxes_are_drawn(tmp_path, capsys):
    out = tmp_path / "v.png"
    code, text, err = run(["views", *PLAIN, *NO_COLOUR, "--method", "leoclr", "-n", "3", "--out", str(out)], capsys)
    assert code in (0, None), err
    assert "3 images" in text
    shown = rows_shown(text)
    grid = tiles(out, rows=3, cols=4)  # image, original, crop, crop
    source = open_data("builtin", None, "train", builtin_n=16)
    p = load_protocol("pretrain", None, {"augment.size": SIZE, "augment.normalize": "builtin",
                                         **{f"augment.{k}": False for k in ("color_jitter", "grayscale", "blur", "flip")}})
    assert len({label for _, label in shown}) == 3  # three rows, three classes
    for row, (index, label) in zip(grid, shown):
        original = source[index][0]
        assert source[index][1] == label
        image = np.asarray(original.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)).astype(int)
        boxes = view_boxes(p, source, ("original", "crop", "crop"), index, original)
        assert boxes[0] is None and None not in boxes[1:]  # the original is the whole image
        drawn = outline(boxes[1]) | outline(boxes[2])
        assert np.abs(row[0] - image)[~drawn].max() == 0  # the image, and on it
        assert (np.abs(row[0] - image)[drawn].sum(-1) > 0).mean() > 0.5  # the two boxes' outlines
        # no colour augmentation: LeOCLR's original view is the un-normalised whole image
        assert np.abs(row[1] - image).max() <= 1
        # each crop is its box of the image, resized to the view size
        for crop, box in zip(row[2:], boxes[1:]):
            w, h = original.size
            region = original.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
            expected = np.asarray(region.resize((SIZE, SIZE), Image.Resampling.BILINEAR)).astype(int)
            assert np.abs(crop - expected).mean() < 3
        assert np.abs(row[3] - row[2]).mean() > 2  # two different crops


def test_views_sample_across_classes_with_a_seed():
    class Labelled:
        targets = [0] * 12 + [1] * 3 + [2] * 1

        def __len__(self):
            return len(self.targets)

    picked = sample_images(Labelled(), 5, seed=0)
    labels = [Labelled.targets[i] for i in picked]
    assert sorted(labels[:3]) == [0, 1, 2] and len(set(picked)) == 5  # every class before any twice
    assert sample_images(Labelled(), 5, seed=0) == picked and sample_images(Labelled(), 5, seed=1) != picked
    assert sample_images([(None, 0)] * 4, 3, seed=0) == [0, 1, 2]  # streamed images: the first ones


def test_mocov2_views_are_two_crops_and_the_tensor_backend_draws_them_too(tmp_path, capsys):
    for backend in ("pil", "tensor"):
        out = tmp_path / f"{backend}.png"
        code, _, err = run(["views", *PLAIN, "--method", "mocov2", "-n", "2", "--set", f"augment.backend={backend}",
                            "--out", str(out)], capsys)
        assert code in (0, None), err
        grid = tiles(out, rows=2, cols=3)
        assert all(np.abs(row[1] - row[2]).mean() > 2 for row in grid)  # two different augmented crops


def test_views_needs_a_png_name_and_writes_nothing_else(tmp_path, capsys):
    code, _, err = run(["views", *PLAIN, "--out", str(tmp_path / "v.jpg")], capsys)
    assert ".png" in error_line(code, err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, needle", [(["--source", "imagefolder"], "--data"), (["--method", "byol"], "method")])
def test_views_bad_inputs_are_one_line(argv, needle, tmp_path, capsys):
    code, _, err = run(["views", *argv, "--out", str(tmp_path / "v.png")], capsys)
    assert needle in error_line(code, err)
