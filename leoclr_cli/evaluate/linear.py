"""Linear evaluation (MoCo's main_lincls): a new fc on a frozen backbone kept in eval mode.

``train_augment: random-resized-crop`` is the paper's protocol (RandomResizedCrop + flip each
epoch through the frozen backbone). ``none`` computes the features once and trains the fc on the
cache: the same classifier and schedule at a fraction of the cost (the quickstart uses it).
Either way the backbone is checked bit-exactly against the checkpoint afterwards, BN buffers
included: a frozen-feature result is only valid if the features did not move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from .. import checkpoint as ckpt
from .. import preempt
from ..data.views import AugmentedDataset, linear_train_transform
from ..engine import Engine, resolve_device, step_lr
from ..errors import UserError
from ..rundir import command, prepare, read_json, write_json
from ..schema import LinearEvalProtocol, protocol_json
from .features import extract, labelled_split, loader_for
from .knn import topk_accuracy


class LinearClassifier(nn.Module):
    """fc ~ N(0, 0.01), bias 0, on a frozen backbone (``None``: the inputs are cached features)."""

    def __init__(self, backbone: Optional[nn.Module], feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        if backbone is not None:
            for p in backbone.parameters():
                p.requires_grad_(False)
        self.fc = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def train(self, mode: bool = True) -> "LinearClassifier":
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # BN statistics must not move
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            with torch.no_grad():
                x = self.backbone(x)
        return self.fc(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.logits(x)
        acc = (out.argmax(1) == labels).float().mean() * 100
        return F.cross_entropy(out, labels), {"acc": acc}


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


@command
def run_linear_eval(protocol: LinearEvalProtocol, backbone_path: Path, run_dir: Path, *, resume: Optional[str] = None,
                    force: bool = False, quiet: bool = False, console: Optional[Console] = None) -> dict[str, Any]:
    """Train and test the linear classifier; writes ``linear.safetensors`` and ``result.json``."""
    console = console or Console(stderr=True)
    backbone, meta = ckpt.load_backbone(backbone_path)
    reference = {k: v.detach().clone() for k, v in backbone.state_dict().items()}  # as loaded from the file
    train_src, test_src = labelled_split(protocol.data, "train"), labelled_split(protocol.data, "test")
    if any(t < 0 for t in train_src.targets):
        raise UserError(f"split '{protocol.data.train_split}' has unlabelled images; linear eval needs labels")
    num_classes = train_src.num_classes
    resume_from = prepare(run_dir, protocol, resume=resume, force=force)
    torch.manual_seed(protocol.seed)
    device = resolve_device(protocol.device)
    backbone.to(device)
    feature_dim = backbone.feature_dim
    workers = protocol.data.num_workers
    test_loader = loader_for(test_src, protocol.transform, protocol.batch_size, workers, device)
    if protocol.train_augment == "none":
        train_f, train_y = extract(backbone, loader_for(train_src, protocol.transform, protocol.batch_size, workers,
                                                        device), device, desc="train features", console=console,
                                   quiet=quiet)
        test_f, test_y = extract(backbone, test_loader, device, desc="test features", console=console, quiet=quiet)
        model = LinearClassifier(None, feature_dim, num_classes)
        train_ds = torch.utils.data.TensorDataset(train_f, train_y)
        test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(test_f, test_y),
                                                  batch_size=protocol.batch_size)
    else:
        model = LinearClassifier(backbone, feature_dim, num_classes)
        train_ds = AugmentedDataset(train_src, linear_train_transform(protocol.transform.size,
                                                                      protocol.transform.norm), protocol.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == 2, "only fc.weight and fc.bias may be trained"
    optimizer = torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=protocol.batch_size, shuffle=True,
                                         num_workers=workers if protocol.train_augment != "none" else 0,
                                         pin_memory=device.type == "cuda")

    def epoch_end(epoch: int) -> dict[str, Any]:
        if (epoch + 1) % protocol.eval_every and epoch + 1 != protocol.epochs:
            return {}
        res = evaluate_logits(model, test_loader, device)
        return {"test_top1": res["top1"], "test_top5": res["top5"]}

    engine = Engine(task=model, optimizer=optimizer, loader=loader, epochs=protocol.epochs,
                    lr_at=step_lr(protocol.lr, protocol.milestones, protocol.gamma), device=device, run_dir=run_dir,
                    protocol_json=protocol_json(protocol), checkpoint_every=protocol.checkpoint_every,
                    keep_checkpoints=protocol.keep_checkpoints, quiet=quiet, console=console, epoch_end=epoch_end,
                    desc="linear-eval", seed=protocol.seed)
    history = engine.run(resume_from)
    check_unchanged(backbone, reference, backbone_path)
    tested = [m for m in history if "test_top1" in m]
    best = max(tested, key=lambda m: m["test_top1"])
    last = tested[-1]
    pre = json.loads(meta.get("protocol", "{}") or "{}")
    result = {
        "kind": "linear-eval", "backbone": str(backbone_path), "arch": meta["arch"], "method": meta.get("method"),
        "pretrain_epoch": int(meta.get("epoch", 0)), "num_classes": num_classes, "epochs": protocol.epochs,
        "dataset": protocol.data.source, "pretrain_dataset": pre.get("data", {}).get("source"),
        "pretrain_batch_size": pre.get("optim", {}).get("batch_size"),
        "top1_best": best["test_top1"], "top5_best": best["test_top5"], "best_epoch": best["epoch"],
        "top1_last": last["test_top1"], "top5_last": last["test_top5"],
        "backbone_unchanged": True,
    }
    ckpt.save_tensors(Path(run_dir) / "linear.safetensors", {"fc.weight": model.fc.weight, "fc.bias": model.fc.bias},
                      {"kind": ckpt.KIND_LINEAR, "backbone": str(backbone_path), "arch": meta["arch"],
                       "backbone_sha256": ckpt.file_sha256(backbone_path),
                       "num_classes": str(num_classes), "protocol": protocol_json(protocol)})
    write_json(Path(run_dir) / "result.json", result)
    return result


def find_linear_run(target: Path) -> tuple[Path, dict[str, Any]]:
    """(directory, result) of a finished linear-eval run: ``target`` itself or ``target/linear-eval``."""
    target = Path(target).expanduser()
    for cand in (target, target / "linear-eval"):
        if (cand / "result.json").is_file():
            result = read_json(cand / "result.json")
            if isinstance(result, dict) and result.get("kind") == "linear-eval":
                return cand, result
    if not target.exists():
        raise UserError(f"run directory {target} does not exist")
    raise UserError(f"{target} holds no finished linear evaluation (no result.json of kind 'linear-eval' in it or "
                    "in its linear-eval/); run `leoclr linear-eval` first")
