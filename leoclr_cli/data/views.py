"""Views: the MoCo-v2 augmentation with removable parts, and the view sets of each method.

* :class:`ViewMaker` turns one decoded image into the views a method asks for, e.g.
  ``("original", "crop", "crop")`` for LeOCLR: the parameters of every view are drawn by the
  augmentation spec (:class:`~.spec.ViewSpec`: crop, colour jitter, grayscale, blur, flip, each part
  switched by :class:`AugmentConfig`) and applied by :class:`PILViews` (the reference) or, with
  ``augment.direct``, :class:`~.gpu_views.DirectViews`. The original is the whole image resized to the
  crop size (``resize`` squashes, ``pad`` keeps the aspect ratio), then augmented like the crops minus
  the crop. The image is decoded once for all its views. View kinds: ``crop``, ``original``,
  ``random-original`` (Table 8's ablation: the anchor is cropped exactly like a crop), and ``local``
  (LeOCLR's multi-crop: a smaller crop at ``augment.local_size``). With
  :class:`~.ccrop.CropBoxes` (ContrastiveCrop), the crop kinds place their crop within the image's box
  once the boxes are active.
* :class:`AugmentedDataset` seeds each sample's augmentation from (seed, epoch, index), so the views
  do not depend on the number of DataLoader workers and a resumed run sees the same views. The
  epoch lives in shared memory, so persistent DataLoader workers see ``set_epoch`` too.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable, Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..config import AugmentConfig, Norm
from ..errors import BadImage, UserError
from .gpu_views import DirectViews
from .ops import PadToSquare, jitter_pil, to_tensor
from .spec import ViewParams, ViewSpec

if TYPE_CHECKING:
    from .ccrop import CropBoxes


class PILViews:
    """The reference executor of the augmentation spec: a :class:`~.spec.ViewParams` record applied to a
    PIL image with torchvision's functional ops, in MoCo-v2's order: crop + resize (the original: resize
    or :class:`~.ops.PadToSquare`), colour jitter (:func:`~.ops.jitter_pil`, by ``augment.hue``),
    grayscale, PIL's Gaussian blur (``radius`` = sigma: three box blurs in C), flip, tensor + normalise.
    A local view is made at ``augment.local_size``."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg, self.size, self.local = cfg, [cfg.size, cfg.size], [cfg.local_side, cfg.local_side]
        self.pad, self.out = PadToSquare(cfg.size), to_tensor(cfg.norm)

    def __call__(self, img: Image.Image, p: ViewParams) -> torch.Tensor:
        size = self.local if p.local else self.size
        if p.pad:
            v = self.pad(img)
        elif p.box == (0, 0, *img.size):
            v = TF.resize(img, size, antialias=True)
        else:
            v = TF.resized_crop(img, p.top, p.left, p.height, p.width, size, antialias=True)
        if p.order:
            v = jitter_pil(v, p.order, p.factors, self.cfg.hue)
        if p.gray:
            v = TF.rgb_to_grayscale(v, num_output_channels=len(v.getbands()))
        if p.sigma:
            v = v.filter(ImageFilter.GaussianBlur(radius=p.sigma))
        if p.flip:
            v = TF.horizontal_flip(v)
        return self.out(v)


class ViewMaker:
    """One image in, the list of views ``kinds`` out (each kind one of :data:`~.ops.VIEW_KINDS`).

    With ``boxes`` (ContrastiveCrop), a crop kind of image ``index`` in an epoch where the boxes are
    active is cropped within ``boxes.box(index)`` (:func:`~.ccrop.sample_crop`) instead of anywhere; those
    images take the reference executor also with ``augment.direct``.
    """

    def __init__(self, cfg: AugmentConfig, kinds: Sequence[str], boxes: Optional["CropBoxes"] = None):
        self.kinds, self.cfg, self.boxes = tuple(kinds), cfg, boxes
        self.spec = ViewSpec(cfg, self.kinds)
        self.reference = PILViews(cfg)
        self.apply: Callable[[Image.Image, ViewParams], torch.Tensor] = self.reference
        if cfg.direct:
            self.apply = DirectViews(cfg)

    def __call__(self, img: Image.Image, index: Optional[int] = None, epoch: int = 0) -> list[torch.Tensor]:
        apply, box = self.apply, None
        if self.boxes is not None and index is not None and self.boxes.active(epoch):
            apply, box = self.reference, self.boxes.box(index)
        return [apply(img, p) for p in self.spec.draws(img.width, img.height, box)]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (seed, epoch, index)."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_659 + index) % (2**63 - 1)


class AugmentedDataset(torch.utils.data.Dataset):
    """``source[i]`` -> (fn(image), label), ``fn``'s random draws seeded from (seed, epoch, i).

    Used for pretraining views (``fn`` = a :class:`ViewMaker`, which also gets the index and epoch)
    and for evaluation transforms alike. The epoch lives in shared memory, so persistent DataLoader
    workers see :meth:`set_epoch` too. ``state_dict``/``load_state_dict`` carry the ViewMaker's
    ContrastiveCrop boxes (if any) in the engine's resumable training state.
    ``on_bad_image="skip"``: an image that cannot be decoded is replaced by the next readable one
    (so every batch keeps its size) and items become (views, label, 1 if replaced else 0), which
    the engine counts; ``"error"``: the :class:`BadImage` naming the file stops the run.
    """

    def __init__(self, source: torch.utils.data.Dataset, fn: Callable[[Image.Image], object], seed: int = 0,
                 on_bad_image: Literal["error", "skip"] = "error"):
        self.source, self.fn, self.seed = source, fn, seed
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.skip_bad = on_bad_image == "skip"
        self._warned: set[str] = set()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)  # in place: persistent workers share this memory

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        img, label, index, replaced = self._read(i) if self.skip_bad else (*self.source[i], i, 0)
        out = self.make(img, i, index)
        return (out, label, replaced) if self.skip_bad else (out, label)

    def make(self, img: Image.Image, i: int, index: Optional[int] = None):
        """``fn(img)`` with its random draws seeded by (seed, epoch, i); ``index``: the image's index in
        the source (ContrastiveCrop's box), default ``i``."""
        with torch.random.fork_rng(devices=[]):
            epoch = self.epoch
            # the CPU generator only: torch.manual_seed would also queue lazy CUDA/XPU seeding
            # (a formatted stack trace per call, ~1 ms) that the views never use
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i))
            return self.fn(img, i if index is None else index, epoch) if isinstance(self.fn, ViewMaker) else self.fn(img)

    def warn(self, e: BadImage) -> None:
        """Say once per file that an undecodable image was skipped."""
        if str(e) not in self._warned:
            self._warned.add(str(e))
            print(f"warning: {e}; skipped (data.on_bad_image: skip)", file=sys.stderr)

    def _read(self, i: int):
        """(image, label, index read, 1) of the first readable item from ``i`` on if ``i`` is bad, else
        (image, label, i, 0)."""
        n = len(self.source)
        for k in range(n):
            try:
                img, label = self.source[(i + k) % n]
                return img, label, (i + k) % n, int(k > 0)
            except BadImage as e:
                self.warn(e)
        raise UserError(f"no image of the dataset could be decoded (e.g. {min(self._warned)})")

    def _boxes(self) -> Optional["CropBoxes"]:
        return getattr(self.fn, "boxes", None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The engine's dataset hook: the ContrastiveCrop boxes (none without them)."""
        boxes = self._boxes()
        return boxes.state_dict() if boxes is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        boxes = self._boxes()
        if boxes is not None:
            boxes.load_state_dict(state)


def eval_transform(size: int, resize: int, test: str, norm: Norm) -> v2.Compose:
    """Test transform: Resize(resize) + CenterCrop(size), or (``none``) Resize((size, size)) only."""
    if test == "resize-center-crop":
        ops = [v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
    else:
        ops = [v2.Resize((size, size), antialias=True)]
    return v2.Compose([*ops, to_tensor(norm)])


def linear_train_transform(size: int, norm: Norm) -> v2.Compose:
    """Linear-eval / fine-tuning training transform: RandomResizedCrop + flip (MoCo's main_lincls)."""
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), to_tensor(norm)])


def crop_test_transform(mode: str, size: int, resize: int, norm: Norm, *, interpolation: str = "bicubic",
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> v2.Compose:
    """Table 7's two test transforms. ``center``: shorter side to ``resize``, CenterCrop(size);
    ``random``: the whole image to ``resize`` x ``resize``, then RandomResizedCrop(size, scale, ratio)."""
    interp = v2.InterpolationMode.BICUBIC if interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    if mode == "center":
        ops = [v2.Resize(resize, interpolation=interp, antialias=True), v2.CenterCrop(size)]
    elif mode == "random":
        ops = [v2.Resize((resize, resize), interpolation=interp, antialias=True),
               v2.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=interp, antialias=True)]
    else:
        raise ValueError(f"unknown crop-test mode {mode!r}")
    return v2.Compose([*ops, to_tensor(norm)])


class PixelSums:
    """An image -> the per-channel sums of its pixels and of their squares (2, 3), float64 on the 0..1
    scale, after resizing it to ``size`` x ``size`` (the views' size; grey images count as R = G = B)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        rgb = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255)
        return torch.stack([x.sum(0), (x * x).sum(0)])


def measure_normalization(source: torch.utils.data.Dataset, size: int, count: int, seed: int, workers: int = 0,
                          on_bad_image: Literal["error", "skip"] = "error") -> tuple[tuple[float, ...], ...]:
    """(mean, std) per RGB channel of ``count`` images of ``source`` drawn with ``seed`` (all of them if
    fewer), over every pixel at ``size`` x ``size``; rounded to 6 decimals. ``augment.normalize: auto``."""
    n = len(source)
    picked = sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].tolist())
    images = AugmentedDataset(torch.utils.data.Subset(source, picked), PixelSums(size), on_bad_image=on_bad_image)
    total = torch.zeros(2, 3, dtype=torch.float64)
    for batch in torch.utils.data.DataLoader(images, batch_size=64, num_workers=workers):
        total += batch[0].sum(0)
    pixels = len(picked) * size * size
    mean = total[0] / pixels
    std = (total[1] / pixels - mean**2).clamp_min(0).sqrt()
    for channel, s in zip("RGB", std.tolist()):
        if s < 1e-6:
            raise UserError(f"augment.normalize auto: channel {channel} has one value in all {len(picked)} sampled "
                            "images, so its std is 0; give augment.mean and augment.std")
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())
