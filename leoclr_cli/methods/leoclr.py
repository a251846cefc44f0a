"""LeOCLR: both random crops are pulled toward the un-cropped original image.

The original x goes through the query encoder f_q (the only branch with gradients); the crops
x1, x2 go through the momentum encoder f_k. Loss (paper eq. 3):

    L = InfoNCE(f_q(x), f_k(x1)+, queue) + InfoNCE(f_q(x), f_k(x2)+, queue)

Multi-crop (``augment.local_crops`` = N > 0, ours): N small crops l_1..l_N also go through f_k and each
is pulled toward f_q(x) by the same term; the 2 + N terms are averaged and scaled by 2, so the loss
keeps eq. 3's scale (N = 0 is eq. 3, computed exactly as without the feature):

    L = 2 / (2 + N) * [InfoNCE(q, k1+) + InfoNCE(q, k2+) + sum_j InfoNCE(q, f_k(l_j)+)]

Only the crop keys k1, k2 are enqueued (as with N = 0); the local keys are positives only.

Choices where the paper is silent (protocol fields, see PROTOCOL.md):
``enqueue`` = ``both`` (k1 and k2 are enqueued, 2N keys a step) or ``k1``;
``key_forward`` = ``separate`` (two f_k forwards, per-view BN statistics, as MoCo) or ``joint``
(the local crops likewise: one forward each, or all of them in one).
"""

from __future__ import annotations

import torch

from ..config import MethodConfig, ModelConfig
from .base import top1_positive
from .momentum import MomentumContrast


class LeOCLR(MomentumContrast):
    """``views = [original, crop_1, crop_2]``, then ``local_crops`` local views."""

    views = ("original", "crop", "crop")

    def __init__(self, model: ModelConfig, method: MethodConfig, local_crops: int = 0):
        super().__init__(model, method)
        self.local_crops = local_crops
        if local_crops:
            self.views = (*type(self).views, *("local",) * local_crops)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, x1, x2, *local = views
        h, q = self.query(x)
        k1, k2 = self.crop_keys(x1, x2)
        loss1, logits1 = self.contrast(q, k1)
        loss2, logits2 = self.contrast(q, k2)
        terms = [self.contrast(q, k) for k in self.local_keys(local)] if local else []  # before the enqueue
        self.enqueue_crop_keys(k1, k2)
        acc = (top1_positive(logits1) + top1_positive(logits2)) / 2
        stats = {"acc": acc, "loss1": loss1.detach(), "loss2": loss2.detach()}
        if not terms:
            return self.probed(loss1 + loss2, stats, h, labels)
        n = 2 + len(terms)
        stats["acc"] = (2 * acc + sum(top1_positive(logits) for _, logits in terms)) / n
        stats["loss_local"] = sum(t.detach() for t, _ in terms) / len(terms)
        return self.probed((loss1 + loss2 + sum(t for t, _ in terms)) * (2 / n), stats, h, labels)

    @torch.no_grad()
    def crop_keys(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Momentum update, then f_k(x1), f_k(x2) (two forwards, or one with ``key_forward: joint``)."""
        self.momentum_update()
        if self.cfg.key_forward == "joint":
            k1, k2 = self.encode_keys(torch.cat([x1, x2])).chunk(2)
            return k1, k2
        return self.encode_keys(x1), self.encode_keys(x2)

    @torch.no_grad()
    def local_keys(self, local: list[torch.Tensor]) -> list[torch.Tensor]:
        """f_k of each local crop (after the momentum update): one forward each, or all in one with
        ``key_forward: joint``."""
        if self.cfg.key_forward == "joint":
            return list(self.encode_keys(torch.cat(local)).chunk(len(local)))
        return [self.encode_keys(v) for v in local]

    @classmethod
    def keys_per_image_of(cls, method: MethodConfig) -> int:
        return 2 if method.enqueue == "both" else 1

    def enqueue_crop_keys(self, k1: torch.Tensor, k2: torch.Tensor) -> None:
        self.enqueue(torch.cat([k1, k2]) if self.cfg.enqueue == "both" else k1)
