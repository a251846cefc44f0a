"""What the CUDA tier's tests share: the device parameter (``cuda`` marked, ``cpu`` not), a few steps of a
pretraining method through the real engine from one seed with its per-step losses, and comparisons of
weights."""

from __future__ import annotations

import math
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from rich.console import Console

from leoclr_cli.config import MethodConfig, ModelConfig
from leoclr_cli.core.engine import Checkpoints, DeviceSpec, Engine, Observers, Schedule
from leoclr_cli.methods import build_method
from leoclr_cli.workflows.pretrain import compile_encoders


def devices(*names: str) -> list[Any]:
    """``names`` as parameters, those on CUDA marked ``cuda`` (skipped without it)."""
    return [pytest.param(n, marks=pytest.mark.cuda, id=n) if n.startswith("cuda") else pytest.param(n, id=n)
            for n in names]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Size:
    """A model and data size: tiny on the CPU, small-but-real on a GPU."""

    arch: str
    size: int
    batch: int
    queue: int
    dim: int
    cifar_stem: bool


SIZES = {"cpu": Size("resnet18", 16, 16, 64, 16, True), "cuda": Size("resnet18", 64, 64, 1024, 128, False)}


class StepLosses:
    """A tracker (the engine's per-step hook) that keeps every step's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def steps(self, rows):
        self.losses += [values["loss"] for _, values in rows]

    def epoch(self, step, record):
        pass

    def close(self):
        pass


class Views(torch.utils.data.Dataset):
    """Fixed random views, seeded: sample i is the same tensors in every run."""

    def __init__(self, n_views: int, size: int, length: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = [[torch.randn(3, size, size, generator=g) for _ in range(n_views)] for _ in range(length)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i], 0


@dataclass
class Steps:
    """What :func:`train_steps` returns."""

    losses: list[float]
    initial: dict[str, torch.Tensor]  #: the query encoder's parameters before the first step (CPU)
    final: dict[str, torch.Tensor]  #: ... and after the last (CPU)
    applied: int = 0  #: optimizer steps actually taken
    scale: Optional[float] = None  #: the fp16 loss scale after the last step
    method: Any = field(default=None, repr=False)


def train_steps(method: str, device: str, steps: int, *, amp: Optional[torch.dtype] = None,
                channels_last: bool = False, compile: bool = False, init_scale: Optional[float] = None,
                seed: int = 0, size: Optional[Size] = None) -> Steps:
    """``steps`` steps of ``method`` (one epoch of ``steps`` batches, fixed order) through the engine on
    ``device`` from ``seed``: the same weights, queue and data in every call with the same arguments
    (``size``: default the device type's :data:`SIZES`)."""
    dev = torch.device(device)
    sz = size or SIZES[dev.type]
    torch.manual_seed(seed)
    model = build_method(ModelConfig(arch=sz.arch, dim=sz.dim, bn_splits=1, cifar_stem=sz.cifar_stem),
                         MethodConfig(name=method, queue_size=sz.queue))
    if compile:
        compile_encoders(model, "default")
    initial = {k: v.detach().clone() for k, v in model.encoder_q.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                          weight_decay=1e-4)
    applied = [0]
    inner_step = opt.step

    def counted_step(*args, **kwargs):  # the scaler calls it only for a step whose gradients are finite
        applied[0] += 1
        return inner_step(*args, **kwargs)

    opt.step = counted_step
    loader = torch.utils.data.DataLoader(Views(len(model.views), sz.size, steps * sz.batch, seed), batch_size=sz.batch,
                                         shuffle=False, drop_last=True)
    tracker = StepLosses()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(model, opt, loader, schedule=Schedule(1, lambda e: 0.03, seed=seed),
                        checkpoints=Checkpoints(Path(tmp), "{}"),
                        device=DeviceSpec(dev, amp, channels_last=channels_last),
                        observers=Observers("steps", quiet=True, console=Console(quiet=True), log_every=1,
                                            tracker=tracker))
        if init_scale is not None:
            engine.scaler = torch.amp.GradScaler(dev.type, init_scale=init_scale)
        engine.run()
    final = {k: v.detach().float().cpu().clone() for k, v in model.encoder_q.named_parameters()}
    scale = engine.scaler.get_scale() if engine.scaler is not None else None
    return Steps(tracker.losses, {k: v.float().cpu() for k, v in initial.items()}, final, applied[0], scale, model)


def update_error(a: Steps, b: Steps) -> float:
    """||(a.final - a.initial) - (b.final - b.initial)|| / ||b.final - b.initial|| over the query encoder:
    how far the weights ``a`` trained to are from ``b``'s, relative to how far ``b`` moved."""
    num = math.sqrt(sum(float(((a.final[k] - b.final[k]) ** 2).sum()) for k in b.final))
    den = math.sqrt(sum(float(((b.final[k] - b.initial[k]) ** 2).sum()) for k in b.final))
    return num / den


def finite(s: Steps) -> bool:
    return all(math.isfinite(v) for v in s.losses) and all(bool(torch.isfinite(v).all()) for v in s.final.values())
