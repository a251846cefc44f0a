"""What the end-to-end methods share (SimCLR's mechanism, Table 5): one encoder, every view through
it with gradients, negatives from the batch (no key encoder, no queue).

:func:`in_batch_nce` is NT-Xent written per (anchor, positive) pair: for the anchor of image i the
positive is another view of image i, the negatives are every view of every *other* image in the
batch (``views`` lists all views, own-image entries are dropped). SimCLR's NT-Xent is the mean of
its two directions; LeOCLR-e2e sums the two (original, crop) pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .momentum import ContrastiveMethod


def in_batch_nce(anchor: torch.Tensor, positive: torch.Tensor, views: list[torch.Tensor],
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``anchor`` (N, D) against ``positive`` (N, D) with the other images' views as
    negatives; all inputs L2-normalised. Returns (mean loss, logits (N, 1 + V(N-1)), positive first)."""
    n = anchor.shape[0]
    l_pos = (anchor * positive).sum(dim=1, keepdim=True)
    l_all = anchor @ torch.cat(views).T  # (N, V*N): column v*N + j is view v of image j
    own = torch.eye(n, dtype=torch.bool, device=anchor.device).repeat(1, len(views))
    l_neg = l_all[~own].view(n, -1)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(n, dtype=torch.long, device=anchor.device)
    return F.cross_entropy(logits, labels), logits


class EndToEnd(ContrastiveMethod):
    """One encoder for every view. The views go through it in one forward (the whole 2N or 3N batch
    shares BN statistics: SimCLR's global BN on one device)."""

    def embed(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        z = F.normalize(self.encoder_q(torch.cat(views)), dim=1)
        return list(z.chunk(len(views)))
