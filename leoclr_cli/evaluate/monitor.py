"""What pretraining measures of its query backbone as it trains (``monitor.*``): the weighted-kNN top-1
(``knn_every``) and the online linear probe's top-1 (``linear_every``), both on the pretraining source's
labelled test split, logged by the engine's epoch-end hook into ``metrics.jsonl`` and the trackers as
``knn_top1`` and ``linear_top1``.

* The kNN monitor: features of at most ``max_bank`` train images (the bank) and ``max_test`` test images,
  eval transform, weighted kNN (``k``, ``t``; evaluate/knn.py), as ``leoclr knn``.
* The online probe: a :class:`~.linear.LinearClassifier` head (BatchNorm1d without affine, then fc) that the
  method trains at every step on the detached pooled features of one of its views and the pretraining
  split's labels (methods/base.py); here it is scored on the same test features as the kNN monitor.
* :meth:`Monitor.random_init_knn`: the kNN monitor of the random-init backbone of the run's arch and seed
  (the weights the run starts from), computed the same way: the floor the curve is read against.

Evaluation never moves the run: it runs in eval mode under a forked CPU RNG, so a run with monitors trains
bit-identically to one without. On data without labels the monitors are off, with one line saying so.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..config import EvalDataConfig, EvalTransformConfig, PretrainProtocol, eval_transform_for
from ..core.checkpoint import random_backbone
from ..data import default_eval_splits
from .features import extract, labelled_split, loader_for, subset
from .knn import knn_accuracy, topk_accuracy
from .linear import LinearClassifier


def monitor_data(p: PretrainProtocol) -> EvalDataConfig:
    """The labelled splits the monitors use: the pretraining source's train and test."""
    train, test = default_eval_splits(p.data.source)
    return EvalDataConfig(source=p.data.source, root=p.data.root, train_split=train, test_split=test,
                          verify_checksums=p.data.verify_checksums, num_workers=p.data.num_workers,
                          builtin_train=p.data.builtin_train, builtin_test=p.data.builtin_test)


def monitor_transform(p: PretrainProtocol) -> EvalTransformConfig:
    return EvalTransformConfig(**eval_transform_for(p.augment.size), **p.augment.norm_fields())


def has_labels(ds: Any) -> bool:
    """Whether ``ds`` has at least two classes and a labelled item (label -1: unlabelled)."""
    targets = getattr(ds, "targets", None)
    return bool(targets) and getattr(ds, "num_classes", 0) >= 2 and max(targets) >= 0


def online_probe(feature_dim: int, num_classes: int, seed: int) -> LinearClassifier:
    """The online probe's head, initialised from ``seed`` without touching the global RNG (so attaching
    it leaves every later draw of the run as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LinearClassifier(None, feature_dim, num_classes, "bn")


class Monitor:
    """The monitors of pretraining ``p`` on the labelled data; ``knn`` / ``linear``: whether each runs
    (what ``p.monitor`` asks for, less what the data cannot give). :attr:`note` is the one line that
    says a monitor asked for is off for lack of labels (None: nothing to say)."""

    def __init__(self, p: PretrainProtocol, source: Any, device: torch.device):
        cfg = p.monitor
        self.p, self.cfg, self.device = p, cfg, device
        self.knn, self.linear = bool(cfg.knn_every), bool(cfg.linear_every)
        self.note: Optional[str] = None
        self.num_classes: Optional[int] = None
        off = []
        if p.data.source == "folder" and (self.knn or self.linear):
            asked = [f"the kNN monitor (monitor.knn_every {cfg.knn_every})"] * self.knn + \
                [f"the online linear probe (monitor.linear_every {cfg.linear_every})"] * self.linear
            one = len(asked) == 1
            self.note = (f"monitor: {' and '.join(asked)} need{'s' * one} labels and folder data has none, so "
                         f"{'it is' if one else 'they are'} off; evaluate afterwards with leoclr knn RUN "
                         "--data LABELLED_DIR")
            self.knn = self.linear = False
        if self.linear and not has_labels(source):
            off.append("the online linear probe (monitor.linear_every)")
            why = f"the pretraining split '{p.data.split}' of {p.data.source} has no labels"
            self.linear = False
        if self.knn or self.linear:
            data, tf = monitor_data(p), monitor_transform(p)
            self.bank_src = subset(labelled_split(data, "train"), cfg.max_bank)
            self.test_src = subset(labelled_split(data, "test"), cfg.max_test)
            if not (has_labels(self.bank_src) and has_labels(self.test_src)):
                off = [n for n, on in (("the kNN monitor (monitor.knn_every)", self.knn),
                                       ("the online linear probe (monitor.linear_every)", self.linear)) if on] + off
                why = f"the splits '{data.train_split}' and '{data.test_split}' of {p.data.source} have no labels"
                self.knn = self.linear = False
            else:
                self.num_classes = self.test_src.num_classes
                self.bank_loader = loader_for(self.bank_src, tf, p.optim.batch_size, p.data.num_workers, device)
                self.test_loader = loader_for(self.test_src, tf, p.optim.batch_size, p.data.num_workers, device)
        if off and self.note is None:
            self.note = f"monitor: {why}; {' and '.join(off)} {'is' if len(off) == 1 else 'are'} off"
        self.probe_classes = source.num_classes if self.linear else None

    def due(self, every: int, epoch: int) -> bool:
        """Whether a monitor run every ``every`` epochs measures after ``epoch`` (0-based; the last always)."""
        return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == self.p.optim.epochs)

    def knn_top1(self, backbone: torch.nn.Module, test: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> float:
        """The kNN monitor's top-1 (%) of ``backbone`` (``test``: its test features, if already extracted)."""
        with torch.random.fork_rng(devices=[]):
            bank, bank_y = extract(backbone, self.bank_loader, self.device)
            test_x, test_y = test if test is not None else extract(backbone, self.test_loader, self.device)
        acc = knn_accuracy(bank, bank_y, test_x, test_y, self.num_classes, self.cfg.k, self.cfg.t)
        return acc["top1"]

    @torch.no_grad()
    def probe_top1(self, head: LinearClassifier, test: tuple[torch.Tensor, torch.Tensor]) -> float:
        """The online probe's top-1 (%) on the test features ``test`` (the head in eval mode)."""
        was_training = head.training
        head.eval()
        feats, labels = test
        param = next(head.parameters())
        scores = head.logits(feats.to(param.device, param.dtype)).float().cpu()
        head.train(was_training)
        return topk_accuracy(scores, labels)["top1"]

    def epoch_end(self, method: Any, epoch: int) -> dict[str, Any]:
        """The record entries after ``epoch`` (0-based): ``knn_top1`` / ``linear_top1`` when due."""
        knn, linear = self.knn and self.due(self.cfg.knn_every, epoch), \
            self.linear and self.due(self.cfg.linear_every, epoch)
        if not (knn or linear):
            return {}
        with torch.random.fork_rng(devices=[]):
            test = extract(method.backbone, self.test_loader, self.device)
        record: dict[str, Any] = {}
        if knn:
            record["knn_top1"] = self.knn_top1(method.backbone, test)
        if linear:
            record["linear_top1"] = self.probe_top1(method.probe, test)
        return record

    def random_init_knn(self) -> float:
        """The kNN monitor's top-1 of the random-init backbone of the run's arch and seed."""
        m = self.p.model
        return self.knn_top1(random_backbone(m.arch, m.cifar_stem, self.p.seed, m.timm_kwargs).to(self.device))
