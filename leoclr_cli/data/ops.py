"""View primitives shared by the executors of the augmentation spec (spec.py; views.py: the PIL
reference; gpu_views.py: the direct PIL path and the tensor backend): the view kinds, tensor +
normalise, pad-to-square, the YIQ hue rotation, the PIL colour jitter and its fused colour algebra,
and the decode sizes. A leaf of the data package: it imports no
view maker, so each maker can import the others' pieces without a cycle."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..config import AugmentConfig, Norm, norm_stats

#: view kinds that are random crops of the image (ContrastiveCrop places them); ``local``: LeOCLR's multi-crop,
#: a crop of ``augment.local_scale`` at ``augment.local_size``
CROP_KINDS = ("crop", "random-original", "local")
VIEW_KINDS = ("original", *CROP_KINDS)


class ToNormalized(torch.nn.Module):
    """PIL image (or uint8 CHW tensor) to a normalised float32 CHW tensor in one multiply-add:
    ``(x / 255 - mean) / std`` as ``x * (1 / (255 std)) - mean / std`` (ToImage + ToDtype + Normalize
    make three passes over the float data)."""

    def __init__(self, norm: Norm):
        super().__init__()
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in norm_stats(norm))
        self.name, self.scale, self.shift = norm, 1 / (255 * std), -mean / std
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, img):
        if isinstance(img, Image.Image):
            return self.hwc(img).permute(2, 0, 1)  # a CHW view
        return torch.addcmul(self.shift[:, None, None], img.to(torch.float32), self.scale[:, None, None])

    def hwc(self, img: Image.Image) -> torch.Tensor:
        """The normalised image, contiguous in its own HWC order: each pixel row is one vector of
        W x 3 with the per-channel factors tiled along it, so the multiply-add vectorises."""
        hwc = torch.from_numpy(np.array(img.convert("RGB") if img.mode != "RGB" else img))
        h, w, _ = hwc.shape
        if w not in self._rows:
            self._rows[w] = (self.shift.repeat(w), self.scale.repeat(w))
        shift, scale = self._rows[w]
        return torch.addcmul(shift, hwc.view(h, w * 3), scale).view(h, w, 3)

    def extra_repr(self) -> str:
        return f"normalize={self.name!r}"


def to_tensor(norm: Norm) -> ToNormalized:
    return ToNormalized(norm)


def denormalize(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The uint8 image (..., 3, H, W) of a view that :class:`ToNormalized` (``norm``) normalised."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in norm_stats(norm))
    return (x.float() * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)


class PadToSquare(v2.Transform):
    """Resize the longer side to ``size`` and pad the shorter one symmetrically (mean grey)."""

    def __init__(self, size: int, fill: int = 124):
        super().__init__()
        self.size, self.fill = size, fill

    def forward(self, img: Image.Image) -> Image.Image:  # type: ignore[override]
        w, h = img.size
        s = self.size / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        out = Image.new("RGB", (self.size, self.size), (self.fill,) * 3)
        out.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), ((self.size - nw) // 2, (self.size - nh) // 2))
        return out


# RGB -> YIQ (NTSC); hue is the angle of the (I, Q) chroma vector
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_INV = torch.linalg.inv(_YIQ)


def yiq_hue_matrix(shift: torch.Tensor | float) -> torch.Tensor:
    """The RGB -> RGB matrix (..., 3, 3) that turns hue by ``shift`` of a full circle (the sign as
    HSV's: red goes towards green), rotating I and Q at constant luma Y."""
    theta = -2 * math.pi * torch.as_tensor(shift, dtype=torch.float64)
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(*theta.shape, 3, 3, dtype=torch.float64)
    rot[..., 0, 0] = 1
    rot[..., 1, 1], rot[..., 1, 2], rot[..., 2, 1], rot[..., 2, 2] = c, -s, s, c
    return _YIQ_INV @ rot @ _YIQ


#: PIL's "L" weights (ITU-R 601-2), which ImageEnhance's contrast and saturation blend towards
_LUMA = np.array([0.299, 0.587, 0.114])
_LUMA_ROWS, _EYE = np.tile(_LUMA, (3, 1)), np.eye(3)
_YIQ_NP, _YIQ_INV_NP = _YIQ.numpy(), _YIQ_INV.numpy()


def _yiq_hue_np(shift: float) -> np.ndarray:
    """:func:`yiq_hue_matrix` of one float, in numpy (no tensor round trip per view)."""
    theta = -2 * math.pi * shift
    c, s = math.cos(theta), math.sin(theta)
    return _YIQ_INV_NP @ np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]) @ _YIQ_NP


_ADJUST = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def _convert(img: Image.Image, a: np.ndarray, b: np.ndarray) -> Image.Image:
    """The colour map ``x -> A x + b`` in one PIL ``convert(matrix=)`` pass (in C)."""
    return img.convert("RGB", matrix=tuple(np.concatenate([a, b[:, None]], 1).ravel().tolist()))


def jitter_pil(img: Image.Image, order: Sequence[int], factors: Sequence[Optional[float]], hue: str) -> Image.Image:
    """ColorJitter's steps on a PIL image: ``factors`` = (brightness, contrast, saturation, hue), None for
    a step left out, applied in ``order`` (ColorJitter's ``fn_idx``). ``hue`` (``augment.hue``): hsv =
    torchvision's kernels; yiq = theirs but the hue, one YIQ colour matrix (PIL's ``convert(matrix=)``,
    in C) instead of the round trip through HSV; fused = :func:`fused_colour`, all steps in one matrix."""
    if hue == "fused":
        return fused_colour(img, order, factors)
    for fn_id in order:
        f = factors[fn_id]
        if f is None:
            continue
        img = _convert(img, _yiq_hue_np(f), np.zeros(3)) if fn_id == 3 and hue == "yiq" else _ADJUST[fn_id](img, f)
    return img


def fused_colour(img: Image.Image, order: Sequence[int], factors: Sequence[Optional[float]]) -> Image.Image:
    """``augment.hue: fused``: :func:`jitter_pil`'s steps (with the YIQ hue) composed into one affine
    colour map ``x -> A x + b`` applied by a single PIL ``convert(matrix=)`` pass in C: brightness
    ``f x``, contrast ``f x + (1 - f) m`` (``m`` the mean grey of the image at that step, from the image's
    mean colour), saturation ``f x + (1 - f) L(x)``, hue the YIQ rotation, in ``order``. Unlike the
    step-by-step version it does not clamp to [0, 255] between steps. ``factors`` as
    :func:`jitter_pil`'s, each None or neutral for a step left out. The 3x3 algebra is numpy on
    constants made once; the mean colour (contrast) comes from an ~8x8 box reduction of the image."""
    a, b = np.eye(3), np.zeros(3)
    mean_rgb = None
    for fn_id in order:
        f = factors[fn_id]
        if f is None:
            continue
        if fn_id == 0:
            a, b = a * f, b * f
        elif fn_id == 1:
            if mean_rgb is None:
                small = img.reduce(max(1, min(img.size) // 8))
                mean_rgb = np.asarray(small, dtype=np.float64).reshape(-1, 3).mean(0)
            m = float(_LUMA @ (a @ mean_rgb + b))
            a, b = a * f, b * f + (1 - f) * m
        elif fn_id == 2:
            sat = f * _EYE + (1 - f) * _LUMA_ROWS
            a, b = sat @ a, sat @ b
        else:
            rot = _yiq_hue_np(f)
            a, b = rot @ a, rot @ b
    return _convert(img, a, b)


def decode_size(cfg: AugmentConfig) -> int:
    """Backend tensor: the side of the uint8 square each image is decoded to."""
    return cfg.decode_size or 2 * cfg.size


def draft_side(cfg: AugmentConfig) -> int:
    """The fewest pixels per side a decoded image needs: the smallest crop still fills ``size``
    (and, for the tensor backend, the decoded square keeps its resolution)."""
    side = math.ceil(cfg.size / math.sqrt(cfg.crop_scale[0])) if cfg.crop else cfg.size
    if cfg.local_crops and cfg.crop:
        side = max(side, math.ceil(cfg.local_side / math.sqrt(cfg.local_scale[0])))
    return max(side, decode_size(cfg)) if cfg.backend == "tensor" else side
