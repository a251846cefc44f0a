"""ContrastiveCrop (Peng et al., CVPR 2022): crops placed within a box the model localised.

* :func:`boxes_from_features`: per image, the channel sum of the last conv stage's feature map,
  min-max normalised, upsampled bilinearly to the image size, thresholded at ``k``; the box is the
  tight box around every pixel above ``k`` (no connected components), the whole image when none is.
* :func:`localise`: runs the query backbone (eval mode) over the un-augmented images, in dataset
  order, and returns one box per image, hooking ``layer4`` (the last conv stage).
* :func:`sample_crop`: RandomResizedCrop's size draw (scale, ratio), then the top-left corner within
  the box with Beta(alpha, alpha), clamped so the crop always stays inside the image.
* :class:`CropBoxes`: the boxes of a dataset in a shared-memory tensor, so DataLoader workers (also
  persistent ones) read every update in place; ``state_dict`` puts them in the resumable state.

Boxes are ``(x0, y0, x1, y1)`` fractions of the image width and height, in [0, 1].
"""

from __future__ import annotations

import functools
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import RandomResizedCrop

from ..config import AugmentConfig
from ..core import preempt
from ..core.checkpoint import load_tensors, save_tensors
from ..errors import UserError

WHOLE = (0.0, 0.0, 1.0, 1.0)
KIND_BOXES = "crop-boxes"
CENTER = (0.25, 0.25, 0.75, 0.75)  # SimCCrop: the centre box of half the height and width


def boxes_from_features(feat: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, 4) boxes ``(x0, y0, x1, y1)`` in [0, 1] of an image of ``size`` (H, W)."""
    heat = feat.float().sum(dim=1)  # (N, h, w)
    flat = heat.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = (flat.max(dim=1).values[:, None, None] - lo).clamp_min(1e-12)
    heat = (heat - lo) / span  # a constant map is all zeros: nothing passes, the whole image is the box
    heat = F.interpolate(heat[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    hot = heat > threshold
    rows, cols = hot.any(dim=2), hot.any(dim=1)  # (N, H), (N, W)
    H, W = size

    def span_of(mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = mask.float().argmax(dim=1)
        last = length - 1 - mask.flip(1).float().argmax(dim=1)
        return first / length, (last + 1) / length

    y0, y1 = span_of(rows, H)
    x0, x1 = span_of(cols, W)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~rows.any(dim=1)
    boxes[empty] = torch.tensor(WHOLE)
    return boxes


@torch.no_grad()
def localise(backbone: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, threshold: float) -> torch.Tensor:
    """One box per image of ``loader`` (un-augmented images in dataset order) from ``backbone.layer4``."""
    captured: list[torch.Tensor] = []
    handle = backbone.layer4.register_forward_hook(lambda _m, _i, out: captured.append(out))
    was_training = backbone.training
    backbone.eval()
    boxes = []
    try:
        for images, _ in preempt.each(loader, "localising the crop boxes"):
            images = images.to(device, non_blocking=True)
            captured.clear()
            backbone(images)
            boxes.append(boxes_from_features(captured[0], tuple(images.shape[-2:]), threshold).cpu())
    finally:
        handle.remove()
        backbone.train(was_training)
    return torch.cat(boxes)


@functools.lru_cache(maxsize=8)
def _beta(alpha: float) -> torch.distributions.Beta:
    return torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha), validate_args=False)


def sample_crop(height: int, width: int, box: tuple[float, float, float, float], scale: tuple[float, float],
                ratio: tuple[float, float], alpha: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop: size as RandomResizedCrop, corner within ``box`` drawn with Beta(alpha, alpha).

    As the reference (after its fix of ``ch0 > ch1``): the box edges, shifted by half the crop size, give
    the range of the corner, clamped to [0, H - h]; so the crop never leaves the image.
    """
    _, _, h, w = RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio))
    x0, y0, x1, y1 = box
    b = _beta(float(alpha)).sample((2,)).tolist()

    def corner(lo: float, hi: float, full: int, extent: int, u: float) -> int:
        c0 = min(max(int(full * lo) - extent // 2, 0), full - extent)
        c1 = min(max(int(full * hi) - extent // 2, 0), full - extent)
        return c0 + int((c1 - c0) * u)

    return corner(y0, y1, height, h, b[0]), corner(x0, x1, width, w, b[1]), h, w


class CropBoxes:
    """The per-image boxes of a dataset and when they are used.

    ``contrastive``: every box starts as the whole image; box crops are used from epoch
    ``warmup_epochs`` on (0-based; plain random crops before), and boxes are recomputed after epochs
    ``warmup, warmup + loc_interval, ...`` (1-based, the last epoch excepted). ``center-box``: one fixed
    centre box for every image, used from the first epoch, never recomputed.
    """

    def __init__(self, n: int, cfg: AugmentConfig):
        self.mode, self.cfg = cfg.crops, cfg.ccrop
        init = CENTER if self.mode == "center-box" else WHOLE
        self.boxes = torch.tensor([init], dtype=torch.float32).repeat(n, 1).share_memory_()
        self.updated = torch.zeros(1, dtype=torch.int64).share_memory_()  # epoch of the last update, 0 = none

    def active(self, epoch: int) -> bool:
        """Box crops in (0-based) ``epoch``?"""
        return self.mode == "center-box" or epoch >= self.cfg.warmup_epochs

    def due(self, done: int, total: int) -> bool:
        """Recompute the boxes after ``done`` completed epochs (of ``total``)?"""
        w = self.cfg.warmup_epochs
        return self.mode == "contrastive" and done >= max(w, 1) and (done - w) % self.cfg.loc_interval == 0 \
            and done < total

    def update(self, boxes: torch.Tensor, epoch: int) -> None:
        if boxes.shape != self.boxes.shape:
            raise ValueError(f"expected {tuple(self.boxes.shape)} boxes, got {tuple(boxes.shape)}")
        self.boxes.copy_(boxes)  # in place: the workers' view of the shared memory sees it
        self.updated.fill_(epoch)

    def box(self, index: int) -> tuple[float, float, float, float]:
        return tuple(self.boxes[index].tolist())  # type: ignore[return-value]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"ccrop.boxes": self.boxes, "ccrop.updated": self.updated}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "ccrop.boxes" in state:
            self.update(state["ccrop.boxes"], int(state["ccrop.updated"]))

    def save(self, path: Path, protocol_json: str) -> None:
        """``boxes.safetensors`` in the run directory: the boxes and the epoch they were computed after."""
        save_tensors(path, {"boxes": self.boxes}, {"kind": KIND_BOXES, "mode": self.mode,
                                                   "epoch": str(int(self.updated)), "protocol": protocol_json})


def box_stats(boxes: torch.Tensor) -> dict[str, float]:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {"ccrop_box_area": float(area.mean()), "ccrop_whole": float((area >= 0.999).float().mean())}


def load_boxes(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    tensors, meta = load_tensors(path, KIND_BOXES)
    boxes = tensors.get("boxes")
    if boxes is None or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise UserError(f"{path} holds no (N, 4) 'boxes' tensor")
    return boxes, meta


def draw_boxes(images: list, boxes: torch.Tensor, cell: int = 128, cols: int = 0) -> "Image.Image":
    """A grid of ``images`` (PIL), each squashed to ``cell`` px with its box drawn in red."""
    import math

    from PIL import Image, ImageDraw

    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    pad = 4
    grid = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + pad) + pad), (255, 255, 255))
    for n, (img, box) in enumerate(zip(images, boxes.tolist())):
        tile = img.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST if min(img.size) < cell else
                                         Image.Resampling.BILINEAR)
        x0, y0, x1, y1 = (round(v * (cell - 1)) for v in box)
        ImageDraw.Draw(tile).rectangle([x0, y0, x1, y1], outline=(255, 0, 0), width=max(1, cell // 64))
        grid.paste(tile, (pad + (n % cols) * (cell + pad), pad + (n // cols) * (cell + pad)))
    return grid
