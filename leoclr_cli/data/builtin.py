"""The built-in dataset: seeded, generated, labelled textured objects on a plain background. No download.

Each 32x32 grey image holds one or two elliptical objects, each filled with the texture of the
image's class (ten classes: stripes in four orientations, checker, dots, grid, diamonds, rings,
blotches) at a random period and phase, placed at a random position (not centred, possibly cut by
the border) with a random size and aspect, plus a global gain and pixel noise. The label is the
texture only. A random crop at scale 0.2 covers about 14x14 pixels: it can miss every object or show
only part of one, which is the situation LeOCLR is about; the whole (original) image always shows them.

Why textures in grey: a short contrastive pretraining on a CPU learns texture features quickly, and
the class is what the views of one image share once the crops have removed position and size. With
per-image colours (tried: palette, per-object and per-image hue schemes) the objective learns the
colours first, and a 12-epoch pretraining ends below a random-init backbone; in grey it ends well
above it (see the README's quickstart table).

Generation is deterministic in (seed, split, index) and takes a few seconds for thousands of images,
so nothing is stored on disk.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

CLASSES = ("hstripes", "vstripes", "dstripes", "astripes", "checker", "dots", "grid", "diamonds", "rings",
           "blotches")
SIZE = 32
_SUPER = 4  # draw at 4x and downsample: antialiased edges
_SPLIT_SEED = {"train": 0, "test": 1}
#: grey levels (0..1) of the background and of the texture's two phases
BACKGROUND, LIGHT, DARK = 0.5, 0.72, 0.3


def texture(name: str, side: int, period: float, rng: np.random.Generator) -> np.ndarray:
    """A (side, side) boolean texture of class ``name`` with the given period (pixels), random phase."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    phase = rng.uniform(0, period)

    def band(u: np.ndarray, duty: float = 0.5) -> np.ndarray:
        return ((u + phase) % period) < period * duty

    if name == "hstripes":
        return band(yy)
    if name == "vstripes":
        return band(xx)
    if name == "dstripes":
        return band((xx + yy) / math.sqrt(2))
    if name == "astripes":
        return band((xx - yy) / math.sqrt(2))
    if name == "checker":
        return band(xx) ^ band(yy)
    if name == "diamonds":
        return band((xx + yy) / math.sqrt(2)) ^ band((xx - yy) / math.sqrt(2))
    if name == "grid":
        return band(xx, 1 / 3.5) | band(yy, 1 / 3.5)
    if name == "dots":
        return (((xx + phase) % period - period / 2) ** 2 + ((yy + phase) % period - period / 2) ** 2) < (period / 3.2) ** 2
    if name == "rings":
        return band(np.hypot(xx - rng.uniform(0, side), yy - rng.uniform(0, side)))
    if name == "blotches":  # a thresholded smooth noise field at the same scale
        cells = max(2, int(side / period))
        noise = (rng.normal(size=(cells, cells)) > 0).astype(np.uint8) * 255
        return np.asarray(Image.fromarray(noise).resize((side, side), Image.Resampling.BILINEAR)) > 127
    raise ValueError(f"unknown texture {name!r}")


def render_with_mask(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (SIZE, SIZE, 3) uint8 image of class ``label`` and its (SIZE, SIZE) object-coverage mask
    (fraction of each pixel covered by an object); every free choice drawn from ``rng``."""
    big = SIZE * _SUPER
    grey = np.full((big, big), BACKGROUND)
    covered = np.zeros((big, big), bool)
    yy, xx = np.mgrid[0:big, 0:big]
    for _ in range(rng.integers(1, 3)):
        r = rng.uniform(8, 13) * _SUPER
        cx, cy = rng.uniform(r * 0.5, big - r * 0.5, 2)
        aspect = rng.uniform(0.75, 1.33)
        inside = ((xx - cx) / aspect) ** 2 + ((yy - cy) * aspect) ** 2 < r**2
        pattern = texture(CLASSES[label], big, rng.uniform(5, 7) * _SUPER, rng)
        grey = np.where(inside, np.where(pattern, LIGHT, DARK), grey)
        covered |= inside
    grey = grey * rng.uniform(0.85, 1.15) * 255
    small = np.asarray(Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BOX),
                       dtype=np.float64)
    pixels = np.clip(small[..., None] + rng.normal(0, 4, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    mask = covered.reshape(SIZE, _SUPER, SIZE, _SUPER).mean((1, 3))
    return pixels, mask


def render(label: int, rng: np.random.Generator) -> np.ndarray:
    return render_with_mask(label, rng)[0]


class BuiltinTextures(torch.utils.data.Dataset):
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
