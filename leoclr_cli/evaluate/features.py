"""Frozen-backbone features: the shared first step of kNN, cached linear eval and the monitor."""

from __future__ import annotations

from typing import Optional

import torch
from rich.console import Console
from torch import nn

from ..config import EvalDataConfig, EvalTransformConfig
from ..core import preempt
from ..core.progress import Reporter
from ..data import open_data
from ..data.views import AugmentedDataset, eval_transform


def labelled_split(data: EvalDataConfig, which: str):
    split = data.train_split if which == "train" else data.test_split
    n = data.builtin_train if which == "train" else data.builtin_test
    return open_data(data.source, data.root, split, verify_checksums=data.verify_checksums, builtin_n=n)


def subset(ds: torch.utils.data.Dataset, limit: Optional[int]) -> torch.utils.data.Dataset:
    """The first ``limit`` items of an evenly strided pick (all classes stay represented)."""
    if limit is None or len(ds) <= limit:
        return ds
    idx = torch.linspace(0, len(ds) - 1, limit).long().tolist()
    sub = torch.utils.data.Subset(ds, idx)
    sub.targets = [ds.targets[i] for i in idx]  # type: ignore[attr-defined]
    sub.num_classes = ds.num_classes  # type: ignore[attr-defined]
    return sub


def loader_for(source, transform: EvalTransformConfig, batch_size: int, num_workers: int,
               device: torch.device) -> torch.utils.data.DataLoader:
    tf = eval_transform(transform.size, transform.resize, transform.test, transform.norm)
    return torch.utils.data.DataLoader(AugmentedDataset(source, tf), batch_size=batch_size, shuffle=False,
                                       num_workers=num_workers, pin_memory=device.type == "cuda",
                                       worker_init_fn=preempt.worker_init())


@torch.no_grad()
def extract(backbone: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, *,
            desc: str = "features", console: Optional[Console] = None,
            quiet: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32 on CPU, labels (N,)) with the backbone in eval mode; progress as
    ``desc`` on ``console`` (none without one)."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    with Reporter(desc, len(loader), console=console, quiet=quiet) as rep:
        for x, y in preempt.each(loader, "feature extraction"):
            feats.append(backbone(x.to(device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(y))
            rep.advance()
            if rep.mode == "bar" or rep.due():
                rate = sum(len(f) for f in feats) / max(rep.clock() - rep.started, 1e-9)
                rep.show(f"batch {rep.done}/{rep.total} {rate:.0f} images/s")
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)
