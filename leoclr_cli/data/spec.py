"""The augmentation spec: every random parameter of a view, drawn in one place.

:class:`ViewSpec` turns the protocol's ``augment`` section into one :class:`ViewParams` record per view,
drawn from torch's default CPU generator (which :class:`~.views.AugmentedDataset` seeds per (seed,
epoch, index), so a view is a function of those), in the order of MoCo-v2's torchvision pipeline and
with torchvision's own samplers: the crop (RandomResizedCrop's, or within a ContrastiveCrop box
:func:`~.ccrop.sample_crop`'s), the jitter coin and ColorJitter's order and factors, the grayscale coin,
the blur coin and sigma, the flip coin. A part switched off draws nothing. A ``local`` view (LeOCLR's
multi-crop, ``augment.local_crops``) is a crop like the others, drawn with ``augment.local_scale`` and
made at ``augment.local_size``; the local views come after the others, so they leave those draws as
they are. Three executors apply a record, in the pipeline's order (crop, jitter, grayscale, blur, flip,
normalise):

* :class:`~.views.PILViews`, the reference: torchvision's functional ops on PIL images;
* :class:`~.gpu_views.DirectViews` (``augment.direct``): direct PIL calls, the jitter as one colour
  matrix, the blur on the float view;
* :class:`~.gpu_views.TensorViews` (``augment.backend: tensor``): batched on tensors, from the rows
  :func:`~.gpu_views.param_row` packs in the loader workers.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms import RandomResizedCrop

from ..config import AugmentConfig
from .ccrop import sample_crop
from .ops import CROP_KINDS, VIEW_KINDS


class ViewParams(NamedTuple):
    """One view's parameters. The crop is in the source image's pixels (torchvision's top, left,
    height, width; the whole image when the view is not cropped); ``pad``: the whole image, its aspect
    ratio kept, padded to a square (``augment.original: pad``). ``order``: the jitter's steps in the
    order applied (ColorJitter's ``fn_idx``), empty when its coin said no; ``factors``: brightness,
    contrast, saturation, hue, None for a step the configuration leaves out. ``sigma``: 0 = no blur.
    ``local``: a local crop, made at ``augment.local_size`` instead of ``augment.size``."""

    top: int
    left: int
    height: int
    width: int
    pad: bool = False
    order: tuple[int, ...] = ()
    factors: tuple[Optional[float], ...] = (None, None, None, None)
    gray: bool = False
    sigma: float = 0.0
    flip: bool = False
    local: bool = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The crop as PIL's (left, upper, right, lower)."""
        return self.left, self.top, self.left + self.width, self.top + self.height


class ViewSpec:
    """``augment`` settings and the view kinds a method asks for (each one of :data:`~.ops.VIEW_KINDS`)
    -> :meth:`draws`: one :class:`ViewParams` per view of an image."""

    def __init__(self, cfg: AugmentConfig, kinds: Sequence[str]):
        unknown = sorted(set(kinds) - set(VIEW_KINDS))
        if unknown:
            raise ValueError(f"unknown view kind {unknown[0]!r}")
        self.cfg, self.kinds = cfg, tuple(kinds)
        self.jitter = v2.ColorJitter(*cfg.jitter)

    def draw(self, kind: str, width: int, height: int,
             box: Optional[tuple[float, float, float, float]] = None) -> ViewParams:
        """The parameters of a view of kind ``kind`` of a ``width`` x ``height`` image; ``box``: the
        ContrastiveCrop box (fractions) a crop kind is placed in, None for RandomResizedCrop."""
        cfg, rand = self.cfg, torch.rand
        crop: tuple[int, int, int, int] = (0, 0, height, width)
        if kind in CROP_KINDS and cfg.crop:
            scale = cfg.local_scale if kind == "local" else cfg.crop_scale
            if box is None:  # get_params reads only the shape: a stride-0 view, nothing allocated
                shape = torch.empty(1, 1, 1).expand(1, height, width)
                crop = tuple(RandomResizedCrop.get_params(shape, list(scale), list(cfg.crop_ratio)))
            else:
                crop = sample_crop(height, width, box, scale, cfg.crop_ratio, cfg.ccrop.alpha)
        order: tuple[int, ...] = ()
        factors: tuple[Optional[float], ...] = (None, None, None, None)
        if cfg.color_jitter and rand(1).item() < cfg.jitter_p:  # RandomApply's coin, then ColorJitter's draws
            j = self.jitter.make_params([])
            order = tuple(j["fn_idx"].tolist())
            factors = tuple(j[k] for k in ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor"))
        gray = cfg.grayscale and rand(1).item() < cfg.grayscale_p
        sigma = 0.0
        if cfg.blur and rand(1).item() < cfg.blur_p:
            sigma = torch.empty(1).uniform_(*cfg.blur_sigma).item()
        flip = cfg.flip and rand(1).item() < 0.5
        return ViewParams(*crop, kind == "original" and cfg.original == "pad", order, factors, gray, sigma, flip,
                          kind == "local")

    def draws(self, width: int, height: int,
              box: Optional[tuple[float, float, float, float]] = None) -> list[ViewParams]:
        """:meth:`draw` for each view kind, in order."""
        return [self.draw(kind, width, height, box) for kind in self.kinds]
