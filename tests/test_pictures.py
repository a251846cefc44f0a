"""``leoclr views``: the grid shows each image beside the method's own views, before normalisation."""

import numpy as np
import pytest
from PIL import Image

from cliutil import error_line, run
from leoclr_cli.data import open_data
from leoclr_cli.report.pictures import HEADER, PAD, tile_origin

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


def test_leoclr_views_show_the_whole_image_and_two_crops(tmp_path, capsys):
    out = tmp_path / "v.png"
    code, text, err = run(["views", *PLAIN, *NO_COLOUR, "--method", "leoclr", "-n", "3", "--out", str(out)], capsys)
    assert code in (0, None), err
    assert "3 images" in text
    grid = tiles(out, rows=3, cols=4)  # image, original, crop, crop
    source = open_data("builtin", None, "train", builtin_n=16)
    for r, row in enumerate(grid):
        image = np.asarray(source[r][0].convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)).astype(int)
        assert np.abs(row[0] - image).max() == 0
        # no colour augmentation: LeOCLR's original view is the un-normalised whole image
        assert np.abs(row[1] - image).max() <= 1
        # the crops are crops: not the whole image, and not each other
        assert np.abs(row[2] - image).mean() > 2 and np.abs(row[3] - row[2]).mean() > 2


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
