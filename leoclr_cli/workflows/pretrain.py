"""``leoclr pretrain``: protocol -> data -> views -> method -> engine -> backbone.safetensors."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from rich.console import Console

from ..config import OptimConfig, PretrainProtocol, default_local_size, norm_stats, protocol_json
from ..core import checkpoint as ckpt
from ..core import distributed, preempt, tracking
from ..core.engine import (Checkpoints, DeviceSpec, Engine, Observers, Schedule, amp_dtype, cosine_lr, require_a_batch,
                           resolve_device, warmup_lr)
from ..core.nets import has_batchnorm
from ..core.timm_nets import fit_kwargs, is_timm, patch_size
from ..core.results import PretrainResult
from ..core.rundir import RunDir, command
from ..data import open_pretrain_data
from ..data.ccrop import CropBoxes, box_stats, localise
from ..data.gpu_views import TensorViews
from ..data.pipeline import augmented
from ..data.views import AugmentedDataset, eval_transform, measure_normalization
from ..errors import UserError
from ..evaluate.monitor import Monitor, online_probe
from ..methods import build_method
from ..methods.base import ContrastiveMethod
from ..report.pictures import views_grid




def build_loader(p: PretrainProtocol, source, kinds, device: torch.device,
                 batch_size: Optional[int] = None, boxes: Optional[CropBoxes] = None) -> torch.utils.data.DataLoader:
    """Pretraining batches of ``batch_size`` (default optim.batch_size); under DDP this rank's share."""
    batch = batch_size or p.optim.batch_size
    views = augmented(p, source, kinds, boxes, batch)
    if isinstance(views, torch.utils.data.IterableDataset):  # shards: the dataset splits ranks and workers
        sampler, shuffle = None, None
    else:
        sampler = distributed.sampler(views, shuffle=p.data.shuffle, seed=p.seed * 100_003)
        shuffle = p.data.shuffle if sampler is None else None
    return torch.utils.data.DataLoader(
        views, batch_size=batch, shuffle=shuffle, sampler=sampler, drop_last=True, num_workers=p.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=p.data.num_workers > 0)


def compile_encoders(method: torch.nn.Module, mode: str) -> list[str]:
    """Compile the method's encoders in place with inductor (``nn.Module.compile``: parameter names,
    checkpoints and the EMA update are unchanged; the loss, queue and collectives stay eager).
    Returns their names."""
    names = [n for n in ("encoder_q", "encoder_k") if isinstance(getattr(method, n, None), torch.nn.Module)]
    for name in names:
        getattr(method, name).compile(mode=None if mode == "default" else mode)
    return names


def resolve_normalize(p: PretrainProtocol, source, run_dir: Path, resume: Optional[str], console: Console,
                      quiet: bool) -> PretrainProtocol:
    """``augment.normalize: auto`` without mean/std: ``p`` with the mean and std measured on a seeded
    sample of the train split (rank 0 measures, every rank gets them), or, on a resume, those the run
    directory's protocol.yaml recorded. Anything else: ``p`` unchanged."""
    aug = p.augment
    if aug.normalize != "auto" or aug.mean is not None:
        return p
    run = RunDir(run_dir)
    stats = None
    if resume is not None and run.protocol_file.is_file():
        before = run.read_protocol("pretrain").augment
        stats = (before.mean, before.std) if before.normalize == "auto" and before.mean is not None else None
    if stats is None:
        outcome: tuple[str, Any] = ("ok", None)
        if distributed.is_main():
            try:
                outcome = ("ok", measure_normalization(source, aug.size, aug.normalize_sample, p.seed,
                                                       p.data.num_workers, p.data.on_bad_image))
            except UserError as e:
                outcome = ("error", str(e))
        kind, stats = distributed.broadcast_object(outcome)
        if kind == "error":
            raise UserError(stats)
        if distributed.is_main() and not quiet:
            where = "the folder" if p.data.source == "folder" else f"split '{p.data.split}'"
            console.print(f"augment.normalize auto: mean {list(stats[0])}, std {list(stats[1])} from "
                          f"{min(aug.normalize_sample, len(source))} images of {where}", highlight=False,
                          soft_wrap=True)
    return p.model_copy(update={"augment": aug.model_copy(update={"mean": stats[0], "std": stats[1]})})


def resolve_model(p: PretrainProtocol) -> PretrainProtocol:
    """``p`` with what the views decide written into it, so protocol.yaml records it and a resume
    recomputes the same: a timm arch's ``model.timm_kwargs`` completed for ``augment.size``
    (:func:`~..core.timm_nets.fit_kwargs`), and with local crops ``augment.local_size`` (default 3/7 of the
    size, a multiple of a ViT's patch, which it must be)."""
    model, aug = p.model, p.augment
    if is_timm(model.arch):
        model = model.model_copy(update={"timm_kwargs": fit_kwargs(model.arch, aug.size, model.timm_kwargs)})
    if aug.local_crops:
        patch = patch_size(model.timm_kwargs) if is_timm(model.arch) else None
        side = aug.local_size or default_local_size(aug.size, patch or 4)
        if patch and side % patch:
            raise UserError(f"augment.local_size ({side}) must be a multiple of the patch size ({patch}) of "
                            f"{model.arch}")
        aug = aug.model_copy(update={"local_size": side})
    return p.model_copy(update={"model": model, "augment": aug})


def build_optimizer(method: ContrastiveMethod, o: OptimConfig, lr: float,
                    probe_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """``optim.name`` over the method's parameter groups (:meth:`~..methods.base.ContrastiveMethod.optimizer_groups`:
    the trained parameters, then an online probe's): SGD with momentum (MoCo) or AdamW; without
    ``decay_norm_bias`` the 1-D tensors of the first group (biases, norm weights) form a group of their own
    without weight decay (DINO's rule). With the defaults of SGD the groups are the method's, exactly MoCo's
    optimizer."""
    groups = method.optimizer_groups(probe_lr_scale)
    if not o.decays_norm_bias:
        trained = groups[0]["params"]
        groups = [{"params": [q for q in trained if q.ndim > 1]},
                  {"params": [q for q in trained if q.ndim <= 1], "weight_decay": 0.0}, *groups[1:]]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_schedule(o: OptimConfig, lr: float, steps: int, seed: int) -> Schedule:
    """The lr per epoch (cosine or constant; MoCo), or with ``warmup_epochs`` per step: the warm-up, then the
    schedule over the remaining steps of the ``steps`` per epoch."""
    lr_at = cosine_lr(lr, o.epochs) if o.schedule == "cosine" else (lambda e: lr)
    if not o.warmup_epochs:
        return Schedule(o.epochs, lr_at, seed=seed)
    warm = max(1, round(o.warmup_epochs * steps))
    return Schedule(o.epochs, lr_at, lr_at_step=warmup_lr(lr, warm, o.epochs * steps, o.schedule == "cosine"),
                    seed=seed)


def batchnorm_note(p: PretrainProtocol, method: torch.nn.Module, world: int) -> Optional[str]:
    """One line when the backbone has no BatchNorm but the protocol asks for what acts on it."""
    asked = [what for what, on in (("model.bn_splits", p.model.bn_splits > 1), ("shuffle-BN", p.model.shuffle_bn),
                                   ("distributed.bn sync", world > 1 and p.distributed.bn == "sync")) if on]
    if not asked or has_batchnorm(method.backbone):
        return None
    listed = " and ".join([", ".join(asked[:-1]), asked[-1]] if len(asked) > 1 else asked)
    return f"note: {p.model.arch} has no BatchNorm, so {listed} {'does' if len(asked) == 1 else 'do'} not apply (skipped)"


def scale_out(p: PretrainProtocol, world: int) -> tuple[int, float, str]:
    """(per-rank batch, lr, the sentence that states them) for ``world`` ranks."""
    if p.distributed.batch_size == "global":
        if p.optim.batch_size % world:
            raise UserError(f"optim.batch_size ({p.optim.batch_size}) is the global batch and must be a multiple of "
                            f"the {world} ranks (or set distributed.batch_size=per_rank)")
        local, lr = p.optim.batch_size // world, p.optim.lr
        rule = f"lr {lr:g} as in the protocol, for the global batch"
    else:
        local, lr = p.optim.batch_size, p.optim.lr * world
        rule = f"lr {lr:g} = {p.optim.lr:g} x {world} ranks (linear scaling)"
    splits = p.model.bn_splits
    if splits > 1 and (local % splits or local < 2 * splits):
        raise UserError(f"the per-rank batch ({local}) must be a multiple of model.bn_splits ({splits}) and at least "
                        "twice it; lower model.bn_splits (1 is usual with several GPUs)")
    text = f"distributed: {world} ranks x {local} = global batch {local * world}; {rule}"
    return local, lr, text


def prepare_on_main(run_dir: Path, p: PretrainProtocol, resume: Optional[str], force: bool) -> Optional[Path]:
    """Rank 0 prepares the run directory; every rank gets the checkpoint to resume from (or its error)."""
    outcome: tuple[str, Any] = ("ok", None)
    if distributed.is_main():
        try:
            outcome = ("ok", RunDir(run_dir).prepare(p, resume=resume, force=force))
        except UserError as e:
            outcome = ("error", str(e))
    outcome = distributed.broadcast_object(outcome)
    if outcome[0] == "error":
        raise UserError(outcome[1])
    return outcome[1]


def box_updater(p: PretrainProtocol, source, boxes: CropBoxes, method, device: torch.device, run_dir: Path):
    """The epoch-end hook of ContrastiveCrop: record whether box crops were used, and recompute the boxes
    from the query backbone on the un-augmented images when due (written to RUN/boxes.safetensors).
    Under DDP each rank localises its share of the images (every world-th one) and the boxes are
    all-gathered, so every rank holds the same boxes for the whole dataset."""
    plain = AugmentedDataset(source, eval_transform(p.augment.size, p.augment.size, "none", p.augment.norm))

    def hook(epoch: int) -> dict[str, Any]:
        record: dict[str, Any] = {"ccrop_active": boxes.active(epoch)}
        if boxes.due(epoch + 1, p.optim.epochs):
            found = localise_shared(method.backbone, plain, p.optim.batch_size, p.data.num_workers, device,
                                    p.augment.ccrop.threshold)
            boxes.update(found, epoch + 1)
            if distributed.is_main():
                boxes.save(RunDir(run_dir).boxes, protocol_json(p))
            record.update({"ccrop_updated": True, **box_stats(boxes.boxes)})
        return record

    return hook


def localise_shared(backbone: torch.nn.Module, plain: torch.utils.data.Dataset, batch_size: int, workers: int,
                    device: torch.device, threshold: float) -> torch.Tensor:
    """:func:`localise` over ``plain`` split across the ranks: rank r takes images r, r + world, ...
    (shares padded to one length with the last image), then the boxes are all-gathered back into
    dataset order. One process: every image."""
    n, world, rank = len(plain), distributed.world_size(), distributed.rank()
    per = math.ceil(n / world)
    share = torch.utils.data.Subset(plain, [min(rank + j * world, n - 1) for j in range(per)])
    loader = torch.utils.data.DataLoader(share, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda", worker_init_fn=preempt.worker_init())
    gathered = distributed.all_gather(localise(backbone, loader, device, threshold).to(device)).cpu()
    pos = torch.arange(world * per)
    index = pos // per + (pos % per) * world  # rank-major: rank pos // per, its (pos % per)-th image
    keep = index < n
    out = torch.empty(n, gathered.shape[1], dtype=gathered.dtype)
    out[index[keep]] = gathered[keep]
    return out


def norm_meta(p: PretrainProtocol) -> dict[str, str]:
    """The backbone header's normalisation: the name and the mean and std the views used."""
    mean, std = norm_stats(p.augment.norm)
    return {"normalize": p.augment.normalize, "normalize_mean": json.dumps(list(mean)),
            "normalize_std": json.dumps(list(std))}


@command
def run_pretrain(p: PretrainProtocol, run_dir: Path, *, resume: Optional[str] = None, force: bool = False,
                 quiet: bool = False, console: Optional[Console] = None, allow_pipe: bool = False) -> dict[str, Any]:
    """Pretrain as ``p`` says into ``run_dir`` (``allow_pipe``: the command line allows a ``pipe:`` shard)."""
    console = console or Console(stderr=True)
    source = open_pretrain_data(p.data, allow_pipe)
    _, world, device = distributed.init_from_env(resolve_device(p.device))
    try:
        return _pretrain(p, run_dir, source, device, world, resume=resume, force=force, quiet=quiet, console=console)
    finally:
        distributed.shutdown()


def open_tracker(p: PretrainProtocol, run_dir: Path, source, resume_from: Optional[Path],
                 steps: int) -> Optional[tracking.Tracker]:
    """The trackers of ``p.log``; a new run also logs the grid of its first images' views."""
    start = tracking.resumed_step(resume_from, steps)
    tracker = tracking.open_tracker(p.log, Path(run_dir), p.model_dump(mode="json"), f"{p.name} {p.method.name}",
                                    start)
    if tracker is not None and not start:
        tracker.image("views", np.asarray(views_grid(p, source, 8)))
    return tracker


def _pretrain(p: PretrainProtocol, run_dir: Path, source, device: torch.device, world: int, *,
              resume: Optional[str], force: bool, quiet: bool, console: Console) -> dict[str, Any]:
    main = distributed.is_main()
    local_batch, lr, scale_text = scale_out(p, world)
    p = resolve_model(resolve_normalize(p, source, Path(run_dir), resume, console, quiet))
    tracking.check(p.log)
    if not main:
        quiet, console = True, Console(quiet=True)
    if world > 1:
        console.print(scale_text, highlight=False)
        if p.model.bn_splits > 1:
            console.print(f"note: model.bn_splits={p.model.bn_splits} splits each rank's batch again for BN; "
                          "set model.bn_splits=1 for one BN per process", highlight=False)
    ckpt.seed_everything(p.seed, p.deterministic)
    method = build_method(p.model, p.method, p.augment.local_crops)
    if p.augment.crops == "contrastive" and not hasattr(method.backbone, "layer4"):
        raise UserError(f"augment.crops 'contrastive' localises its boxes on a ResNet's layer4, which "
                        f"{p.model.arch} does not have (use augment.crops random or center-box)")
    note = batchnorm_note(p, method, world)
    if note and not quiet:
        console.print(note, highlight=False, soft_wrap=True)
    monitor = Monitor(p, source, device)
    if monitor.note:
        console.print(monitor.note, highlight=False, markup=False, soft_wrap=True)
    if monitor.linear:
        method.attach_probe(online_probe(method.backbone.feature_dim, monitor.probe_classes, p.seed))
    if distributed.active() and p.distributed.bn == "sync":  # also a 1-rank process group
        method.use_sync_batchnorm(device)
    if p.compile != "off":
        names = compile_encoders(method, p.compile)
        console.print(f"compile: {', '.join(names)} with torch.compile (mode {p.compile}); the first steps "
                      "compile them", highlight=False)
    boxes = CropBoxes(len(source), p.augment) if p.augment.crops != "random" else None
    loader = build_loader(p, source, method.views, device, local_batch, boxes)
    require_a_batch(loader)  # everything that can be checked is, before the run directory is made
    resume_from = prepare_on_main(run_dir, p, resume, force)
    if resume_from is None:  # once, for a run that starts: not before a refusal, not again on its resume
        for warning in method.queue_warnings(len(source), local_batch * world):
            console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    batch_transform = None
    if p.augment.backend == "tensor":
        batch_transform = TensorViews(p.augment, method.views).to(device)
    optimizer = build_optimizer(method, p.optim, lr, p.monitor.linear_lr / lr)
    schedule = lr_schedule(p.optim, lr, len(loader), p.seed)

    hooks: list[Any] = []
    if boxes is not None:
        hooks.append(box_updater(p, source, boxes, method, device, Path(run_dir)))
    if monitor.knn or monitor.linear:
        hooks.append(lambda epoch: monitor.epoch_end(method, epoch) if main else {})

    def epoch_end(epoch: int) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for hook in hooks:
            record.update(hook(epoch))
        return record

    tracker = open_tracker(p, run_dir, source, resume_from, len(loader)) if main else None
    started = time.perf_counter()
    engine = Engine(method, optimizer, loader, schedule=schedule,
                    checkpoints=Checkpoints(run_dir, protocol_json(p), every=p.checkpoint_every,
                                            every_steps=p.checkpoint_every_steps, keep=p.keep_checkpoints),
                    device=DeviceSpec(device, amp_dtype(p.amp, device),
                                      channels_last=p.channels_last and p.model.bn_splits == 1),
                    observers=Observers(f"pretrain {p.method.name}", quiet=quiet, console=console, tracker=tracker,
                                        epoch_end=epoch_end),
                    batch_transform=batch_transform)
    with tracking.closing(tracker):
        history = engine.run(resume_from)
        distributed.average_buffers(method)
        every_rank = {"method": p.method.name, "arch": p.model.arch, "epochs": p.optim.epochs,
                      "rank": distributed.rank(), "world_size": world, "global_batch": local_batch * world, "lr": lr}
        if not main:
            return PretrainResult(**every_rank).record()
        run = RunDir(run_dir)
        if boxes is not None:
            boxes.save(run.boxes, protocol_json(p))
        ckpt.save_backbone(run.backbone, method.backbone, arch=p.model.arch, cifar_stem=p.model.cifar_stem,
                           method=p.method.name, epoch=p.optim.epochs, protocol_json=protocol_json(p),
                           extra_meta=norm_meta(p), timm_kwargs=p.model.timm_kwargs)
        last = history[-1] if history else {}
        measured: dict[str, Any] = {}
        if monitor.knn or monitor.linear:
            measured["monitor_classes"] = monitor.num_classes
        if monitor.linear:
            measured["linear_top1"] = next((m["linear_top1"] for m in reversed(history) if "linear_top1" in m), None)
        if monitor.knn:
            measured["knn_top1_random_init"] = monitor.random_init_knn()
        record = run.write_result(PretrainResult(
            **every_rank, final_loss=last.get("loss"),
            knn_top1=next((m["knn_top1"] for m in reversed(history) if "knn_top1" in m), None), **measured,
            wall_s_this_invocation=time.perf_counter() - started, device=str(device), backbone=str(run.backbone)))
        tracking.finish(tracker, record, [run.backbone])
    return record
