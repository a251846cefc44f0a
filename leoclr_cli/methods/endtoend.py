"""What the end-to-end methods share (SimCLR's mechanism, Table 5): one encoder, every view through
it with gradients, negatives from the batch (no key encoder, no queue).

:func:`in_batch_nce` is NT-Xent written per (anchor, positive) pair: for the anchor of image i the
positive is another view of image i, the negatives are every view of every *other* image in the
batch (``views`` lists all views, own-image entries are dropped). SimCLR's NT-Xent is the mean of
its two directions; LeOCLR-e2e sums the two (original, crop) pairs.

Under DDP the negatives are the whole global batch, as in SimCLR's cross-replica loss: each rank's
embeddings are all-gathered with their gradient (:func:`~..distributed.all_gather_grad`), each rank
takes its own images as anchors, and DDP's gradient average makes the update the one of one process
over the global batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..core import distributed
from .base import ContrastiveMethod


def in_batch_nce(anchor: torch.Tensor, positive: torch.Tensor, views: list[torch.Tensor],
                 temperature: float, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``anchor`` (n, D) against ``positive`` (n, D) with the other images' views as
    negatives; all inputs L2-normalised. ``views`` are (N, D) each, N >= n, and the anchors' own images
    are rows ``offset`` to ``offset + n`` of them (a rank's slice of the gathered batch).
    Returns (mean loss, logits (n, 1 + V(N-1)), positive first)."""
    n, total = anchor.shape[0], views[0].shape[0]
    l_pos = (anchor * positive).sum(dim=1, keepdim=True)
    l_all = anchor @ torch.cat(views).T  # (n, V*N): column v*N + j is view v of image j
    own = torch.zeros(n, total, dtype=torch.bool, device=anchor.device)
    own[:, offset:offset + n] = torch.eye(n, dtype=torch.bool, device=anchor.device)
    l_neg = l_all[~own.repeat(1, len(views))].view(n, -1)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(n, dtype=torch.long, device=anchor.device)
    return F.cross_entropy(logits, labels), logits


class EndToEnd(ContrastiveMethod):
    """One encoder for every view. The views go through it in one forward (the whole 2N or 3N batch
    shares BN statistics: SimCLR's global BN on one device)."""

    def embed(self, views: list[torch.Tensor]) -> tuple[Optional[torch.Tensor], list[torch.Tensor]]:
        """(pooled features of ``views[0]`` (None without a probe), the normalised projections of every view)."""
        h, z = self.query(torch.cat(views))
        return None if h is None else h[: views[0].shape[0]], list(z.chunk(len(views)))

    def nce(self, anchor: torch.Tensor, positive: torch.Tensor, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`in_batch_nce` of this rank's anchors against the global batch's ``views``
        (already gathered by :meth:`gather`; one process: the batch itself)."""
        return in_batch_nce(anchor, positive, views, self.cfg.temperature, offset=distributed.rank() * anchor.shape[0])

    @staticmethod
    def gather(zs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [distributed.all_gather_grad(z) for z in zs]
