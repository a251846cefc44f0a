"""The built-in datasets: seeded, generated from files that ship with our dependencies. No download.

``builtin`` (the default): scikit-learn's bundled handwritten digits (1,797 real 8x8 scans; the label is
the digit) written 16-28 px tall at a random place of a 32x32 image, dark or light, on a canvas of mid grey
with a smooth low-contrast noise field and pixel noise drawn afresh for every image from one distribution
for every class: two crops of one image share nothing of the canvas but its statistics, so only the digit
tells the image apart. A random crop at the protocol's scale often cuts the digit, while the whole
(original) image always shows it: LeOCLR's premise. Train and test use disjoint digit scans.

``builtin-photos``: the same digits written 12-20 px on regions of scikit-image's bundled photographs
(the default set of 0.2). Every crop of one image carries a piece of the same photograph, so instance
discrimination can be won by the backdrop.

``builtin-textures``: 32x32 grey images with one or two elliptical objects filled with the texture of
the image's class (ten classes: stripes in four orientations, checker, dots, grid, diamonds, rings,
blotches) at a random period and phase, position, size and aspect, plus a global gain and pixel noise.
The label is the texture only. It was the quickstart's set before the real-pixel ones.

Generation is deterministic in (seed, split, index) and takes a few seconds for thousands of images,
so nothing is stored on disk. docs/data.md says why each design, with numbers.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

CLASSES = ("hstripes", "vstripes", "dstripes", "astripes", "checker", "dots", "grid", "diamonds", "rings",
           "blotches")
SIZE = 32
_SUPER = 4  # draw at 4x and downsample: antialiased edges
_SPLIT_SEED = {"train": 0, "test": 1}
#: grey levels (0..1) of the background and of the texture's two phases
BACKGROUND, LIGHT, DARK = 0.5, 0.72, 0.3


def _check_split(split: str) -> None:
    if split not in _SPLIT_SEED:
        raise UserError(f"the built-in datasets have splits train and test, not '{split}'")


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

    name = "builtin-textures"

    def __init__(self, split: str = "train", n: int = 4000, seed: int = 0):
        _check_split(split)
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


# --------------------------------------------------------------------------- digits in photographs

#: scikit-image's bundled photographs used as backgrounds (text and page are left out: they hold glyphs)
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
          "immunohistochemistry", "moon", "retina", "rocket")
#: one in DIGIT_TEST_EVERY of scikit-learn's digit scans of each class is kept for the test split, the rest for train
DIGIT_TEST_EVERY = 5
DIGIT_SIDE = (12, 20)  # pixels: a digit's box covers 14-39% of the 32x32 image
#: the photographs are a muted backdrop: their contrast around their mean is scaled by this
BACKDROP_CONTRAST = 0.4


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The background photographs as (H, W, 3) uint8 at BACKDROP_CONTRAST, read from scikit-image's bundled
    files."""
    import skimage.data

    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3].astype(np.float64)
        img = (img - img.mean()) * BACKDROP_CONTRAST + img.mean()
        out.append(np.ascontiguousarray(np.clip(img, 0, 255), dtype=np.uint8))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits: (1797, 8, 8) ink in 0..1 and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float64), d.target.astype(np.int64)


def digit_pool(split: str) -> dict[int, np.ndarray]:
    """Indices of scikit-learn's digits per class for ``split``: the two splits share no digit."""
    _, labels = _digits()
    pools = {}
    for c in range(10):
        of_c = np.nonzero(labels == c)[0]
        test = np.arange(len(of_c)) % DIGIT_TEST_EVERY == 0  # every fifth scan of each class
        pools[c] = of_c[test] if split == "test" else of_c[~test]
    return pools


def render_scene_with_mask(label: int, rng: np.random.Generator, pool: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One (SIZE, SIZE, 3) uint8 image of a handwritten ``label`` on a photograph, and its (SIZE, SIZE)
    ink mask (0..1); every free choice drawn from ``rng``."""
    photos = _photos()
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.15, 0.6) * min(h, w))  # a region of the photo, at a random scale
    y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    region = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((SIZE, SIZE), Image.Resampling.BOX)
    if rng.random() < 0.5:
        region = region.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = np.asarray(region, dtype=np.float64)

    images, _ = _digits()
    ink = images[rng.choice(pool[label])]
    d = int(rng.integers(DIGIT_SIDE[0], DIGIT_SIDE[1] + 1))
    alpha_small = Image.fromarray((ink * 255).astype(np.uint8)).resize((d, d), Image.Resampling.BILINEAR)
    y, x = rng.integers(0, SIZE - d + 1, 2)
    alpha = np.zeros((SIZE, SIZE))
    alpha[y:y + d, x:x + d] = np.asarray(alpha_small, dtype=np.float64) / 255
    # ink that stands out from what it is written on: light on a dark patch, dark on a light one
    under = canvas[y:y + d, x:x + d].mean()
    level = rng.uniform(200, 255) if under < 128 else rng.uniform(0, 55)
    canvas = canvas * (1 - alpha[..., None]) + level * alpha[..., None]
    pixels = np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)
    return pixels, alpha


@functools.lru_cache(maxsize=8)
def _scenes(split: str, n: int, seed: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The images and labels of one split (rendered once per process: pretraining, its kNN monitor and
    the probes open the same splits)."""
    rng = np.random.default_rng([seed, _SPLIT_SEED[split], 1])
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    pool = digit_pool(split)
    streams = rng.bit_generator.spawn(n)
    images = np.stack([render_scene_with_mask(int(lab), np.random.Generator(bg), pool)[0]
                       for lab, bg in zip(labels, streams)])
    images.flags.writeable = False
    return images, tuple(int(v) for v in labels)


class BuiltinScenes(torch.utils.data.Dataset):
    """``builtin-photos``: scikit-learn's handwritten digits (label = the digit) written small, at a
    random place and size, on regions of scikit-image's bundled photographs (the default set of 0.2).
    ``split`` in {train, test} (disjoint digits); ``n`` images, classes balanced."""

    name = "builtin-photos"

    def __init__(self, split: str = "train", n: int = 4000, seed: int = 0):
        _check_split(split)
        self.split, self.root, self.classes = split, None, [str(c) for c in range(10)]
        self.num_classes = 10
        self.images, targets = _scenes(split, n, seed)
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), self.targets[i]


# --------------------------------------------------------------------------- digits on a noise canvas (default)

#: a digit's side in pixels (of the 32x32 image): half to seven eighths of the image's side
NOISE_DIGIT_SIDE = (16, 28)
#: the canvas: mid grey, a smooth low-contrast field (std in grey levels, cells across the image) and pixel noise
CANVAS_LEVEL, CANVAS_FIELD_STD, CANVAS_FIELD_CELLS, CANVAS_PIXEL_STD = 128.0, 10.0, 6, 8.0
#: the ink: dark or light (one of the two at random, independent of the class), never near the canvas grey
INK_DARK, INK_LIGHT = (10.0, 70.0), (186.0, 246.0)


def render_digit_with_mask(label: int, rng: np.random.Generator, pool: dict[int, np.ndarray],
                           scan: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """One (SIZE, SIZE, 3) uint8 image of a handwritten ``label`` on a fresh noise canvas, and its (SIZE, SIZE)
    ink mask (0..1); ``scan``: the index of scikit-learn's digit to write (default: one of ``pool[label]`` drawn
    from ``rng``); every other free choice drawn from ``rng``. The canvas is drawn from one distribution for every
    image and class, so two crops of one image share nothing of it but its statistics: only the digit (its
    shape, size, place and ink) tells the image apart."""
    cells = rng.normal(0, 1, (CANVAS_FIELD_CELLS, CANVAS_FIELD_CELLS)).astype(np.float32)
    field = np.asarray(Image.fromarray(cells, mode="F").resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float64)
    canvas = CANVAS_LEVEL + CANVAS_FIELD_STD * field / max(field.std(), 1e-6)

    images, _ = _digits()
    ink = images[rng.choice(pool[label]) if scan is None else scan]
    d = int(rng.integers(NOISE_DIGIT_SIDE[0], NOISE_DIGIT_SIDE[1] + 1))
    alpha_small = Image.fromarray((ink * 255).astype(np.uint8)).resize((d, d), Image.Resampling.BILINEAR)
    y, x = rng.integers(0, SIZE - d + 1, 2)
    alpha = np.zeros((SIZE, SIZE))
    alpha[y:y + d, x:x + d] = np.asarray(alpha_small, dtype=np.float64) / 255
    level = rng.uniform(*(INK_DARK if rng.random() < 0.5 else INK_LIGHT))
    grey = canvas * (1 - alpha) + level * alpha
    pixels = np.clip(grey[..., None] + rng.normal(0, CANVAS_PIXEL_STD, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return pixels, alpha


def _balanced_label(seed: int, split: str, i: int) -> int:
    """The label of image ``i``: each block of ten consecutive images holds every class once, in a seeded order,
    so any prefix of a split is balanced to within one image per class."""
    block = np.random.default_rng([seed, _SPLIT_SEED[split], 3, i // 10]).permutation(10)
    return int(block[i % 10])


def _scan_order(seed: int, split: str) -> dict[int, np.ndarray]:
    """Per class, the split's digit scans in a seeded order: the j-th image of a class writes scan j (cycling),
    so the first 10 x (smallest class pool) images of a split (1,390 of train) all write different scans."""
    rng = np.random.default_rng([seed, _SPLIT_SEED[split], 4])
    return {c: rng.permutation(pool) for c, pool in digit_pool(split).items()}


@functools.lru_cache(maxsize=8)
def _digit_canvases(split: str, n: int, seed: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The images and labels of one split. Image ``i`` depends on (seed, split, i) alone, so a split of n images
    is the first n of any larger one (the quickstart's probe reads more train images than pretraining does)."""
    pool, order = digit_pool(split), _scan_order(seed, split)
    labels = tuple(_balanced_label(seed, split, i) for i in range(n))
    images = np.stack([render_digit_with_mask(lab, np.random.default_rng([seed, _SPLIT_SEED[split], 2, i]), pool,
                                              scan=int(order[lab][(i // 10) % len(order[lab])]))[0]
                       for i, lab in enumerate(labels)]) if n else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    images.flags.writeable = False
    return images, labels


class BuiltinDigits(torch.utils.data.Dataset):
    """The default built-in set: scikit-learn's handwritten digits (label = the digit), 16-28 px of a 32x32
    image, at a random place on a canvas of low-contrast noise drawn afresh for every image. Real pixels nobody
    here drew; ``split`` in {train, test} (disjoint digit scans); ``n`` images, classes balanced."""

    name = "builtin"

    def __init__(self, split: str = "train", n: int = 4000, seed: int = 0):
        _check_split(split)
        self.split, self.root, self.classes = split, None, [str(c) for c in range(10)]
        self.num_classes = 10
        self.images, targets = _digit_canvases(split, n, seed)
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), self.targets[i]

