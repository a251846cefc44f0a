"""Faster R-CNN R50-C4 from torchvision's ``FasterRCNN``, equal in structure to Detectron2's.

res4 features (stem .. layer3, stride 16) feed the RPN (anchors 32..512, ratios 0.5/1/2); boxes
are pooled with RoIAlign 14x14 (``aligned=True``, Detectron2's ROIAlignV2); the box head is res5
(layer4) followed by MoCo's extra norm and average pooling. Every BatchNorm trains (naiveSyncBN
on one device = BN; FREEZE_AT 0). The model's transform normalises with the ImageNet mean/std and
draws each training image's shorter side from the train sizes (Detectron2's ResizeShortestEdge).
Training goes through the project's one engine, with per-iteration warm-up and lr steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
import torchvision
from rich.console import Console
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, roi_align

from ..config import DetectProtocol
from ..core import preempt
from ..core.engine import Checkpoints, DeviceSpec, Engine, Observers, Schedule, Task, resolve_device, to_device
from ..core.tracking import Tracker
from ..errors import UserError
from .datasets import DetectionTrainSet, collate, read_image


class Res4(nn.Module):
    """ResNet stem + res2..res4; one feature map ``res4`` with 1024 channels at stride 16."""

    out_channels = 1024

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.body = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1,
                                  resnet.layer2, resnet.layer3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"res4": self.body(x)}


class C4Pooler(MultiScaleRoIAlign):
    """RoIAlign 14x14 on res4 at scale 1/16, sampling ratio 0, aligned (FasterRCNN wants this base class)."""

    def __init__(self):
        super().__init__(["res4"], 14, 0)

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: Any) -> torch.Tensor:
        return roi_align(x["res4"], boxes, (14, 14), spatial_scale=1 / 16, sampling_ratio=0, aligned=True)


class Res5Head(nn.Module):
    """res5 on the pooled boxes, MoCo's extra norm, then the average over the 7x7 map (2048 features)."""

    def __init__(self, layer4: nn.Module, extra_norm: bool):
        super().__init__()
        self.res5 = layer4
        self.norm = nn.BatchNorm2d(2048) if extra_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.res5(x)).mean(dim=(2, 3))


def build_r50c4(p: DetectProtocol, num_classes: int, backbone_state: Optional[dict[str, torch.Tensor]]) -> FasterRCNN:
    """The detector; ``backbone_state`` (torchvision ResNet-50 keys, no fc) initialises res2..res5."""
    resnet = torchvision.models.resnet50(weights=None)
    if backbone_state is not None:
        missing, unexpected = resnet.load_state_dict(backbone_state, strict=False)
        assert not unexpected and all(k.startswith("fc.") for k in missing), (missing, unexpected)
    mean = [m / 255 for m in p.pixel_mean]
    std = [s / 255 for s in p.pixel_std]
    return FasterRCNN(
        Res4(resnet), num_classes=None, min_size=tuple(p.train_sizes()), max_size=p.max_size_train,
        image_mean=mean, image_std=std,
        rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=p.rpn_pre_nms_topk_train, rpn_post_nms_top_n_train=p.rpn_post_nms_topk_train,
        rpn_pre_nms_top_n_test=p.rpn_pre_nms_topk_test, rpn_post_nms_top_n_test=p.rpn_post_nms_topk_test,
        rpn_batch_size_per_image=p.rpn_batch_size_per_image,
        box_roi_pool=C4Pooler(), box_head=Res5Head(resnet.layer4, p.extra_norm),
        box_predictor=FastRCNNPredictor(2048, num_classes + 1),
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=p.detections_per_image,
        box_batch_size_per_image=p.roi_batch_size_per_image, box_positive_fraction=0.25)


class DetectionTask(Task):
    """The engine's task: (images, targets) -> (sum of the RPN and box losses, each loss)."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.model = model

    def forward(self, images, targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = self.model(list(images), list(targets))
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}


def warmup_multistep(base_lr: float, steps: list[int], gamma: float, warmup_iters: int, warmup_factor: float):
    """Detectron2's WarmupMultiStepLR: linear warm-up from base*factor, then x gamma at each step."""
    def lr(it: int) -> float:
        warm = 1.0
        if it < warmup_iters:
            alpha = it / warmup_iters
            warm = warmup_factor * (1 - alpha) + alpha
        return base_lr * warm * gamma ** sum(it >= s for s in steps)
    return lr


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> list[dict[str, Any]]:
    norm_params = {id(q) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for q in m.parameters(recurse=False)}
    params = [q for q in model.parameters() if q.requires_grad]
    return [{"params": [q for q in params if id(q) not in norm_params], "weight_decay": weight_decay},
            {"params": [q for q in params if id(q) in norm_params], "weight_decay": weight_decay_norm}]


def train_loader(records: list[dict[str, Any]], p: DetectProtocol, batch: int, iterations: int,
                 generator: Optional[torch.Generator] = None) -> torch.utils.data.DataLoader:
    ds = DetectionTrainSet(records, flip=p.flip)
    if len(ds) == 0:
        raise UserError("the training set has no image with a usable box")
    sampler = torch.utils.data.RandomSampler(ds, num_samples=iterations * batch, generator=generator)
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, collate_fn=collate, drop_last=True,
                                       num_workers=p.num_workers, persistent_workers=False)


@torch.no_grad()
def precise_bn(model: nn.Module, loader, device: torch.device) -> None:
    """Detectron2's PreciseBN: BN running statistics recomputed as plain averages over the loader's batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for images, targets in preempt.each(loader, "PreciseBN"):
        model(list(to_device(images, device)), list(to_device(targets, device)))
    for m, mom in zip(bns, momenta):
        m.momentum = mom


@torch.no_grad()
def predict(model: FasterRCNN, records: list[dict[str, Any]], p: DetectProtocol, device: torch.device,
            console: Optional[Console] = None) -> list[dict[str, torch.Tensor]]:
    """Detections per record at the test size, in original image coordinates, labels 0..K-1."""
    model.eval()
    model.transform.min_size, model.transform.max_size = (p.min_size_test,), p.max_size_test
    out = []
    for rec in preempt.each(records, "detection on the test split"):
        image = read_image(rec["file_name"]).float().div(255).to(device)
        det = model([image])[0]
        out.append({"boxes": det["boxes"].cpu(), "scores": det["scores"].cpu(), "labels": det["labels"].cpu() - 1})
    model.transform.min_size, model.transform.max_size = tuple(p.train_sizes()), p.max_size_train
    return out


def trial_period(p: DetectProtocol) -> int:
    """Iterations per engine epoch of a torchvision trial (one metrics record): ``p.period``, or a divisor of it
    that divides the schedule."""
    return math.gcd(p.solver(1)["max_iter"], p.period)


def train_torchvision(p: DetectProtocol, train_records: list[dict[str, Any]], num_classes: int,
                      backbone_state: dict[str, torch.Tensor], run_dir: Path, seed: int, protocol_json: str,
                      quiet: bool, console: Console, resume: Optional[Path] = None,
                      tracker: Optional[Tracker] = None) -> tuple[FasterRCNN, dict[str, Any]]:
    """Train one trial on one device through the engine (from the train state ``resume``, if given; a state
    every ``period`` iterations and after the last one; ``tracker`` gets its steps and records); returns
    (model, solver actually used)."""
    device = resolve_device(p.device)
    solver = p.solver(1)
    torch.manual_seed(seed)
    model = build_r50c4(p, num_classes, backbone_state)
    period = trial_period(p)
    loader = train_loader(train_records, p, solver["ims_per_batch"], period)
    optimizer = torch.optim.SGD(param_groups(model, p.weight_decay, p.weight_decay_norm), lr=solver["base_lr"],
                                momentum=p.momentum)
    lr_at_step = warmup_multistep(solver["base_lr"], solver["steps"], p.gamma, solver["warmup_iters"], p.warmup_factor)
    schedule = Schedule(solver["max_iter"] // period, lambda e: lr_at_step(e * period), lr_at_step, seed=seed)
    engine = Engine(DetectionTask(model), optimizer, loader, schedule=schedule,
                    checkpoints=Checkpoints(run_dir, protocol_json, every=p.period // period, keep=1),
                    device=DeviceSpec(device),
                    observers=Observers(f"detect {p.dataset}", quiet=quiet, console=console, log_every=20,
                                        tracker=tracker))
    engine.run(resume)
    if p.precise_bn:
        gen = torch.Generator().manual_seed(seed + 1)
        bn_loader = train_loader(train_records, p, solver["ims_per_batch"], p.precise_bn_iters, gen)
        precise_bn(model, bn_loader, device)
    return model, solver
