"""What every momentum-contrast method shares: the key encoder, its EMA update, the shuffled
key forward, the queue (filled with keys by ``warmup`` under ``queue_init: keys``), and InfoNCE
against the queue. What every method shares is in base.py.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..config import MethodConfig, ModelConfig
from ..core import distributed
from ..core.nets import has_batchnorm
from .base import ContrastiveMethod


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of queries ``q`` (N, D) with positives ``k`` (N, D) and negatives ``queue`` (D, K).

    All inputs are L2-normalised. Returns (mean loss, logits) with the positive in column 0.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), logits


#: the share of queries that may meet a key of their own image among the queue's negatives before
#: ``pretrain`` warns (and the most the own-data rule chooses); MoCo's ImageNet run has under 0.1%
OWN_KEY_SHARE = 0.05


def _epoch_images(images: int, global_batch: int) -> int:
    """The images one epoch draws: whole batches only (the loader drops the last, partial one)."""
    return images // global_batch * global_batch if global_batch else images


def own_key_share(images: int, global_batch: int, queue_size: int, keys_per_image: int = 1) -> float:
    """The expected share of queries whose own image has a key in the queue, from an earlier epoch.

    Epochs are reshuffled and end on a whole batch (``n`` images an epoch): an image at place p1 of one
    epoch and p2 of the next was last enqueued (n - p1) + p2 images before, and the queue holds the last
    x n images (x = queue_size / keys_per_image / n), so the share is x^2 / 2 for x <= 1,
    1 - (2 - x)^2 / 2 for 1 < x < 2, and 1 from 2 on. A queue below the images is not enough: MoCo-v2
    with 1,024 keys on 1,400 images meets its own image's key in about a third of its queries."""
    n = _epoch_images(images, global_batch)
    if n <= 0 or queue_size <= 0:
        return 0.0
    x = queue_size / keys_per_image / n
    return x * x / 2 if x <= 1 else (1 - (2 - x) ** 2 / 2 if x < 2 else 1.0)


def queue_within_share(images: int, global_batch: int, keys_per_image: int = 1, share: float = OWN_KEY_SHARE) -> int:
    """The largest multiple of the keys a step enqueues whose :func:`own_key_share` is at most ``share``
    (0 when even one step's keys exceed it)."""
    per_step = global_batch * keys_per_image
    most = int((2 * share) ** 0.5 * _epoch_images(images, global_batch) * keys_per_image)  # x^2 / 2 <= share
    size = most // per_step * per_step if per_step else 0
    while size > 0 and own_key_share(images, global_batch, size, keys_per_image) > share:
        size -= per_step
    return size


class MomentumContrast(ContrastiveMethod):
    """Query encoder f_q (trained), key encoder f_k (EMA of f_q), and a FIFO queue of keys."""

    def __init__(self, model: ModelConfig, method: MethodConfig):
        super().__init__(model, method)
        # off under SyncBN (use_sync_batchnorm) and for a backbone without BatchNorm (nothing to hide)
        self.shuffle_bn = model.shuffle_bn and has_batchnorm(self.encoder_q.backbone)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(model.dim, method.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def keys_per_image(self) -> int:
        """Keys enqueued per image and step (LeOCLR: 2 with ``enqueue: both``)."""
        return self.keys_per_image_of(self.cfg)

    @classmethod
    def keys_per_image_of(cls, method: MethodConfig) -> int:
        """:meth:`keys_per_image` of the method ``method`` configures, without building it."""
        return 1

    def queue_warnings(self, images: int, global_batch: int) -> list[str]:
        """What is off with ``queue_size`` for ``images`` training images and ``global_batch``: a queue
        that holds keys of a query's own image, from earlier epochs, among its negatives for more than
        :data:`OWN_KEY_SHARE` of the queries (:func:`own_key_share`), unless it is one step's keys already
        (the least there can be); a queue that is not a multiple of the keys enqueued per step (MoCo
        asserts that it is) wraps around within a step. Neither breaks this ring buffer, so both are
        warnings."""
        size, per_step = self.queue.shape[1], global_batch * self.keys_per_image()
        out = []
        share = own_key_share(images, global_batch, size, self.keys_per_image())
        if share > OWN_KEY_SHARE and size > per_step:  # one step's keys, the least there can be: nothing to say
            fit = queue_within_share(images, global_batch, self.keys_per_image())
            fix = (f"; e.g. {fit} (a multiple of the {per_step} keys a step) keeps it under {OWN_KEY_SHARE:.0%}"
                   if fit else f"; even one step's {per_step} keys do not keep it under {OWN_KEY_SHARE:.0%} "
                   "(a smaller batch or more images do)")
            out.append(f"method.queue_size ({size}) holds the keys of the last {size // self.keys_per_image()} images "
                       f"of {images}: with epochs reshuffled, about {share:.0%} of queries meet a key of their own "
                       f"image among their negatives{fix}")
        if size % per_step:
            mult = max(per_step, round(size / per_step) * per_step)
            out.append(f"method.queue_size ({size}) is not a multiple of the {per_step} keys enqueued per step "
                       f"(global batch {global_batch} x {self.keys_per_image()}), which MoCo asserts; a step's keys "
                       f"wrap around the queue (e.g. {mult} is a multiple)")
        return out

    @torch.no_grad()
    def momentum_update(self) -> None:
        """f_k <- m f_k + (1 - m) f_q over parameters (BN buffers stay the key encoder's own)."""
        m = self.cfg.momentum
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)

    @torch.no_grad()
    def encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised f_k(x); with shuffle-BN the batch is permuted before and restored after
        (under DDP across all ranks' batches, MoCo's batch_shuffle_ddp)."""
        if self.shuffle_bn:
            shuffled, unshuffle = distributed.batch_shuffle(x)
            k = distributed.batch_unshuffle(self.encoder_k(shuffled), unshuffle)
        else:
            k = self.encoder_k(x)
        return F.normalize(k, dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> int:
        """Write ``keys`` (N, D) of every rank at the pointer, oldest first out, wrapping around the
        ring; returns the number of keys written."""
        keys = distributed.all_gather(keys)
        size = self.queue.shape[1]
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[:, idx] = keys.T.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
        return keys.shape[0]

    def use_sync_batchnorm(self, device: torch.device) -> None:
        """SyncBatchNorm in both encoders, and no shuffle-BN: SyncBN sees the whole global batch,
        there is nothing to hide by shuffling."""
        super().use_sync_batchnorm(device)
        self.shuffle_bn = False

    @torch.no_grad()
    def warmup(self, batches) -> None:
        """``queue_init: keys``: fill the queue once with keys of the crop views of ``batches``
        (``(views, labels)`` pairs on the device), taking batches until it is full; ``random``: take none."""
        if self.cfg.queue_init != "keys":
            return
        written = 0
        for views, _ in batches:
            crops = [v for v, kind in zip(views, self.views) if kind == "crop"]
            keys = [self.encode_keys(c) for c in crops[: 1 if self.cfg.enqueue == "k1" else None]]
            written += self.enqueue(torch.cat(keys))
            if written >= self.queue.shape[1]:
                break

    def contrast(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return info_nce(q, k, self.queue.clone().detach(), self.cfg.temperature)
