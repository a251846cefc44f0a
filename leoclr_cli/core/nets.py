"""Networks: torchvision ResNets by name, the CIFAR stem, timm models (``timm:NAME``, timm_nets.py), the
projection head, SplitBatchNorm.

The backbone is a stock torchvision ResNet with ``fc`` replaced by ``Identity``, so its state
dict keys are torchvision's and a checkpoint loads into ``torchvision.models.<arch>()``; or a timm
model without its classifier, whose keys are timm's.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..config import RESNETS, ModelConfig, check_arch
from ..errors import UserError
from .timm_nets import build_timm, is_timm

#: ``random:ARCH`` (``random:resnet18``, ``random:resnet18-cifar`` for the CIFAR stem, ``random:timm:NAME``) names a
#: seeded random-init backbone wherever a backbone is expected: the floor any pretraining must beat
RANDOM_PREFIX = "random:"


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm that normalises ``num_splits`` chunks of the batch separately while training.

    On one device this reproduces the per-GPU BN statistics of an ``num_splits``-GPU run, which,
    with the key encoder's in-batch shuffle, is MoCo's shuffle-BN (it keeps the query and its key
    from sharing batch statistics). Parameters and buffers are plain BatchNorm2d ones, so the
    state dict is a torchvision one. In eval mode, or when the batch does not divide, it is
    ordinary BatchNorm.
    """

    def __init__(self, num_features: int, num_splits: int = 8, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.num_splits
        if not self.training or s == 1 or n % s:
            return super().forward(x)
        # The batch as s groups: (n/s, s*c, h, w) lets one batch_norm call keep s sets of statistics.
        grouped = x.reshape(n // s, s * c, h, w)  # a copy for channels-last input
        mean = self.running_mean.repeat(s)
        var = self.running_var.repeat(s)
        out = F.batch_norm(grouped, mean, var, self.weight.repeat(s), self.bias.repeat(s),
                           True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(0))
            self.running_var.copy_(var.view(s, c).mean(0))
            self.num_batches_tracked.add_(1)
        return out.reshape(n, c, h, w)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` normalises with batch statistics anywhere (what SplitBN, shuffle-BN and SyncBN act on)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def split_batchnorms(model: nn.Module, num_splits: int) -> nn.Module:
    """Every plain ``nn.BatchNorm2d`` of ``model`` becomes a :class:`SplitBatchNorm` with the same
    parameters and buffers (state dict unchanged), in place; BatchNorm subclasses that do more (timm's
    BatchNormAct2d) stay as they are."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                split = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                       affine=child.affine, track_running_stats=child.track_running_stats)
                split.load_state_dict(child.state_dict())
                setattr(parent, name, split)
    return model


def build_backbone(arch: str, *, cifar_stem: bool = False, bn_splits: int = 1,
                   timm_kwargs: Optional[dict[str, Any]] = None) -> nn.Module:
    """A torchvision ResNet without its classifier (``fc = Identity``), or the timm model ``timm:NAME``
    built with ``timm_kwargs`` and ``num_classes=0`` (its plain BatchNorm2d split when ``bn_splits`` > 1);
    ``.feature_dim`` is set."""
    if is_timm(arch):
        model = build_timm(arch, timm_kwargs)
        return split_batchnorms(model, bn_splits) if bn_splits > 1 else model
    if arch not in RESNETS:
        raise ValueError(f"unknown arch {arch}")
    norm = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else None
    model = getattr(torchvision.models, arch)(weights=None, norm_layer=norm)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


def projection_head(feature_dim: int, dim: int, mlp: bool) -> nn.Module:
    """MoCo-v2's head: Linear(feat, feat) - ReLU - Linear(feat, dim), no BN; or one Linear."""
    if not mlp:
        return nn.Linear(feature_dim, dim)
    return nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, dim))


class Encoder(nn.Module):
    """Backbone followed by the projection head; ``backbone`` keys are torchvision's."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone = build_backbone(cfg.arch, cifar_stem=cfg.cifar_stem, bn_splits=cfg.bn_splits,
                                       timm_kwargs=cfg.timm_kwargs)
        self.head = projection_head(self.backbone.feature_dim, cfg.dim, cfg.mlp)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The projection of ``x``; with ``features``, (pooled backbone features, projection)."""
        h = self.backbone(x)
        return (h, self.head(h)) if features else self.head(h)


def plain_backbone_copy(backbone: nn.Module, arch: str, cifar_stem: bool) -> nn.Module:
    """The same weights in a backbone with ordinary BatchNorm (what the checkpoint describes)."""
    plain = build_backbone(arch, cifar_stem=cifar_stem)
    plain.load_state_dict(backbone.state_dict())
    return plain


def parse_random(spec: str) -> tuple[str, bool]:
    """``random:resnet18-cifar`` -> (``resnet18``, CIFAR stem True), ``random:timm:NAME`` -> (``timm:NAME``,
    False); one sentence for an unknown arch (or a timm arch without timm)."""
    name = spec[len(RANDOM_PREFIX):]
    cifar = name.endswith("-cifar") and not is_timm(name)
    arch, cifar_stem = (name[: -len("-cifar")], True) if cifar else (name, False)
    try:
        check_arch(arch)
    except ValueError as e:
        raise UserError(f"{spec}: {e}" + ("" if is_timm(arch) else "; with '-cifar' for the CIFAR stem "
                                                                  "(e.g. random:resnet18-cifar)")) from None
    return arch, cifar_stem


