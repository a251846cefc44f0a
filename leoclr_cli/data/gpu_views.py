"""Batched view generation on tensors (``augment.backend: tensor``): on the GPU when training there.

The work is split in two:

* :class:`DecodeAndDraw` runs in the DataLoader workers (wrapped in
  :class:`~leoclr_cli.data.views.AugmentedDataset`, so its draws are seeded per (seed, epoch,
  index)): it decodes each image once, resizes it to a fixed ``decode_size`` square of uint8, and
  draws every view's parameters with the augmentation spec (:class:`~.spec.ViewSpec`, the PIL
  pipeline's draws), packed into one row per view (:func:`param_row`). No per-view pixel work
  happens here.
* :class:`TensorViews` runs on the training device before the task, on the whole batch: the
  crops (``torchvision.ops.roi_align``: bilinear with averaging over each output pixel's
  footprint, i.e. antialiased when shrinking), flips, colour jitter (each sample's own order of
  brightness, contrast, saturation and hue), grayscale, Gaussian blur (a per-sample separable
  kernel), normalisation. The original view is the whole image (squashed, or padded with grey for
  ``augment.original: pad``); a local view is made at ``augment.local_size``.
* :class:`DirectViews` (``augment.direct``, PIL backend) applies the spec's records with direct PIL
  calls in the workers instead.

Crop boxes are drawn in the source image's own pixels and kept as fractions of its width and
height, so squashing it into the fixed square does not change the crops' aspect ratios.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import roi_align
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from ..config import AugmentConfig, norm_stats
from .ops import PadToSquare, decode_size, fused_colour, to_tensor, yiq_hue_matrix
from .spec import ViewParams, ViewSpec

# one row of parameters per view
X0, Y0, X1, Y1, FLIP, JITTER, BRIGHT, CONTRAST, SAT, HUE, ORDER, GRAY, BLUR, SIGMA = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16)
N_PARAMS = 17
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def blur_kernel_size(cfg: AugmentConfig) -> int:
    """The PIL pipeline's kernel: wide enough for the largest sigma."""
    return 2 * math.ceil(3 * cfg.blur_sigma[1]) + 1


def param_row(p: ViewParams, w: int, h: int) -> list[float]:
    """One view's :class:`~.spec.ViewParams` of a ``w`` x ``h`` image as :class:`TensorViews`' row: the
    crop as fractions of the image (so squashing it into the decoded square keeps the crop's aspect
    ratio), the jitter's order with neutral factors for steps left out, 0/1 coins."""
    r = [0.0] * N_PARAMS
    if p.pad:  # the longer side fills the view; the shorter one is centred with grey around it
        ex, ey = max(h / w, 1.0), max(w / h, 1.0)
        r[X0:Y1 + 1] = [(1 - ex) / 2, (1 - ey) / 2, (1 + ex) / 2, (1 + ey) / 2]
    else:
        r[X0:Y1 + 1] = [p.left / w, p.top / h, (p.left + p.width) / w, (p.top + p.height) / h]
    r[BRIGHT:HUE + 1] = [n if f is None else f for f, n in zip(p.factors, (1.0, 1.0, 1.0, 0.0))]
    r[ORDER:ORDER + 4] = [float(o) for o in p.order or range(4)]
    r[JITTER], r[GRAY], r[FLIP] = float(bool(p.order)), float(p.gray), float(p.flip)
    r[BLUR], r[SIGMA] = float(p.sigma > 0), p.sigma
    return r


class DecodeAndDraw:
    """PIL image -> (uint8 (3, S, S) image, float (views, N_PARAMS) parameters); S = decode size. The
    parameters are :class:`~.spec.ViewSpec`'s draws, packed by :func:`param_row`."""

    def __init__(self, cfg: AugmentConfig, kinds: Sequence[str]):
        self.cfg, self.kinds, self.size = cfg, tuple(kinds), decode_size(cfg)
        self.spec = ViewSpec(cfg, self.kinds)

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        w, h = img.size
        pixels = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        image = torch.frombuffer(bytearray(pixels.tobytes()), dtype=torch.uint8).view(self.size, self.size, 3)
        params = torch.tensor([param_row(p, w, h) for p in self.spec.draws(w, h)])
        return image.permute(2, 0, 1).contiguous(), params


class DirectViews:
    """The fast PIL executor of the augmentation spec (``augment.direct``): a :class:`~.spec.ViewParams`
    record applied by direct PIL calls in the pipeline's order: crop + resize in one ``resize(box=)``,
    colour jitter as one matrix (:func:`~.ops.fused_colour`), grayscale (kept one channel through the
    flip), flip, the tensor, then blur (:func:`blur_hwc`, the tensor backend's Gaussian; it commutes with
    the flip and with the per-channel normalisation, so the order is the pipeline's). A local view is
    made at ``augment.local_size``."""

    def __init__(self, cfg: AugmentConfig):
        self.size, self.local = cfg.size, cfg.local_side
        self.pad = PadToSquare(cfg.size)
        self.out = to_tensor(cfg.norm)
        self.scratch: dict = {}  # blur_hwc's padded copies

    def __call__(self, img: Image.Image, p: ViewParams) -> torch.Tensor:
        img = img.convert("RGB") if img.mode != "RGB" else img
        if p.pad:
            v = self.pad(img)
        else:
            side = self.local if p.local else self.size
            v = img.resize((side, side), Image.Resampling.BILINEAR, box=p.box)
        if p.order:
            v = fused_colour(v, p.order, p.factors)
        if p.gray:
            v = v.convert("L")  # flipped as one channel; the tensor repeats it
        if p.flip:
            v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = self.out.hwc(v)
        if p.sigma:  # after the flip and the normalisation, which it commutes with
            x = blur_hwc(x, p.sigma, self.scratch)
        return x.permute(2, 0, 1)


def gaussian_taps(sigma: float, radius: int) -> list[float]:
    """The normalised 1-D Gaussian on -radius..radius."""
    taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = sum(taps)
    return [t / total for t in taps]


def blur_hwc(x: torch.Tensor, sigma: float, scratch: Optional[dict] = None) -> torch.Tensor:
    """:class:`TensorViews`' Gaussian blur (reflect padding) of one float HWC image, in place (``x`` is
    returned). Separable, one multiply-add per tap over the whole image (far cheaper on a CPU core
    than a grouped convolution or PIL's three box passes); the kernel spans 3 sigma each side. The
    padded copies live in ``scratch`` (reused from call to call: no fresh memory per view)."""
    scratch = {} if scratch is None else scratch
    for dim in (0, 1):
        n = x.shape[dim]
        r = min(math.ceil(3 * sigma), n - 1)
        if r < 1:
            continue
        shape = list(x.shape)
        shape[dim] += 2 * r
        key = (dim, *shape)
        if key not in scratch:
            scratch[key] = torch.empty(shape, dtype=x.dtype)
        padded = scratch[key]
        padded.narrow(dim, r, n).copy_(x)
        padded.narrow(dim, 0, r).copy_(x.narrow(dim, 1, r).flip(dim))
        padded.narrow(dim, n + r, r).copy_(x.narrow(dim, n - 1 - r, r).flip(dim))
        taps = gaussian_taps(sigma, r)
        torch.mul(padded.narrow(dim, 0, n), taps[0], out=x)
        for k in range(1, 2 * r + 1):
            x.add_(padded.narrow(dim, k, n), alpha=taps[k])
    return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), f)


def hue_hsv(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue with a per-sample shift (fraction of the hue circle)."""
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


def hue_yiq(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The cheap hue: rotate the chroma (I, Q) plane by 2 pi shift, one 3x3 matrix per sample."""
    m = yiq_hue_matrix(shift.to(torch.float64)).to(x.dtype)
    return torch.einsum("bij,bjhw->bihw", m, x).clamp_(0, 1)


class TensorViews(nn.Module):
    """``(uint8 images (B, 3, S, S), params (B, views, N_PARAMS))`` -> the list of normalised views."""

    def __init__(self, cfg: AugmentConfig, kinds: Sequence[str]):
        super().__init__()
        self.cfg, self.kinds = cfg, tuple(kinds)
        self.hue = hue_yiq if cfg.hue in ("yiq", "fused") else hue_hsv
        mean, std = norm_stats(cfg.norm)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.fill = PadToSquare(cfg.size).fill / 255.0

    @torch.no_grad()
    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        images, params = batch
        x = images.float().div_(255)
        return [self.view(x, params[:, v].float(), kind) for v, kind in enumerate(self.kinds)]

    def view(self, x: torch.Tensor, p: torch.Tensor, kind: str) -> torch.Tensor:
        size = self.cfg.local_side if kind == "local" else self.cfg.size
        out = self.crop(x, p, pad=kind == "original" and self.cfg.original == "pad", size=size)
        out = self.jitter(out, p)
        out = torch.where(p[:, GRAY].view(-1, 1, 1, 1) > 0, _gray(out).expand_as(out), out)
        if self.cfg.blur:
            out = self.blur(out, p)
        out = torch.where(p[:, FLIP].view(-1, 1, 1, 1) > 0, out.flip(-1), out)
        return (out - self.mean) / self.std

    def crop(self, x: torch.Tensor, p: torch.Tensor, pad: bool, size: int) -> torch.Tensor:
        b, _, s, _ = x.shape
        if pad:  # a channel of ones tells the image from the outside of it
            x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
        boxes = torch.cat([torch.arange(b, device=x.device, dtype=x.dtype).view(-1, 1), p[:, X0:Y1 + 1] * s], 1)
        out = roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if pad:
            inside = out[:, 3:]
            out = out[:, :3] + (1 - inside) * self.fill
        return out.clamp_(0, 1)

    def jitter(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Four slots; in each, every sample gets the op its own order puts there (none when its
        jitter coin came up off). Samples are grouped by op, so each op runs once per slot on
        only its samples; one host sync per view for the group sizes."""
        ops = (brightness, contrast, saturation, self.hue)
        order = torch.where(p[:, JITTER:JITTER + 1] > 0, p[:, ORDER:ORDER + 4], torch.full_like(p[:, :4], 4)).long()
        counts = torch.stack([torch.bincount(order[:, k], minlength=5) for k in range(4)]).tolist()
        for k in range(4):
            if counts[k][4] == x.shape[0]:
                continue
            perm = torch.argsort(order[:, k], stable=True)
            xs, ps = x[perm], p[perm]
            start = 0
            for op, n in enumerate(counts[k][:4]):
                if n:
                    part = slice(start, start + n)
                    xs[part] = ops[op](xs[part], ps[part, BRIGHT + op])
                start += n
            x = torch.empty_like(xs).index_copy_(0, perm, xs)
        return x

    def blur(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """torchvision's GaussianBlur (reflect padding) with each sample's sigma; off: a delta kernel."""
        b, c, h, w = x.shape
        k = blur_kernel_size(self.cfg)
        half = (k - 1) / 2
        t = torch.linspace(-half, half, k, device=x.device, dtype=x.dtype)
        sigma = torch.where(p[:, BLUR] > 0, p[:, SIGMA], torch.ones_like(p[:, SIGMA]))
        kern = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
        kern = kern / kern.sum(1, keepdim=True)
        delta = (t == 0).to(x.dtype).view(1, -1)
        kern = torch.where(p[:, BLUR:BLUR + 1] > 0, kern, delta).repeat_interleave(c, 0)  # (b*c, k)
        pad = min(k // 2, h - 1, w - 1)
        if pad < k // 2:  # an image smaller than the kernel: trim the kernel (its tails are ~0)
            kern = kern[:, k // 2 - pad:k // 2 + pad + 1]
            kern = kern / kern.sum(1, keepdim=True)
        y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
        y = F.conv2d(y, kern.view(b * c, 1, 1, -1), groups=b * c)
        y = F.conv2d(y, kern.view(b * c, 1, -1, 1), groups=b * c)
        return y.view(b, c, h, w)
