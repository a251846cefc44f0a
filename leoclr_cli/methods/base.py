"""What every pretraining method shares: it is an engine :class:`~..engine.Task` (``forward(views,
labels) -> (loss, stats)``, ``warmup``, ``extra_state``) with a query encoder f_q, the view kinds it
needs and the backbone pretraining exports.

A method subclasses :class:`~.momentum.MomentumContrast` (key encoder, queue; MoCo's family) or
:class:`~.endtoend.EndToEnd` (one encoder, in-batch negatives) and implements ``forward``; the engine
knows nothing else about it. The hooks it may override:

* ``warmup(batches)``: before the first step of a new run (MoCo's family fills its queue with keys
  under ``queue_init: keys``); the default takes no batch.
* ``extra_state()`` / ``load_extra_state(state)``: state of its own that checkpoints must carry.
* :meth:`ContrastiveMethod.use_sync_batchnorm`: ``distributed.bn: sync`` under DDP; a method whose
  forward depends on per-rank BN (MoCo's shuffle-BN) adapts itself here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import MethodConfig, ModelConfig
from ..core import distributed
from ..core.engine import Task
from ..core.nets import Encoder


def top1_positive(logits: torch.Tensor) -> torch.Tensor:
    """Percent of rows whose positive (column 0) has the largest logit (a 0-d tensor, no sync): ``acc`` in
    metrics.jsonl, a percent like every accuracy leoclr writes."""
    return (logits.detach().argmax(dim=1) == 0).float().mean() * 100


class ContrastiveMethod(Task):
    """The query encoder f_q (backbone + projection head) and the method's config."""

    #: the views the data pipeline must produce, in order: ("original", "crop", "crop", ...)
    views: tuple[str, ...] = ("crop", "crop")

    def __init__(self, model: ModelConfig, method: MethodConfig):
        super().__init__()
        self.cfg = method
        self.encoder_q = Encoder(model)

    @property
    def backbone(self) -> nn.Module:
        """The query backbone: what pretraining produces."""
        return self.encoder_q.backbone

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def queue_warnings(self, images: int, global_batch: int) -> list[str]:
        """Warnings about the method's settings for ``images`` training images and ``global_batch``, printed
        once before a run starts (none by default; MoCo's family checks its queue)."""
        return []

    def use_sync_batchnorm(self, device: torch.device) -> None:
        """One BatchNorm over the global batch: every BN of every encoder becomes a SyncBatchNorm, in
        place (CUDA only; ``distributed.bn: sync``)."""
        distributed.sync_batchnorm(self, device)
