"""Transfer to CIFAR-10/100, Stanford Cars, Oxford-IIIT Pets and Birdsnap (Kornblith et al. 2019; Table 3).

``finetune`` mode: for every (lr, wd) cell of the grid, fine-tune the whole backbone with a new fc
(:func:`~leoclr_cli.evaluate.finetune.train_classifier`: SGD-Nesterov, cosine lr, RandomResizedCrop
+ flip) on the train split minus a seeded validation share, and score the cell on that share;
then refit on all of train with the best cell and evaluate the test split once.

``linear`` mode: the same selection for the inverse L2 strength C of a multinomial logistic
regression fitted with L-BFGS on frozen features (resize + center crop, no augmentation), computed
once by :func:`~leoclr_cli.evaluate.features.extract`: the linear probe of
:mod:`~leoclr_cli.evaluate.linear` (``feature_norm: bn`` standardises the features with the fit set's statistics).

The metric is top-1 accuracy, except mean per-class accuracy for Pets.

Resume (``--resume auto``, :meth:`~leoclr_cli.core.rundir.RunDir.reopen`): the cells already in ``grid.json`` are
kept, an interrupted cell or refit continues from its engine checkpoint (every cell checkpoints its
last epoch, so a signal during its validation pass keeps its training; the checkpoint is removed once
the cell is in ``grid.json``). In linear mode the features are cached in
``checkpoints/features.safetensors`` and the sweep's progress (the cells so far and the probe that
warm-starts the next C) in ``checkpoints/lbfgs.safetensors``; both are removed when the run ends.

Trackers (``log.*``): when the run ends, one row per grid cell (``grid/...`` at the cell's index: lr, wd,
val; or c, val) and the result; each cell's training curve stays in its ``grid/CELL/metrics.jsonl``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console

from ..config import TransferProtocol, protocol_json
from ..core import checkpoint as ckpt
from ..core import tracking
from ..core.engine import resolve_device
from ..core.results import TransferResult
from ..core.rundir import RunDir, command, read_json, write_json
from ..data.sources import open_source
from ..errors import UserError
from .features import extract, loader_for
from .finetune import FinetuneClassifier, train_classifier
from .knn import topk_accuracy
from .linear import LinearClassifier, best_cell, fit_probe, predict_scores, save_classifier, sweep_lbfgs
from .subsets import take

SPLITS = {"cifar10": ("train", "test"), "cifar100": ("train", "test"), "cars": ("train", "test"),
          "pets": ("trainval", "test"), "birdsnap": ("train", "test")}
METRIC = {"pets": "mean_per_class"}  # every other dataset: top1
KIND_FEATURES = "features"


def mean_per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the share of that class predicted right, in
    percent (the mean of the diagonal of the row-normalised confusion matrix)."""
    pred, labels = pred.view(-1).cpu(), labels.view(-1).cpu()
    per_class = [(pred[labels == c] == c).float().mean().item() for c in labels.unique().tolist()]
    return 100.0 * sum(per_class) / len(per_class)


def score(metric: str, scores: torch.Tensor, labels: torch.Tensor) -> float:
    if metric == "mean_per_class":
        return mean_per_class_accuracy(scores.argmax(1), labels)
    return topk_accuracy(scores, labels)["top1"]


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(fit indices, val indices): a random ``val_fraction`` of ``range(n)``, seeded, both sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


# --------------------------------------------------------------------------- the run


def _open(p: TransferProtocol) -> tuple[Any, Any]:
    train_split, test_split = SPLITS[p.dataset]
    train = open_source(p.dataset, Path(p.root), train_split, verify_checksums=p.verify_checksums)
    test = open_source(p.dataset, Path(p.root), test_split, verify_checksums=p.verify_checksums)
    if len(train) < 2:
        raise UserError(f"{p.dataset} data at {p.root} has {len(train)} train images; at least 2 are needed "
                        "to hold out a validation split")
    return train, test


def _cell_name(lr: float, wd: float) -> str:
    return f"lr{lr:.3g}_wd{wd:.3g}"


@command
def run_transfer(p: TransferProtocol, backbone_path: Path, run_dir: Path, *, resume: Optional[str] = None,
                 force: bool = False, quiet: bool = False, console: Optional[Console] = None) -> dict[str, Any]:
    """Grid search on the validation split, refit, one test evaluation; writes grid.json and result.json.
    ``resume`` (``auto`` or ``run_dir``) continues an interrupted run in ``run_dir`` (see the module docstring)."""
    console = console or Console(stderr=True)
    backbone, meta = ckpt.load_backbone(backbone_path)
    train, test = _open(p)
    run_dir = Path(run_dir)
    tracking.check(p.log)
    resuming = RunDir(run_dir).reopen(p, resume=resume, force=force, inputs={"backbone": backbone_path})
    device = resolve_device(p.device)
    metric = METRIC.get(p.dataset, "top1")
    fit_idx, val_idx = split_train_val(len(train), p.val_fraction, p.split_seed)
    grid: dict[str, Any] = {"dataset": p.dataset, "mode": p.mode, "metric": metric, "num_fit": len(fit_idx),
                            "num_val": len(val_idx), "cells": []}
    if p.mode == "linear":
        chosen, final = _linear(p, backbone, train, test, fit_idx, val_idx, metric, device, grid, run_dir,
                                resuming, quiet, console)
    else:
        chosen, final = _finetune(p, backbone, train, test, fit_idx, val_idx, metric, device, grid, run_dir,
                                  resuming, quiet, console)
    result = TransferResult(
        dataset=p.dataset, mode=p.mode, metric=metric, value=final[metric], top1=final["top1"], val=chosen["val"],
        best_lr=chosen.get("lr"), best_wd=chosen["wd"], best_c=chosen.get("c"), epochs=chosen.get("epochs"),
        num_classes=train.num_classes, num_train=len(train), num_fit=len(fit_idx), num_val=len(val_idx),
        num_test=len(test), **TransferResult.provenance(backbone_path, meta))
    if p.dataset == "birdsnap":
        result.images_listed, result.images_present = train.listed + test.listed, train.present + test.present
    record = RunDir(run_dir).write_result(result)
    name = f"transfer {p.dataset} {p.mode}"
    with tracking.closing(tracking.open_tracker(p.log, run_dir, p.model_dump(mode="json"), name)) as tracker:
        if tracker is not None:  # the grid when it is complete, so a resumed run logs each cell once
            tracker.rows("grid", list(enumerate(grid["cells"])))
        tracking.finish(tracker, record)
    if p.mode == "linear":
        shutil.rmtree(RunDir(run_dir).checkpoints, ignore_errors=True)  # the caches only a resume reads
    return record


def _cells_so_far(run_dir: Path, resuming: bool) -> list[dict[str, Any]]:
    """The grid cells an interrupted run finished (its grid.json), none for a fresh run."""
    path = RunDir(run_dir).grid
    return read_json(path)["cells"] if resuming and path.is_file() else []


def _finetune(p, backbone, train, test, fit_idx, val_idx, metric, device, grid, run_dir, resuming, quiet, console):
    def fit(indices: list[int], lr: float, wd: float, where: Path):
        epochs = max(1, math.ceil(p.steps * p.batch_size / len(indices)))
        state = RunDir(where).resume_part(resuming)
        ckpt.seed_everything(p.seed)
        model = FinetuneClassifier(copy.deepcopy(backbone), train.num_classes)
        train_classifier(model, take(train, indices), size=p.transform.size, normalize=p.transform.norm,
                         epochs=epochs, batch_size=p.batch_size, lr=lr, momentum=p.momentum, nesterov=p.nesterov,
                         weight_decay=wd / lr if p.wd_over_lr else wd, schedule="cosine", device=device,
                         run_dir=where, protocol=protocol_json(p), seed=p.seed, checkpoint_every=10**9,  # the end
                         num_workers=p.num_workers, resume=state, quiet=quiet, console=console, desc=where.name)
        return model, epochs

    def evaluate(model, source) -> dict[str, float]:
        scores, labels = predict_scores(model, loader_for(source, p.transform, p.batch_size, p.num_workers, device),
                                        device)
        return {"top1": score("top1", scores, labels), metric: score(metric, scores, labels)}

    val = take(train, val_idx)
    finished = {(c["lr"], c["wd"]): c for c in _cells_so_far(run_dir, resuming)}
    for lr in p.lrs:
        for wd in p.wds:
            where = run_dir / "grid" / _cell_name(lr, wd)
            cell = finished.get((lr, wd))
            if cell is None:
                model, epochs = fit(fit_idx, lr, wd, where)
                cell = {"lr": lr, "wd": wd, "weight_decay": wd / lr if p.wd_over_lr else wd, "epochs": epochs,
                        "val": evaluate(model, val)[metric]}
            grid["cells"].append(cell)
            write_json(RunDir(run_dir).grid, grid)  # progress is visible while the grid runs
            shutil.rmtree(RunDir(where).checkpoints, ignore_errors=True)  # the cell is in grid.json for good
    grid["best"] = best_cell(grid["cells"])
    write_json(RunDir(run_dir).grid, grid)
    chosen = grid["cells"][grid["best"]]
    model, epochs = fit(list(range(len(train))), chosen["lr"], chosen["wd"], run_dir / "refit")
    return {**chosen, "epochs": epochs}, evaluate(model, test)


def _features(p, backbone, train, test, device, run_dir: Path, resuming: bool, quiet: bool,
              console: Console) -> list[torch.Tensor]:
    """[train features, labels, test features, labels] of the frozen backbone, extracted once per run:
    kept in checkpoints/features.safetensors for a resume."""
    cache, names = RunDir(run_dir).checkpoints / "features.safetensors", ("train", "train_labels", "test", "test_labels")
    if resuming and cache.is_file():
        tensors, _ = ckpt.load_tensors(cache, KIND_FEATURES)
        return [tensors[name] for name in names]
    backbone.to(device)
    shown = {"console": console, "quiet": quiet}
    found = [*extract(backbone, loader_for(train, p.transform, p.batch_size, p.num_workers, device), device,
                      desc="train features", **shown),
             *extract(backbone, loader_for(test, p.transform, p.batch_size, p.num_workers, device), device,
                      desc="test features", **shown)]
    ckpt.save_tensors(cache, dict(zip(names, found)), {"kind": KIND_FEATURES, "protocol": protocol_json(p)})
    return found


def _linear(p, backbone, train, test, fit_idx, val_idx, metric, device, grid, run_dir, resuming, quiet, console):
    feats, labels, test_f, test_y = (t.to(device) for t in _features(p, backbone, train, test, device, run_dir,
                                                                     resuming, quiet, console))
    grid["feature_norm"] = p.feature_norm
    sweep = RunDir(run_dir).checkpoints / "lbfgs.safetensors"
    done, warm = [], None
    if resuming and sweep.is_file():  # the C values fitted before the interruption, and the last probe
        tensors, meta = ckpt.load_tensors(sweep, ckpt.KIND_LINEAR)
        done = json.loads(meta["cells"])
        warm = LinearClassifier(None, feats.shape[1], train.num_classes, p.feature_norm).to(device)
        warm.load_head(tensors, sweep)

    def keep(cells: list[dict[str, Any]], probe) -> None:
        save_classifier(sweep, probe, {"cells": json.dumps(cells), "protocol": protocol_json(p)})
        write_json(RunDir(run_dir).grid, {**grid, "cells": cells})  # progress is visible while the sweep runs

    grid["cells"] = sweep_lbfgs(feats[fit_idx], labels[fit_idx], {"val": (feats[val_idx], labels[val_idx])},
                                train.num_classes, p.cs, p.lbfgs_max_iter, p.feature_norm,
                                lambda s, y: score(metric, s, y), done=done, warm=warm, on_cell=keep)
    grid["best"] = best_cell(grid["cells"])
    write_json(RunDir(run_dir).grid, grid)
    chosen = grid["cells"][grid["best"]]
    model = fit_probe(feats, labels, train.num_classes, chosen["c"], p.lbfgs_max_iter, p.feature_norm)
    save_classifier(RunDir(run_dir).classifier, model, {"num_classes": str(train.num_classes),
                                                        "protocol": protocol_json(p)})
    with torch.no_grad():
        scores = model.logits(test_f).cpu()
    return chosen, {"top1": score("top1", scores, test_y.cpu()), metric: score(metric, scores, test_y.cpu())}
