"""MoCo-v2: query q = f_q(crop 1), positive key k = f_k(crop 2), negatives from the queue."""

from __future__ import annotations

import torch

from .base import top1_positive
from .momentum import MomentumContrast


class MoCoV2(MomentumContrast):
    """``views = [crop_q, crop_k]``; loss = InfoNCE(q, k+, queue); k is enqueued."""

    views = ("crop", "crop")

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        im_q, im_k = views
        h, q = self.query(im_q)
        with torch.no_grad():
            self.momentum_update()
            k = self.encode_keys(im_k)
        loss, logits = self.contrast(q, k)
        self.enqueue(k)
        return self.probed(loss, {"acc": top1_positive(logits)}, h, labels)
