"""The linear probe: the one classifier on frozen features, for linear-eval, the quickstart, crop-test,
ablate and transfer's linear mode.

The classifier is a new fc ~ N(0, 0.01), optionally after a BatchNorm1d without affine on the
features (``feature_norm: bn``, MAE's linear probe; its statistics are saved with the fc and frozen at
evaluation). ``probe: sgd`` trains it with MoCo's main_lincls schedule through the engine: with
``train_augment: random-resized-crop`` (the paper's protocol) the images go through the frozen
backbone every epoch, with ``none`` the features are computed once and the fc trains on the cache.
``probe: lbfgs`` fits a multinomial logistic regression with L-BFGS for every inverse L2 strength C
of a grid (Kornblith et al.), on cached features.

``selection: val`` holds out a seeded, class-balanced share of train; it alone chooses the epoch
(sgd) or C (lbfgs, then refitted on all of train), and the chosen classifier is scored once on
test. ``selection: test`` chooses on test (MoCo's "best epoch" convention). Either way the backbone is
checked bit-exactly against the checkpoint afterwards, BN buffers included: a frozen-feature result is
only valid if the features did not move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from ..config import LinearEvalProtocol, protocol_json
from ..core import checkpoint as ckpt
from ..core import preempt, tracking
from ..core.engine import Checkpoints, DeviceSpec, Engine, Observers, Schedule, Task, resolve_device, step_lr
from ..core.results import LinearResult
from ..core.rundir import RunDir, command, write_json
from ..data.views import AugmentedDataset, linear_train_transform
from ..errors import UserError
from .features import extract, labelled_split, loader_for
from .knn import topk_accuracy
from .subsets import balanced_split, take


class LinearClassifier(Task):
    """[BatchNorm1d without affine (``feature_norm`` bn)] then fc ~ N(0, 0.01), bias 0, on a frozen backbone
    (``None``: the inputs are cached features). ``selected`` holds the head chosen so far (epoch, score,
    state); it travels in the engine's checkpoints through :meth:`extra_state`."""

    def __init__(self, backbone: Optional[nn.Module], feature_dim: int, num_classes: int, feature_norm: str = "none"):
        super().__init__()
        self.backbone = backbone
        if backbone is not None:
            for p in backbone.parameters():
                p.requires_grad_(False)
        self.feature_norm = feature_norm
        self.norm = nn.BatchNorm1d(feature_dim, affine=False) if feature_norm == "bn" else nn.Identity()
        self.fc = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        self.selected: dict[str, Any] = {}

    def train(self, mode: bool = True) -> "LinearClassifier":
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # BN statistics must not move
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            with torch.no_grad():
                x = self.backbone(x)
        return self.fc(self.norm(x))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.logits(x)
        acc = (out.argmax(1) == labels).float().mean() * 100
        return F.cross_entropy(out, labels), {"acc": acc}

    # the head: everything but the backbone (fc, and the feature BN's statistics)

    def head_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_head(self, tensors: dict[str, torch.Tensor], where: Any) -> None:
        """Load a head saved by :meth:`head_state`; one sentence if it does not fit this classifier."""
        mine = self.head_state()
        for key, value in mine.items():
            got = tensors.get(key)
            if got is None or got.shape != value.shape:
                raise UserError(f"{where} is not a linear classifier for this backbone and feature_norm "
                                f"'{self.feature_norm}' ({key}: expected shape {tuple(value.shape)}, found "
                                f"{'none' if got is None else tuple(got.shape)})")
        extra = sorted(set(tensors) - set(mine))
        if extra:
            raise UserError(f"{where} is not a linear classifier for feature_norm '{self.feature_norm}' "
                            f"(unexpected tensor '{extra[0]}')")
        self.load_state_dict({k: tensors[k] for k in mine}, strict=False)

    # selection, kept in the engine's checkpoints (resume restores the head chosen so far)

    def select(self, epoch: int, score: float) -> None:
        self.selected = {"epoch": epoch, "score": score, "state": self.head_state()}

    def extra_state(self) -> dict[str, Any]:
        if not self.selected:
            return {}
        return {"selected_epoch": self.selected["epoch"], "selected_score": self.selected["score"],
                **{f"selected.{k}": v for k, v in self.selected["state"].items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "selected_epoch" in state:
            self.selected = {"epoch": state["selected_epoch"], "score": state["selected_score"],
                             "state": {k[len("selected."):]: v for k, v in state.items() if k.startswith("selected.")}}


def save_classifier(path: Path, model: LinearClassifier, metadata: dict[str, str]) -> None:
    ckpt.save_tensors(path, model.head_state(), {"kind": ckpt.KIND_LINEAR, "feature_norm": model.feature_norm,
                                                 **metadata})


def load_classifier(path: Path, backbone: nn.Module, arch: str) -> LinearClassifier:
    """The classifier of ``linear.safetensors`` on ``backbone`` (feature_norm from its header)."""
    tensors, meta = ckpt.load_tensors(path, ckpt.KIND_LINEAR)
    weight = tensors.get("fc.weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != backbone.feature_dim:
        raise UserError(f"{path} is not a linear classifier for this {arch} backbone ({backbone.feature_dim} "
                        "features)")
    model = LinearClassifier(backbone, backbone.feature_dim, weight.shape[0], meta.get("feature_norm", "none"))
    model.load_head(tensors, path)
    return model


@torch.no_grad()
def predict_scores(model: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(class scores (N, C) on CPU, labels (N,)) of any model with a ``logits(x)`` method, in eval mode."""
    model.eval()
    scores, labels = [], []
    for x, y in preempt.each(loader, "evaluation"):
        scores.append(model.logits(x.to(device, non_blocking=True)).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(scores), torch.cat(labels)


def evaluate_logits(model: nn.Module, loader, device: torch.device) -> dict[str, float]:
    return topk_accuracy(*predict_scores(model, loader, device))


def check_unchanged(backbone: nn.Module, reference: dict[str, torch.Tensor], path: Path) -> None:
    """MoCo's sanity check: every backbone tensor, BN buffers included, equals the checkpoint's."""
    for key, value in backbone.state_dict().items():
        if not torch.equal(value.cpu(), reference[key]):
            raise RuntimeError(f"{key} of {path} changed during linear evaluation")


# --------------------------------------------------------------------------- L-BFGS (Kornblith et al.)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, max_iter: int,
                 init: Optional[nn.Linear] = None) -> nn.Linear:
    """Multinomial logistic regression minimising sklearn's objective C * sum(CE) + |W|^2 / 2
    (bias not penalised), divided by C * n for conditioning, with torch.optim.LBFGS; from zeros, or
    warm-started from ``init`` (the objective is convex: the same minimum, fewer iterations)."""
    fc = nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        if init is None:
            fc.weight.zero_()
            fc.bias.zero_()
        else:
            fc.weight.copy_(init.weight)
            fc.bias.copy_(init.bias)
    opt = torch.optim.LBFGS(fc.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    penalty = 1.0 / (2.0 * c * x.shape[0])

    def closure() -> torch.Tensor:
        preempt.check("the L-BFGS fit")
        opt.zero_grad()
        loss = F.cross_entropy(fc(x), y) + penalty * fc.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return fc


def fitted_norm(model: LinearClassifier, x: torch.Tensor) -> torch.Tensor:
    """Set the feature BN's statistics to those of ``x`` (population variance) and return ``x`` normalised."""
    if isinstance(model.norm, nn.BatchNorm1d):
        model.norm.running_mean.copy_(x.mean(0))
        model.norm.running_var.copy_(x.var(0, unbiased=False))
        model.norm.num_batches_tracked.fill_(1)
    model.eval()
    with torch.no_grad():
        return model.norm(x)


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, max_iter: int, feature_norm: str,
              init: Optional[LinearClassifier] = None) -> LinearClassifier:
    """The L-BFGS probe on features ``x``: BN statistics of ``x`` (feature_norm bn), then the regression."""
    model = LinearClassifier(None, x.shape[1], num_classes, feature_norm).to(x.device)
    z = fitted_norm(model, x)
    fc = fit_logistic(z, y, num_classes, c, max_iter, init=None if init is None else init.fc)
    model.fc.load_state_dict(fc.state_dict())
    return model.eval()


def sweep_lbfgs(x_fit: torch.Tensor, y_fit: torch.Tensor, scored: dict[str, tuple[torch.Tensor, torch.Tensor]],
                num_classes: int, cs: list[float], max_iter: int, feature_norm: str,
                score: Callable[[torch.Tensor, torch.Tensor], float], *, done: list[dict[str, Any]] = (),
                warm: Optional[LinearClassifier] = None,
                on_cell: Optional[Callable[[list[dict[str, Any]], LinearClassifier], None]] = None
                ) -> list[dict[str, Any]]:
    """One cell per C, fitted on (x_fit, y_fit), warm-started from the previous C: {"c", "wd", NAME: score}
    for every NAME -> (features, labels) of ``scored``. A resumed sweep passes the cells of the first Cs
    (``done``) and the probe of the last of them (``warm``); ``on_cell(cells so far, probe)`` follows each fit."""
    cells, prev = list(done), warm
    for c in cs[len(cells):]:
        prev = fit_probe(x_fit, y_fit, num_classes, c, max_iter, feature_norm, init=prev)
        with torch.no_grad():
            cells.append({"c": c, "wd": 1.0 / c, **{name: score(prev.logits(x).cpu(), y.cpu())
                                                    for name, (x, y) in scored.items()}})
        if on_cell is not None:
            on_cell(cells, prev)
    return cells


def best_cell(cells: list[dict[str, Any]], key: str = "val") -> int:
    """Index of the cell with the highest ``key`` score (the first one on ties)."""
    return max(range(len(cells)), key=lambda i: (cells[i][key], -i))


def top1(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return topk_accuracy(scores, labels)["top1"]


# --------------------------------------------------------------------------- the run


def finished_probe(protocol: LinearEvalProtocol, backbone: Path, run: RunDir) -> Optional[dict[str, Any]]:
    """The result of ``run`` when it is a finished probe of this very ``backbone`` file (the SHA-256 its classifier
    file records) under this protocol (runtime fields aside), read back without extracting a feature; else None.
    A finished run copied or moved elsewhere is found too (its records name the old path)."""
    if not (backbone.is_file() and run.result.is_file() and run.classifier.is_file() and run.protocol_file.is_file()):
        return None
    try:
        if run.protocol_difference(protocol) is not None:
            return None
        if ckpt.read_metadata(run.classifier).get("backbone_sha256") != ckpt.file_sha256(backbone):
            return None
        return run.read_result()
    except UserError:  # unreadable or from another version: probed again
        return None


@command
def run_linear_eval(protocol: LinearEvalProtocol, backbone_path: Path, run_dir: Path, *, resume: Optional[str] = None,
                    force: bool = False, quiet: bool = False, console: Optional[Console] = None) -> dict[str, Any]:
    """Train the probe, select it, test it once; writes ``linear.safetensors`` and ``result.json``. With
    ``resume="auto"``, a finished probe of this backbone under this protocol is read back, not redone."""
    console = console or Console(stderr=True)
    p = protocol
    if resume == "auto" and not force and (done := finished_probe(p, Path(backbone_path), RunDir(run_dir))) is not None:
        if not quiet:
            console.print(f"{run_dir}: finished for this backbone and protocol; its result is reused "
                          "(--force probes again)", highlight=False)
        return done
    backbone, meta = ckpt.load_backbone(backbone_path)
    reference = {k: v.detach().clone() for k, v in backbone.state_dict().items()}  # as loaded from the file
    train_src, test_src = labelled_split(p.data, "train"), labelled_split(p.data, "test")
    if any(t < 0 for t in train_src.targets):
        raise UserError(f"split '{p.data.train_split}' has unlabelled images; linear eval needs labels")
    num_classes = train_src.num_classes
    if p.selection == "val":
        fit_idx, val_idx = balanced_split(train_src.targets, p.val_fraction, p.seed)
        if not val_idx:
            raise UserError(f"split '{p.data.train_split}' has no class with two images to hold one out for "
                            "validation; use selection: test")
    else:
        fit_idx, val_idx = list(range(len(train_src))), []
    run = RunDir(run_dir)
    tracking.check(p.log)
    resume_from = run.prepare(p, resume=resume, force=force, inputs={"backbone": backbone_path})
    ckpt.seed_everything(p.seed)
    device = resolve_device(p.device)
    backbone.to(device)
    workers = p.data.num_workers

    def images(src) -> torch.utils.data.DataLoader:
        return loader_for(src, p.transform, p.batch_size, workers, device)

    if p.train_augment == "none":
        train_f, train_y = extract(backbone, images(train_src), device, desc="train features", console=console,
                                   quiet=quiet)
        test_f, test_y = extract(backbone, images(test_src), device, desc="test features", console=console,
                                 quiet=quiet)
        fit_ds: torch.utils.data.Dataset = torch.utils.data.TensorDataset(train_f[fit_idx], train_y[fit_idx])

        def features(f: torch.Tensor, y: torch.Tensor) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(f, y), batch_size=p.batch_size)

        test_loader = features(test_f, test_y)
        val_loader = features(train_f[val_idx], train_y[val_idx]) if val_idx else test_loader
    else:
        fit_ds = AugmentedDataset(take(train_src, fit_idx), linear_train_transform(p.transform.size,
                                                                                   p.transform.norm), p.seed)
        test_loader = images(test_src)
        val_loader = images(take(train_src, val_idx)) if val_idx else test_loader

    loader = _fit_loader(p, fit_ds, device) if p.probe == "sgd" else None
    start = tracking.resumed_step(resume_from, len(loader)) if loader is not None else 0
    with tracking.closing(tracking.open_tracker(p.log, run_dir, p.model_dump(mode="json"), "linear-eval",
                                                start)) as tracker:
        if loader is None:
            model, chosen, diag = _lbfgs(p, train_f.to(device), train_y.to(device), test_f.to(device),
                                         test_y.to(device), fit_idx, val_idx, num_classes, run_dir, tracker)
        else:
            model, chosen, diag = _sgd(p, backbone, loader, val_loader, test_loader, num_classes, device, run_dir,
                                       resume_from, quiet, console, tracker)
        record = _finish(p, model, chosen, diag, backbone, reference, backbone_path, meta, test_loader, device, run,
                         num_classes, len(fit_idx), len(val_idx))
        tracking.finish(tracker, record, [run.classifier])
    return record


def _finish(p: LinearEvalProtocol, model, chosen, diag, backbone, reference, backbone_path: Path, meta, test_loader,
            device: torch.device, run: RunDir, num_classes: int, num_fit: int, num_val: int) -> dict[str, Any]:
    """The backbone checked unchanged, the selected classifier scored once on test and saved, result.json."""
    check_unchanged(backbone, reference, backbone_path)
    final = evaluate_logits(model, test_loader, device)  # the selected classifier, scored once on test
    pre = json.loads(meta.get("protocol", "{}") or "{}")
    result = LinearResult(
        **LinearResult.provenance(backbone_path, meta), num_classes=num_classes,
        epochs=None if p.probe == "lbfgs" else p.epochs, dataset=p.data.source,
        pretrain_dataset=pre.get("data", {}).get("source"), pretrain_batch_size=pre.get("optim", {}).get("batch_size"),
        pretrain_schedule=pre.get("optim", {}).get("schedule"), probe=p.probe, feature_norm=p.feature_norm,
        selected_on=p.selection, num_fit=num_fit, num_val=num_val, top1=final["top1"], top5=final["top5"],
        num_test=len(test_loader.dataset),
        **chosen, **diag, backbone_unchanged=True)
    save_classifier(run.classifier, model, {
        "backbone": str(backbone_path), "arch": meta["arch"], "backbone_sha256": ckpt.file_sha256(backbone_path),
        "num_classes": str(num_classes), "protocol": protocol_json(p)})
    return run.write_result(result)


def _fit_loader(p: LinearEvalProtocol, fit_ds, device: torch.device) -> torch.utils.data.DataLoader:
    """The SGD probe's training batches (cached features or augmented images)."""
    cached = p.train_augment == "none"
    # BatchNorm cannot train on a last batch of one sample
    drop_last = p.feature_norm == "bn" and len(fit_ds) % p.batch_size == 1
    return torch.utils.data.DataLoader(fit_ds, batch_size=p.batch_size, shuffle=True, drop_last=drop_last,
                                       num_workers=0 if cached else p.data.num_workers,
                                       pin_memory=device.type == "cuda")


def _sgd(p: LinearEvalProtocol, backbone: nn.Module, loader, val_loader, test_loader, num_classes: int,
         device: torch.device, run_dir: Path, resume_from: Optional[Path], quiet: bool, console: Console,
         tracker: Optional[tracking.Tracker]):
    """SGD with MoCo's schedule; after every evaluated epoch the head is kept if it is the best on
    ``val_loader`` (the test loader itself under selection test). Returns (model, chosen, diagnostics)."""
    cached = p.train_augment == "none"
    model = LinearClassifier(None if cached else backbone, backbone.feature_dim, num_classes, p.feature_norm)
    params = [q for q in model.parameters() if q.requires_grad]
    assert len(params) == 2, "only fc.weight and fc.bias may be trained"
    optimizer = torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    on_val = p.selection == "val"

    def epoch_end(epoch: int) -> dict[str, Any]:
        if (epoch + 1) % p.eval_every and epoch + 1 != p.epochs:
            return {}
        record = {}
        if on_val:
            val = evaluate_logits(model, val_loader, device)
            record.update({"val_top1": val["top1"], "val_top5": val["top5"]})
        test = evaluate_logits(model, test_loader, device)  # a diagnostic under selection val
        record.update({"test_top1": test["top1"], "test_top5": test["top5"]})
        score = record["val_top1" if on_val else "test_top1"]
        if not model.selected or score > model.selected["score"]:
            model.select(epoch + 1, score)
        return record

    schedule = Schedule(p.epochs, step_lr(p.lr, p.milestones, p.gamma), seed=p.seed)
    engine = Engine(model, optimizer, loader, schedule=schedule,
                    checkpoints=Checkpoints(run_dir, protocol_json(p), every=p.checkpoint_every,
                                            keep=p.keep_checkpoints),
                    device=DeviceSpec(device),
                    observers=Observers("linear-eval", quiet=quiet, console=console, epoch_end=epoch_end,
                                        tracker=tracker))
    history = engine.run(resume_from)
    tested = [m for m in history if "test_top1" in m]
    test_best, last = max(tested, key=lambda m: m["test_top1"]), tested[-1]
    chosen = {"selected_epoch": model.selected["epoch"], "val_top1": model.selected["score"] if on_val else None}
    model.load_head(model.selected["state"], RunDir(run_dir).checkpoints)
    diag = {"top1_test_best": test_best["test_top1"], "top5_test_best": test_best["test_top5"],
            "test_best_epoch": test_best["epoch"], "top1_last": last["test_top1"], "top5_last": last["test_top5"]}
    return model, chosen, diag


def _lbfgs(p: LinearEvalProtocol, train_f, train_y, test_f, test_y, fit_idx: list[int], val_idx: list[int],
           num_classes: int, run_dir: Path, tracker: Optional[tracking.Tracker]):
    """The C sweep on the fit set, scored on val (or test under selection test); under selection val the
    chosen C is refitted on all of train. Writes grid.json and gives ``tracker`` one row per C (``sweep/...``).
    Returns (model, chosen, diagnostics)."""
    x_fit, y_fit = train_f[fit_idx], train_y[fit_idx]
    scored = {"test": (test_f, test_y)}
    if val_idx:
        scored["val"] = (train_f[val_idx], train_y[val_idx])
    key = "val" if val_idx else "test"
    cells = sweep_lbfgs(x_fit, y_fit, scored, num_classes, p.cs, p.lbfgs_max_iter, p.feature_norm, top1)
    best = best_cell(cells, key)
    if tracker is not None:
        tracker.rows("sweep", list(enumerate(cells)))
    write_json(RunDir(run_dir).grid, {"probe": "lbfgs", "selected_on": key, "num_fit": len(fit_idx),
                                      "num_val": len(val_idx), "cells": cells, "best": best})
    c = cells[best]["c"]
    model = fit_probe(train_f, train_y, num_classes, c, p.lbfgs_max_iter, p.feature_norm) if val_idx else \
        fit_probe(x_fit, y_fit, num_classes, c, p.lbfgs_max_iter, p.feature_norm)
    test_best = cells[best_cell(cells, "test")]
    chosen = {"selected_c": c, "selected_wd": 1.0 / c, "val_top1": cells[best].get("val")}
    return model, chosen, {"top1_test_best": test_best["test"], "test_best_c": test_best["c"]}


def describe_selection(r: dict[str, Any]) -> str:
    """How a linear-eval result's classifier was chosen, in words."""
    what = f"epoch {r['selected_epoch']}" if r.get("selected_epoch") is not None else f"C {r['selected_c']:.3g}"
    on = f"validation top-1 {r['val_top1']:.2f}%" if r["selected_on"] == "val" else "the test split"
    return f"{r['probe']} probe, feature_norm {r['feature_norm']}; {what} chosen on {on}"


def find_linear_run(target: Path) -> tuple[Path, dict[str, Any]]:
    """(directory, result) of a finished linear-eval run: ``target`` itself or ``target/linear-eval``."""
    target = Path(target).expanduser()
    for cand in (RunDir(target), RunDir(target).linear_eval):
        if cand.result.is_file():
            result = cand.read_result()
            if isinstance(result, dict) and result.get("kind") == "linear-eval":
                return cand.path, result
    if not target.exists():
        raise UserError(f"run directory {target} does not exist")
    raise UserError(f"{target} holds no finished linear evaluation (no {RunDir.RESULT} of kind 'linear-eval' in it or "
                    f"in its {RunDir.LINEAR_EVAL}/); run `leoclr linear-eval` first")
