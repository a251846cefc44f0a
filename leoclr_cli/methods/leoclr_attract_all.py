"""LeOCLR (attract all crops), Table 8: the two crops are also pulled to each other.

    L = InfoNCE(q, k1+) + InfoNCE(q, k2+) + InfoNCE(q1, k2+) + InfoNCE(q2, k1+)   (all against the queue)

with q = f_q(x), q1 = f_q(x1), q2 = f_q(x2) (three query forwards, per-view BN statistics) and
k1, k2 = f_k(x1), f_k(x2). The crop-to-crop terms are MoCo-v2's symmetrised loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import top1_positive
from .leoclr import LeOCLR


class LeOCLRAttractAll(LeOCLR):
    """``views = [original, crop_1, crop_2]``; four InfoNCE terms."""

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, x1, x2 = views
        h, q = self.query(x)
        q1, q2 = (F.normalize(self.encoder_q(v), dim=1) for v in (x1, x2))
        k1, k2 = self.crop_keys(x1, x2)
        terms = [self.contrast(a, k) for a, k in ((q, k1), (q, k2), (q1, k2), (q2, k1))]
        self.enqueue_crop_keys(k1, k2)
        acc = sum(top1_positive(logits) for _, logits in terms) / len(terms)
        stats = {"acc": acc, **{f"loss{i + 1}": loss.detach() for i, (loss, _) in enumerate(terms)}}
        return self.probed(sum(loss for loss, _ in terms), stats, h, labels)
