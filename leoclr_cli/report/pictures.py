"""Pictures of what the method sees: a grid of images, each beside its views as the method gets them
(``leoclr views``, and TensorBoard's ``views`` image); a run's ContrastiveCrop boxes drawn on its
images (``leoclr boxes``); and the picture of learning (``learning.png`` of ``leoclr quickstart`` and
``leoclr report``): the monitors' top-1 after each epoch of pretraining runs (:func:`learning_picture`).

The views come from the training pipeline itself (:func:`~..data.pipeline.augmented`: the same view makers
and the same (seed, epoch 0, index) draws as the first epoch), and are shown before normalisation
(:func:`~..data.ops.denormalize`). ContrastiveCrop's boxes do not exist before training, so its crop
views are the warm-up's random crops.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import PretrainProtocol
from ..core.atomic import atomic_write_bytes
from ..core.engine import read_metrics
from ..core.rundir import RunDir
from ..data import open_pretrain_data
from ..data.ccrop import box_stats, draw_boxes, load_boxes
from ..data.gpu_views import TensorViews
from ..data.ops import denormalize
from ..data.pipeline import augmented
from ..data.spec import ViewSpec
from ..data.views import AugmentedDataset
from ..errors import UserError
from ..methods import METHODS

PAD, HEADER = 4, 14


#: outline colours of the crop views' boxes on the image, in the order of the view columns
BOX_COLOURS = ((230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48))


def sample_images(source: Any, count: int, seed: int) -> list[int]:
    """``count`` indices of ``source`` drawn with ``seed`` across its classes: the classes in a seeded order,
    one image of each in turn (each class's images in a seeded order), so a few rows show many classes;
    unlabeled images (label -1): a seeded sample. A list of streamed images: its first ``count``."""
    n = len(source)
    targets = getattr(source, "targets", None)
    if targets is None:
        return list(range(min(count, n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(int(targets[i]), []).append(i)
    picked: list[int] = []
    queues = list(by_class.values())
    while len(picked) < min(count, n):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


class _Draws:
    """An image -> the view parameters the augmentation spec draws for it (what the views are made from)."""

    def __init__(self, spec: ViewSpec):
        self.spec = spec

    def __call__(self, img: Image.Image) -> list:
        return self.spec.draws(img.width, img.height)


def view_boxes(p: PretrainProtocol, source: Any, kinds: tuple[str, ...], index: int,
               image: Image.Image) -> list[Optional[tuple[float, float, float, float]]]:
    """Per view of image ``index`` (decoded as ``image``), its crop as fractions (left, top, right, bottom) of
    the image, None where the view is the whole image: the same (seed, epoch 0, index) draws as the views."""
    params = AugmentedDataset(source, _Draws(ViewSpec(p.augment, kinds)), seed=p.seed).make(image, index)
    w, h = image.size
    return [None if q.pad or q.box == (0, 0, w, h) else (q.left / w, q.top / h, (q.left + q.width) / w,
                                                         (q.top + q.height) / h) for q in params]


def box_pixels(box: tuple[float, float, float, float], cell: int) -> tuple[int, int, int, int]:
    """The outline of ``box`` (fractions) on a ``cell`` px tile, as PIL's inclusive (x0, y0, x1, y1)."""
    return tuple(min(cell - 1, round(v * cell)) for v in box)  # type: ignore[return-value]


@dataclass
class ViewRow:
    """One row of the views grid: the image's index and label, the image squashed to the view size, its
    views (each (H, W, 3) uint8) and each view's crop box on the image (None: the whole image)."""

    index: int
    label: int
    image: np.ndarray
    views: list[np.ndarray]
    boxes: list[Optional[tuple[float, float, float, float]]]


def view_rows(p: PretrainProtocol, source: Any, count: int) -> tuple[list[str], list[ViewRow]]:
    """(column names, rows) for ``count`` images sampled across the classes (:func:`sample_images`, the
    protocol's seed). Column names: ``image`` and the method's view kinds."""
    kinds = METHODS[p.method.name].views
    if p.augment.normalize == "auto" and p.augment.mean is None:  # shown before normalisation: any constants do
        p = p.model_copy(update={"augment": p.augment.model_copy(update={"normalize": "imagenet"})})
    if hasattr(source, "head"):  # streamed shards: their first images
        source = source.head(count)
    data = augmented(p, source, kinds)
    finish = TensorViews(p.augment, kinds) if p.augment.backend == "tensor" else None
    size = p.augment.size
    rows = []
    for i in sample_images(source, count, p.seed):
        original, label = source[i]
        image = original.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        out = data[i][0]
        if finish is not None:
            with torch.no_grad():
                out = [v[0] for v in finish((out[0][None], out[1][None]))]
        views = [denormalize(v, p.augment.norm).expand(3, -1, -1).permute(1, 2, 0).numpy() for v in out]
        rows.append(ViewRow(i, int(label), np.asarray(image), views, view_boxes(p, source, kinds, i, original)))
    return ["image", *kinds], rows


def grid(columns: list[str], rows: list[ViewRow], cell: int, names: Optional[list[str]] = None) -> Image.Image:
    """The rows as a grid of ``cell`` px tiles under a header naming the columns; each crop view's box is
    drawn on the image in the colour of its column's name; ``names``: the class names labels index."""
    width = len(columns) * (cell + PAD) + PAD
    out = Image.new("RGB", (width, HEADER + len(rows) * (cell + PAD) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    crops = [c for c in range(1, len(columns)) if any(row.boxes[c - 1] is not None for row in rows)]
    colour = {c: BOX_COLOURS[k % len(BOX_COLOURS)] for k, c in enumerate(crops)}
    for c, name in enumerate(columns):
        draw.text((PAD + c * (cell + PAD), 2), name, fill=colour.get(c, (0, 0, 0)))
    for r, row in enumerate(rows):
        for c, tile in enumerate([row.image, *row.views]):
            img = Image.fromarray(tile).resize((cell, cell), Image.Resampling.NEAREST)
            if c == 0:
                pen = ImageDraw.Draw(img)
                for k, box in enumerate(row.boxes):
                    if box is not None:
                        pen.rectangle(box_pixels(box, cell), outline=colour[k + 1])
                if row.label >= 0 and cell >= 48:
                    pen.text((2, cell - 12), label_name(row.label, names), fill=(255, 255, 255))
            out.paste(img, tile_origin(r, c, cell))
    return out


def label_name(label: int, names: Optional[list[str]]) -> str:
    """A label as its class name when known ('-1' is unlabeled)."""
    if label < 0:
        return "unlabeled"
    return str(names[label]) if names and label < len(names) else str(label)


def tile_origin(row: int, col: int, cell: int) -> tuple[int, int]:
    """(x, y) of the top-left pixel of tile (row, col) in :func:`grid`."""
    return PAD + col * (cell + PAD), HEADER + PAD + row * (cell + PAD)


def views_grid(p: PretrainProtocol, source: Any, count: int, cell: Optional[int] = None) -> Image.Image:
    columns, rows = view_rows(p, source, count)
    return grid(columns, rows, cell or max(p.augment.size, 64), getattr(source, "classes", None))


def check_png_name(path: Path) -> None:
    if Path(path).suffix.lower() != ".png":
        raise UserError(f"--out {path}: the picture is written as PNG, give a file name ending in .png")


def write_png(image: Image.Image, path: Path) -> None:
    check_png_name(path)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def views_picture(p: PretrainProtocol, out_file: Path, count: int, cell: Optional[int] = None) -> list[str]:
    """``out_file``: the grid of ``count`` images of ``p``'s data sampled across its classes, beside their
    views, the crops' boxes drawn on each image; one line per row (its index, label and file)."""
    source = open_pretrain_data(p.data)
    columns, rows = view_rows(p, source, count)
    names, files = getattr(source, "classes", None), getattr(source, "files", None)
    write_png(grid(columns, rows, cell or max(p.augment.size, 64), names), out_file)
    lines = []
    for r, row in enumerate(rows):
        name = label_name(row.label, names)
        number = f" ({row.label})" if name not in (str(row.label), "unlabeled") else ""
        file = f", {files[row.index]}" if files else ""
        lines.append(f"row {r + 1}: image {row.index}, label {name}{number}{file}")
    return lines


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


# --------------------------------------------------------------------------- matplotlib figures


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


#: the monitors' records in metrics.jsonl, and how :func:`learning_picture` names and draws them
LEARNING_KEYS = (("knn_top1", "kNN", "-"), ("linear_top1", "online probe", "--"))


def learning_series(run_dir: Path, label: str) -> dict[str, Any]:
    """What :func:`learning_picture` draws of the pretraining run ``run_dir``: its seed, the monitors'
    ``(epoch, top-1)`` from ``metrics.jsonl``, and from its ``result.json`` (once finished) the kNN top-1 of
    the random-init backbone of its arch and seed and the number of classes (None where not recorded)."""
    run = RunDir(Path(run_dir))
    records = read_metrics(run.metrics)
    result = run.read_result() if run.result.is_file() else {}
    out: dict[str, Any] = {"label": label, "seed": run.protocol_tree().get("seed"),
                           "random_init": result.get("knn_top1_random_init"),
                           "classes": result.get("monitor_classes")}
    for key, _, _ in LEARNING_KEYS:
        out[key] = [(m["epoch"], m[key]) for m in records if m.get(key) is not None and "epoch" in m]
    return out


def has_monitor(series: dict[str, Any]) -> bool:
    return any(series[key] for key, _, _ in LEARNING_KEYS)


def learning_picture(series: list[dict[str, Any]]) -> tuple[bytes, list[dict[str, Any]]]:
    """One panel per seed: each run's kNN monitor top-1 (solid) and online-probe top-1 (dashed) after each
    epoch, the random-init backbone's kNN top-1 (a grey horizontal line, one per distinct value) and chance,
    100 / classes (dotted). ``series``: :func:`learning_series` of each run (runs without monitor records are
    left out). Returns (PNG, the plotted lines as read back from the axes: panel seed, kind, label, x, y)."""
    plt = pyplot()
    drawn = [s for s in series if has_monitor(s)]
    seeds = sorted({s["seed"] for s in drawn}, key=lambda v: (v is None, v)) or [None]
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(s["label"] for s in drawn))
    for ax, seed in zip(axes[0], seeds):
        mine = [s for s in drawn if s["seed"] == seed]
        for s in mine:
            colour = colours[labels.index(s["label"]) % len(colours)]
            for key, name, style in LEARNING_KEYS:
                if s[key]:
                    (line,) = ax.plot(*zip(*s[key]), style, color=colour, marker="o" if len(s[key]) < 30 else None,
                                      markersize=3, label=f"{s['label']}, {name}")
                    line.set_gid(key)
        for value in dict.fromkeys(s["random_init"] for s in mine if s["random_init"] is not None):
            ax.axhline(value, color="grey", linewidth=1.2, label=f"random init, kNN ({value:.1f})", gid="random_init")
        for classes in dict.fromkeys(s["classes"] for s in mine if s["classes"]):
            ax.axhline(100.0 / classes, color="black", linestyle=":", linewidth=1,
                       label=f"chance (1/{classes})", gid="chance")
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 on the test split (%)")
        ax.set_title(f"seed {seed}" if seed is not None else "")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no monitor (monitor.knn_every, monitor.linear_every)", ha="center", va="center",
                    transform=ax.transAxes)
    fig.suptitle("Learning: the monitors' top-1 after each pretraining epoch")
    plotted = [{"seed": seed, "kind": line.get_gid(), "label": line.get_label(),
                "x": [float(v) for v in line.get_xdata()], "y": [float(v) for v in line.get_ydata()]}
               for ax, seed in zip(axes[0], seeds) for line in ax.lines]
    data = png_bytes(fig)
    plt.close(fig)
    return data, plotted


def write_learning(path: Path, series: list[dict[str, Any]]) -> Optional[list[dict[str, Any]]]:
    """Write :func:`learning_picture` of ``series`` to ``path`` when a run has monitor records; returns the
    plotted lines (None, and nothing written, when no run has any)."""
    if not any(has_monitor(s) for s in series):
        return None
    data, plotted = learning_picture(series)
    atomic_write_bytes(Path(path), data)
    return plotted
