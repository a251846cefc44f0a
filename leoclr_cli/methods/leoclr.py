"""LeOCLR: both random crops are pulled toward the un-cropped original image.

The original x goes through the query encoder f_q (the only branch with gradients); the crops
x1, x2 go through the momentum encoder f_k. Loss (paper eq. 3):

    L = InfoNCE(f_q(x), f_k(x1)+, queue) + InfoNCE(f_q(x), f_k(x2)+, queue)

Choices where the paper is silent (protocol fields, see PROTOCOL.md):
``enqueue`` = ``both`` (k1 and k2 are enqueued, 2N keys a step) or ``k1``;
``key_forward`` = ``separate`` (two f_k forwards, per-view BN statistics, as MoCo) or ``joint``.
"""

from __future__ import annotations

import torch

from ..config import MethodConfig
from .base import top1_positive
from .momentum import MomentumContrast


class LeOCLR(MomentumContrast):
    """``views = [original, crop_1, crop_2]``."""

    views = ("original", "crop", "crop")

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, x1, x2 = views
        h, q = self.query(x)
        k1, k2 = self.crop_keys(x1, x2)
        loss1, logits1 = self.contrast(q, k1)
        loss2, logits2 = self.contrast(q, k2)
        self.enqueue_crop_keys(k1, k2)
        acc = (top1_positive(logits1) + top1_positive(logits2)) / 2
        return self.probed(loss1 + loss2, {"acc": acc, "loss1": loss1.detach(), "loss2": loss2.detach()}, h,
                           labels)

    @torch.no_grad()
    def crop_keys(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Momentum update, then f_k(x1), f_k(x2) (two forwards, or one with ``key_forward: joint``)."""
        self.momentum_update()
        if self.cfg.key_forward == "joint":
            k1, k2 = self.encode_keys(torch.cat([x1, x2])).chunk(2)
            return k1, k2
        return self.encode_keys(x1), self.encode_keys(x2)

    @classmethod
    def keys_per_image_of(cls, method: MethodConfig) -> int:
        return 2 if method.enqueue == "both" else 1

    def enqueue_crop_keys(self, k1: torch.Tensor, k2: torch.Tensor) -> None:
        self.enqueue(torch.cat([k1, k2]) if self.cfg.enqueue == "both" else k1)
