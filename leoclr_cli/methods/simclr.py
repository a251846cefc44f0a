"""SimCLR (the end-to-end baseline of Table 5): two crops, NT-Xent with in-batch negatives.

    L = (NCE(z1 -> z2+) + NCE(z2 -> z1+)) / 2, negatives: both views of every other image,

which is SimCLR's NT-Xent averaged over the 2N anchors.
"""

from __future__ import annotations

import torch

from .base import top1_positive
from .endtoend import EndToEnd


class SimCLR(EndToEnd):
    """``views = [crop_1, crop_2]``."""

    views = ("crop", "crop")

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h, (z1, z2) = self.embed(views)
        everyone = self.gather([z1, z2])
        loss12, logits12 = self.nce(z1, z2, everyone)
        loss21, logits21 = self.nce(z2, z1, everyone)
        acc = (top1_positive(logits12) + top1_positive(logits21)) / 2
        return self.probed((loss12 + loss21) / 2, {"acc": acc}, h, labels)
