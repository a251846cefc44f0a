"""The built-in dataset: seeded, generated, labelled shapes on cluttered backgrounds. No download.

Each 32x32 image holds one object of one of ten shape classes, drawn at a random position
(not centred), size, rotation and palette colour on a gradient background of a palette colour with a few
small distractor specks. The label is the shape only, so colour and position carry no label
information and a representation has to encode shape. A random crop at scale 0.2 covers about
14x14 pixels: it can miss the object or show only part of it, which is the situation LeOCLR is
about; the whole (original) image always shows it.

Generation is deterministic in (seed, split, index) and takes well under a second for thousands
of images, so nothing is stored on disk.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

CLASSES = ("disk", "ring", "triangle", "square", "plus", "star", "hbar", "vbar", "ell", "half-disk")
SIZE = 32
_SUPER = 4  # draw at 4x and downsample: antialiased edges
_SPLIT_SEED = {"train": 0, "test": 1}
# A small palette: colour alone cannot tell two images apart, so instance discrimination has to
# look at the object (its shape, place and size) rather than at colours.
PALETTE = np.array([[230, 60, 50], [60, 170, 75], [50, 90, 220], [240, 200, 40], [150, 60, 190],
                    [40, 190, 200], [245, 130, 40], [235, 235, 235], [40, 40, 40], [120, 120, 120]])


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _polygon(shape: str, r: float) -> np.ndarray | None:
    """Vertices (unit: pixels, centred at 0) of the polygonal shapes; None for the round ones."""
    if shape == "triangle":
        a = np.deg2rad([90, 210, 330])
        return np.stack([np.cos(a), -np.sin(a)], 1) * r
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r * 0.8
    if shape == "plus":
        t = 0.33
        return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1],
                         [-t, t], [-1, t], [-1, -t], [-t, -t]]) * r
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([np.cos(a) * rad, np.sin(a) * rad], 1) * r
    if shape == "hbar":
        return np.array([[-1, -0.3], [1, -0.3], [1, 0.3], [-1, 0.3]]) * r
    if shape == "vbar":
        return np.array([[-0.3, -1], [0.3, -1], [0.3, 1], [-0.3, 1]]) * r
    if shape == "ell":
        t = 0.38
        return np.array([[-1, -1], [-1 + 2 * t, -1], [-1 + 2 * t, 1 - 2 * t], [1, 1 - 2 * t], [1, 1], [-1, 1]]) * r * 0.85
    if shape == "half-disk":
        a = np.linspace(0, math.pi, 24)
        return np.stack([np.cos(a), np.sin(a) - 0.4], 1) * r
    return None


def render(label: int, rng: np.random.Generator) -> np.ndarray:
    """One (SIZE, SIZE, 3) uint8 image of class ``label``, every free choice drawn from ``rng``."""
    big = SIZE * _SUPER
    # background: a gradient between two palette colours along a random direction, plus noise
    c0 = PALETTE[rng.integers(len(PALETTE))].astype(np.float64)
    c1 = np.clip(c0 + rng.normal(0, 25, 3), 0, 255)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big
    t = np.clip((xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta) + 0.5, 0, 1)[..., None]
    bg = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    # distractors: small specks that are not any class
    for _ in range(rng.integers(1, 4)):
        x, y = rng.uniform(0, big, 2)
        w = rng.uniform(1.5, 3) * _SUPER
        draw.rectangle([x, y, x + w, y + w], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    # the object: its colour far enough from the background's mean colour to be visible
    mean_bg = (c0 + c1) / 2
    far = [c for c in PALETTE if np.abs(c - mean_bg).sum() > 200]
    colour = far[rng.integers(len(far))] if far else 255 - mean_bg
    fill = tuple(int(v) for v in colour)
    r = rng.uniform(6, 11) * _SUPER
    cx, cy = rng.uniform(r, big - r, 2)
    angle = rng.uniform(-math.pi / 9, math.pi / 9)
    shape = CLASSES[label]
    if shape in ("disk", "ring"):
        box = [cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85]
        if shape == "disk":
            draw.ellipse(box, fill=fill)
        else:
            draw.ellipse(box, outline=fill, width=int(r * 0.3))
    else:
        pts = _rotate(_polygon(shape, r), angle) + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts], fill=fill)
    small = img.resize((SIZE, SIZE), Image.Resampling.BOX)
    noise = rng.normal(0, 6, (SIZE, SIZE, 3))
    return np.clip(np.asarray(small, dtype=np.float64) + noise, 0, 255).astype(np.uint8)


class BuiltinShapes(torch.utils.data.Dataset):
    """``split`` in {train, test}; ``n`` images, classes balanced (label = index mod 10, shuffled)."""

    name = "builtin"

    def __init__(self, split: str = "train", n: int = 4000, seed: int = 0):
        if split not in _SPLIT_SEED:
            from ..errors import UserError

            raise UserError(f"the built-in dataset has splits train and test, not '{split}'")
        self.split, self.root, self.classes = split, None, list(CLASSES)
        self.num_classes = len(CLASSES)
        rng = np.random.default_rng([seed, _SPLIT_SEED[split]])
        labels = np.arange(n) % self.num_classes
        rng.shuffle(labels)
        self.targets = [int(v) for v in labels]
        streams = rng.bit_generator.spawn(n)
        self.images = np.stack([render(lab, np.random.Generator(bg)) for lab, bg in zip(self.targets, streams)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), self.targets[i]
