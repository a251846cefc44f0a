"""``leoclr pretrain``: protocol -> data -> views -> method -> engine -> backbone.safetensors."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from rich.console import Console

from . import checkpoint as ckpt
from .data import default_eval_splits, open_data
from .data.ccrop import CropBoxes, box_stats, localise
from .data.views import AugmentedDataset, ViewMaker, eval_transform
from .engine import Engine, amp_dtype, cosine_lr, resolve_device
from .evaluate.features import extract, labelled_split, loader_for, subset
from .evaluate.knn import knn_accuracy
from .methods import build_method
from .rundir import prepare, write_json
from .schema import EvalDataConfig, EvalTransformConfig, PretrainProtocol, protocol_json


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def monitor_data(p: PretrainProtocol) -> EvalDataConfig:
    """The labelled splits the kNN monitor uses: the pretraining source's train and test."""
    train, test = default_eval_splits(p.data.source)
    return EvalDataConfig(source=p.data.source, root=p.data.root, train_split=train, test_split=test,
                          verify_checksums=p.data.verify_checksums, num_workers=p.data.num_workers,
                          builtin_train=p.data.builtin_train, builtin_test=p.data.builtin_test)


def monitor_transform(p: PretrainProtocol) -> EvalTransformConfig:
    small = p.augment.size <= 96
    return EvalTransformConfig(size=p.augment.size, resize=p.augment.size if small else round(p.augment.size * 8 / 7),
                               test="none" if small else "resize-center-crop", normalize=p.augment.normalize)


def build_loader(p: PretrainProtocol, source, kinds, device: torch.device,
                 boxes: Optional[CropBoxes] = None) -> torch.utils.data.DataLoader:
    views = AugmentedDataset(source, ViewMaker(p.augment, kinds, boxes), seed=p.seed, on_bad_image=p.data.on_bad_image)
    return torch.utils.data.DataLoader(
        views, batch_size=p.optim.batch_size, shuffle=True, drop_last=True, num_workers=p.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=p.data.num_workers > 0)


def box_updater(p: PretrainProtocol, source, boxes: CropBoxes, method, device: torch.device, run_dir: Path):
    """The epoch-end hook of ContrastiveCrop: record whether box crops were used, and recompute the boxes
    from the query backbone on the un-augmented images when due (written to RUN/boxes.safetensors)."""
    plain = AugmentedDataset(source, eval_transform(p.augment.size, p.augment.size, "none", p.augment.normalize))
    loader = torch.utils.data.DataLoader(plain, batch_size=p.optim.batch_size, shuffle=False,
                                         num_workers=p.data.num_workers, pin_memory=device.type == "cuda")

    def hook(epoch: int) -> dict[str, Any]:
        record: dict[str, Any] = {"ccrop_active": boxes.active(epoch)}
        if boxes.due(epoch + 1, p.optim.epochs):
            boxes.update(localise(method.backbone, loader, device, p.augment.ccrop.threshold), epoch + 1)
            boxes.save(run_dir / "boxes.safetensors", protocol_json(p))
            record.update({"ccrop_updated": True, **box_stats(boxes.boxes)})
        return record

    return hook


def run_pretrain(p: PretrainProtocol, run_dir: Path, *, resume: Optional[str] = None, force: bool = False,
                 quiet: bool = False, console: Optional[Console] = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    source = open_data(p.data.source, p.data.root, p.data.split, verify_checksums=p.data.verify_checksums,
                       builtin_n=p.data.builtin_train)
    resume_from = prepare(run_dir, p, resume=resume, force=force)
    seed_everything(p.seed, p.deterministic)
    device = resolve_device(p.device)
    method = build_method(p.model, p.method)
    boxes = CropBoxes(len(source), p.augment) if p.augment.crops != "random" else None
    loader = build_loader(p, source, method.views, device, boxes)
    optimizer = torch.optim.SGD([q for q in method.parameters() if q.requires_grad], lr=p.optim.lr,
                                momentum=p.optim.momentum, weight_decay=p.optim.weight_decay)
    lr_at = cosine_lr(p.optim.lr, p.optim.epochs) if p.optim.schedule == "cosine" else (lambda e: p.optim.lr)

    hooks: list[Any] = []
    if boxes is not None:
        hooks.append(box_updater(p, source, boxes, method, device, Path(run_dir)))
    if p.monitor.knn_every:
        data, tf = monitor_data(p), monitor_transform(p)
        bank_src = subset(labelled_split(data, "train"), p.monitor.max_bank)
        test_src = subset(labelled_split(data, "test"), p.monitor.max_test)
        bank_loader = loader_for(bank_src, tf, p.optim.batch_size, p.data.num_workers, device)
        test_loader = loader_for(test_src, tf, p.optim.batch_size, p.data.num_workers, device)

        def knn_monitor(epoch: int) -> dict[str, Any]:
            if (epoch + 1) % p.monitor.knn_every and epoch + 1 != p.optim.epochs:
                return {}
            bank, bank_y = extract(method.backbone, bank_loader, device)
            test, test_y = extract(method.backbone, test_loader, device)
            acc = knn_accuracy(bank, bank_y, test, test_y, bank_src.num_classes, p.monitor.k, p.monitor.t)
            return {"knn_top1": acc["top1"]}

        hooks.append(knn_monitor)

    def epoch_end(epoch: int) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for hook in hooks:
            record.update(hook(epoch))
        return record

    started = time.perf_counter()
    engine = Engine(task=method, optimizer=optimizer, loader=loader, epochs=p.optim.epochs, lr_at=lr_at, device=device,
                    run_dir=run_dir, protocol_json=protocol_json(p), checkpoint_every=p.checkpoint_every,
                    keep_checkpoints=p.keep_checkpoints, quiet=quiet, console=console, epoch_end=epoch_end,
                    desc=f"pretrain {p.method.name}", seed=p.seed, amp=amp_dtype(p.amp, device),
                    channels_last=p.channels_last and p.model.bn_splits == 1,
                    checkpoint_every_steps=p.checkpoint_every_steps)
    history = engine.run(resume_from)
    if boxes is not None:
        boxes.save(Path(run_dir) / "boxes.safetensors", protocol_json(p))
    ckpt.save_backbone(Path(run_dir) / "backbone.safetensors", method.backbone, arch=p.model.arch,
                       cifar_stem=p.model.cifar_stem, method=p.method.name, epoch=p.optim.epochs,
                       protocol_json=protocol_json(p))
    last = history[-1] if history else {}
    result = {"kind": "pretrain", "method": p.method.name, "arch": p.model.arch, "epochs": p.optim.epochs,
              "final_loss": last.get("loss"), "knn_top1": next((m["knn_top1"] for m in reversed(history)
                                                                if "knn_top1" in m), None),
              "wall_s_this_invocation": time.perf_counter() - started, "device": str(device),
              "backbone": str(Path(run_dir) / "backbone.safetensors")}
    write_json(Path(run_dir) / "result.json", result)
    return result
