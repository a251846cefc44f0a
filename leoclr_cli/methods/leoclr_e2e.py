"""LeOCLR in the end-to-end mechanism (Table 5): one encoder, the two crops pulled to the original.

    L = NCE(z -> z1+) + NCE(z -> z2+), z = f(x), z1 = f(x1), z2 = f(x2),

anchors the originals only (as in LeOCLR, the crops are never anchors), negatives every view
(original and crops) of every other image in the batch; gradients flow through all three views.
"""

from __future__ import annotations

import torch

from .base import top1_positive
from .endtoend import EndToEnd


class LeOCLRE2E(EndToEnd):
    """``views = [original, crop_1, crop_2]``."""

    views = ("original", "crop", "crop")

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h, (z, z1, z2) = self.embed(views)
        everyone = self.gather([z, z1, z2])
        loss1, logits1 = self.nce(z, z1, everyone)
        loss2, logits2 = self.nce(z, z2, everyone)
        acc = (top1_positive(logits1) + top1_positive(logits2)) / 2
        return self.probed(loss1 + loss2, {"acc": acc, "loss1": loss1.detach(), "loss2": loss2.detach()}, h,
                           labels)
