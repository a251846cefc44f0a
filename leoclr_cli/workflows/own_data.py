"""Pretraining on your own images without ``-p``: ``protocols/own_data.yaml`` plus a rule that sizes the run
to the images and the device, said in one line on stderr.

The rule (:func:`own_data_recipe`), from the image count N and the device:

* CPU: ResNet-18 at 64 px, batch 64, epochs ceil(50,000 / N) within 10..100 (about 50,000 images seen);
* CUDA, N < 50,000: ResNet-18 at 96 px, batch 128, epochs ceil(1,000,000 / N) within 100..500, the tensor
  view backend and up to 8 loader workers;
* CUDA, N >= 50,000: the paper's ImageNet recipe (ResNet-50 at 224 px, batch 256, 200 epochs, m 0.999,
  lr 0.03, wd 1e-4), the tensor backend and up to 8 loader workers.

The batch is at most a quarter of the images (a multiple of 8 from 16 up), so an epoch has at least four
steps; BN splits are the largest of 8, 4, 2, 1 that divide it into groups of two or more; MoCo's queue is
the largest multiple of the keys enqueued per step (batch x keys per image) with which at most 5% of the
queries meet a key of their own image among their negatives (epochs are reshuffled, so a queue below N
is not enough: ``methods.momentum.own_key_share``), at least one step's keys and at most 65,536. A value given by a flag or
``--set`` is kept, and the values that depend on it (the queue and the BN splits on the batch) follow it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from ..config import PretrainProtocol, installed, load_protocol
from ..core.engine import resolve_device
from ..core.tracking import flat
from ..data import open_pretrain_data
from ..methods import METHODS, MomentumContrast
from ..methods.momentum import OWN_KEY_SHARE, queue_within_share

OWN_DATA = "own_data.yaml"
#: the largest queue the rule chooses (MoCo's K on ImageNet)
MAX_QUEUE = 65536
#: from this many images on a CUDA device, the ImageNet recipe
LARGE = 50_000


def fitting_batch(images: int, cap: int) -> int:
    """The batch for ``images``: ``cap``, at most a quarter of the images (a multiple of 8 from 16 up; below
    that an even number, at least 2)."""
    quarter = images // 4
    if quarter >= 16:
        return min(cap, quarter // 8 * 8)
    return min(cap, max(2, quarter // 2 * 2))


def bn_splits_for(batch: int) -> int:
    """The largest of 8, 4, 2, 1 that divides ``batch`` into groups of at least two."""
    return next(s for s in (8, 4, 2, 1) if batch % s == 0 and batch >= 2 * s)


def queue_for(images: int, batch: int, keys_per_image: int) -> int:
    """The largest multiple of the keys a step enqueues with which at most ``OWN_KEY_SHARE`` (5%) of the
    queries meet a key of their own image (and at most :data:`MAX_QUEUE`); one step's keys when even
    that does not fit."""
    per_step = batch * keys_per_image
    return max(per_step, min(MAX_QUEUE // per_step * per_step, queue_within_share(images, batch, keys_per_image)))


def own_data_recipe(images: int, device: str, p: PretrainProtocol, given: set[str]) -> tuple[dict[str, Any], str]:
    """(dotted protocol values, the sentence that says them) for ``images`` images on ``device`` (cpu or cuda).
    ``p``: the protocol with the user's flags applied; ``given``: the dotted fields they set, kept as they are."""
    large = device == "cuda" and images >= LARGE
    if large:
        arch, size, cap, epochs = "resnet50", 224, 256, 200
        why = f"{images:,} images on cuda: the paper's ImageNet recipe"
    elif device == "cuda":
        arch, size, cap = "resnet18", 96, 128
        epochs = min(500, max(100, math.ceil(1_000_000 / images)))
        why = f"{images:,} images on cuda: about 1,000,000 images seen, 100 to 500 epochs"
    else:
        arch, size, cap = "resnet18", 64, 64
        epochs = min(100, max(10, math.ceil(50_000 / images)))
        why = f"{images:,} images on cpu: about 50,000 images seen, 10 to 100 epochs"
    chosen: dict[str, Any] = {"model.arch": arch, "augment.size": size, "optim.epochs": epochs,
                              "optim.batch_size": fitting_batch(images, cap)}
    if large:
        chosen.update({"method.momentum": 0.999, "optim.lr": 0.03, "optim.weight_decay": 1e-4})
    if device == "cuda":
        chosen.update({"augment.backend": "tensor", "data.num_workers": min(8, max(1, (os.cpu_count() or 2) - 1))})
    chosen = {k: v for k, v in chosen.items() if k not in given}
    batch = chosen.get("optim.batch_size", p.optim.batch_size)
    if "model.bn_splits" not in given:
        chosen["model.bn_splits"] = bn_splits_for(batch)
    method = METHODS[p.method.name]
    queue_text = ""
    if issubclass(method, MomentumContrast):
        keys = method.keys_per_image_of(p.method)
        if "method.queue_size" not in given:
            chosen["method.queue_size"] = queue_for(images, batch, keys)
            queue_text = (f", queue {chosen['method.queue_size']:,} (a multiple of the {batch * keys} keys a step, "
                          f"at most {OWN_KEY_SHARE:.0%} of queries meeting their own image's key)")
    said = [f"{chosen['model.arch']}" if "model.arch" in chosen else None,
            f"{chosen['augment.size']} px" if "augment.size" in chosen else None,
            f"{chosen['optim.epochs']} epochs" if "optim.epochs" in chosen else None,
            f"batch {chosen['optim.batch_size']} (at most a quarter of the images)" if "optim.batch_size" in chosen
            else None]
    line = (f"own-data recipe (no -p: {OWN_DATA} and its rule, docs/data.md): {why} -> "
            f"{', '.join(s for s in said if s)}{queue_text}; a flag or --set overrides any of them")
    return chosen, line


def own_data_protocol(overrides: dict[str, Any]) -> tuple[PretrainProtocol, str]:
    """The pretraining protocol for your own images when no ``-p`` is given: ``own_data.yaml``, then the
    rule's values for these images and this device, then ``overrides`` (the flags); and the line that says
    what the rule chose and why."""
    base = flat(yaml.safe_load(installed(OWN_DATA).read_text()))
    first = load_protocol("pretrain", None, overrides, {**base, "model.bn_splits": 1})  # the rule fits the splits
    images = len(open_pretrain_data(first.data))
    device = resolve_device(first.device).type
    chosen, line = own_data_recipe(images, device, first, {k for k, v in overrides.items() if v is not None})
    return load_protocol("pretrain", None, overrides, {**base, **chosen}), line


def pretrain_protocol(protocol: Optional[Path], overrides: dict[str, Any], say: Callable[[str], None]) -> PretrainProtocol:
    """The pretraining protocol of ``-p`` and the flags (``leoclr pretrain``, ``leoclr views``); for your own
    images (source folder) without ``-p``, :func:`own_data_protocol`, whose line ``say`` tells."""
    if protocol is not None or overrides.get("data.source") != "folder":
        return load_protocol("pretrain", protocol, overrides)
    p, chosen = own_data_protocol(overrides)
    say(chosen)
    return p
