"""Pictures of what the method sees: a grid of images, each beside its views as the method gets them
(``leoclr views``, and TensorBoard's ``views`` image); and a run's ContrastiveCrop boxes drawn on its
images (``leoclr boxes``).

The views come from the training pipeline itself (:func:`~..data.pipeline.augmented`: the same view makers
and the same (seed, epoch 0, index) draws as the first epoch), and are shown before normalisation
(:func:`~..data.ops.denormalize`). ContrastiveCrop's boxes do not exist before training, so its crop
views are the warm-up's random crops.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import PretrainProtocol
from ..core.atomic import atomic_write_bytes
from ..core.rundir import RunDir
from ..data import open_pretrain_data
from ..data.ccrop import box_stats, draw_boxes, load_boxes
from ..data.gpu_views import TensorViews
from ..data.ops import denormalize
from ..data.pipeline import augmented
from ..errors import UserError
from ..methods import METHODS

PAD, HEADER = 4, 14


def view_rows(p: PretrainProtocol, source: Any, count: int) -> tuple[list[str], list[list[np.ndarray]]]:
    """(column names, rows): per image, the image squashed to the view size and its views, each an
    (H, W, 3) uint8 array. Column names: ``image`` and the method's view kinds."""
    kinds = METHODS[p.method.name].views
    if hasattr(source, "head"):  # streamed shards: their first images
        source = source.head(count)
    data = augmented(p, source, kinds)
    finish = TensorViews(p.augment, kinds) if p.augment.backend == "tensor" else None
    size = p.augment.size
    rows = []
    for i in range(min(count, len(source))):
        image = source[i][0].convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        out = data[i][0]
        if finish is not None:
            with torch.no_grad():
                out = [v[0] for v in finish((out[0][None], out[1][None]))]
        views = [denormalize(v, p.augment.norm).expand(3, -1, -1).permute(1, 2, 0).numpy() for v in out]
        rows.append([np.asarray(image), *views])
    return ["image", *kinds], rows


def grid(columns: list[str], rows: list[list[np.ndarray]], cell: int) -> Image.Image:
    """The rows as a grid of ``cell`` px tiles under a header naming the columns."""
    width = len(columns) * (cell + PAD) + PAD
    out = Image.new("RGB", (width, HEADER + len(rows) * (cell + PAD) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for c, name in enumerate(columns):
        draw.text((PAD + c * (cell + PAD), 2), name, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            img = Image.fromarray(tile).resize((cell, cell), Image.Resampling.NEAREST)
            out.paste(img, tile_origin(r, c, cell))
    return out


def tile_origin(row: int, col: int, cell: int) -> tuple[int, int]:
    """(x, y) of the top-left pixel of tile (row, col) in :func:`grid`."""
    return PAD + col * (cell + PAD), HEADER + PAD + row * (cell + PAD)


def views_grid(p: PretrainProtocol, source: Any, count: int, cell: Optional[int] = None) -> Image.Image:
    columns, rows = view_rows(p, source, count)
    return grid(columns, rows, cell or max(p.augment.size, 64))


def check_png_name(path: Path) -> None:
    if Path(path).suffix.lower() != ".png":
        raise UserError(f"--out {path}: the picture is written as PNG, give a file name ending in .png")


def write_png(image: Image.Image, path: Path) -> None:
    check_png_name(path)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def views_picture(p: PretrainProtocol, out_file: Path, count: int, cell: Optional[int] = None) -> int:
    """``out_file``: the grid of the first ``count`` images of ``p``'s data beside their views; how many."""
    source = open_pretrain_data(p.data)
    write_png(views_grid(p, source, count, cell), out_file)
    return min(count, len(source))


def boxes_picture(run_dir: Path, out_file: Path, count: int, cell: int) -> dict[str, Any]:
    """``out_file``: the ContrastiveCrop boxes of the pretraining run ``run_dir`` drawn on its first ``count``
    images; the number of images, the boxes' mode and epoch, and the share of whole-image boxes."""
    run = RunDir(Path(run_dir).expanduser())
    if not run.boxes.is_file():
        raise UserError(f"{run.path} holds no {RunDir.BOXES} (pretrain with --crops contrastive or center-box)")
    check_png_name(out_file)
    boxes, meta = load_boxes(run.boxes)
    source = open_pretrain_data(run.read_protocol("pretrain").data)
    if len(source) != boxes.shape[0]:
        raise UserError(f"{run.boxes} holds {boxes.shape[0]} boxes, but the run's data has {len(source)} images")
    n = min(count, len(source))
    write_png(draw_boxes([source[i][0] for i in range(n)], boxes[:n], cell=cell), out_file)
    return {"images": n, "mode": meta.get("mode", ""), "epoch": meta.get("epoch", "?"),
            "whole": box_stats(boxes)["ccrop_whole"]}
