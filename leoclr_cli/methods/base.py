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

The online linear probe (``monitor.linear_every``, solo-learn's online classifier) is part of every method:
its forward computes the query encoder's pooled features of one view it encodes anyway (:meth:`query`: the
original image for LeOCLR's family, the query crop for MoCo-v2, the first view for the end-to-end ones) and
hands them to :meth:`probed`, which, when a head is attached (:meth:`attach_probe`), adds the head's
cross-entropy on the *detached* features to the loss (labels -1, unlabelled images, are left out). The
backbone's gradients are those of the method's loss alone, the head has its own optimizer group
(:meth:`optimizer_groups`), and the records' ``loss`` stays the method's.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
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
        self.probe: Optional[nn.Module] = None

    def attach_probe(self, head: nn.Module) -> None:
        """Train ``head`` (a module with ``logits(features)``, e.g. evaluate/linear.py's LinearClassifier
        without backbone) as the online probe from the next step on."""
        self.probe = head

    def optimizer_groups(self, probe_lr_scale: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: every trained parameter but the probe's, then (with a probe)
        the probe's, without weight decay, at ``probe_lr_scale`` times the schedule's lr (the engine's
        ``lr_scale``). The first group is the same with or without a probe."""
        probe = {id(q) for q in self.probe.parameters()} if self.probe is not None else set()
        groups: list[dict[str, Any]] = [
            {"params": [q for q in self.parameters() if q.requires_grad and id(q) not in probe]}]
        if self.probe is not None:
            groups.append({"params": list(self.probe.parameters()), "weight_decay": 0.0, "lr_scale": probe_lr_scale})
        return groups

    def query(self, x: torch.Tensor) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """(pooled features, L2-normalised projection) of ``x`` through the query encoder; the features
        only when a probe is attached (None otherwise: the encoder's plain forward)."""
        if self.probe is None:
            return None, F.normalize(self.encoder_q(x), dim=1)
        h, z = self.encoder_q(x, features=True)
        return h, F.normalize(z, dim=1)

    def probed(self, loss: torch.Tensor, stats: dict[str, torch.Tensor], features: Optional[torch.Tensor],
               labels: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's ``(loss, stats)`` with the online probe's step added (unchanged without a probe):
        the probe's cross-entropy on ``features.detach()`` in float32 over the labelled images, added to the
        loss that is backpropagated; ``stats`` gain ``loss`` (the method's), ``linear_loss`` and
        ``linear_train_top1`` (%, on the batch's labelled images)."""
        if self.probe is None or features is None or labels is None:
            return loss, stats
        with torch.autocast(features.device.type, enabled=False):
            logits = self.probe.logits(features.detach().float())
        labelled = labels >= 0
        count = labelled.sum().clamp(min=1)
        ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        probe_loss = (ce * labelled).sum() / count
        hits = ((logits.argmax(dim=1) == labels) & labelled).sum()
        return loss + probe_loss, {**stats, "loss": loss.detach(), "linear_loss": probe_loss.detach(),
                                   "linear_train_top1": 100.0 * hits / count}

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
