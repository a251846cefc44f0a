"""The only training loop in the project.

A *task* is an ``nn.Module`` whose ``forward(inputs, labels)`` returns ``(loss, stats)``; the
pretraining methods and the linear classifier are tasks. The engine owns everything around the
step: device placement, the per-epoch learning rate (or a per-step one, for iteration-based schedules
such as detection's warm-up and steps), the progress bar, ``metrics.jsonl``,
resumable checkpoints every N epochs and at the end, resume, and the divergence check.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import checkpoint as ckpt
from .errors import UserError


class Divergence(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for, but no CUDA device is available")
    return torch.device(name)


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for a protocol's ``amp`` on ``device`` (None: full precision)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def to_device(x: Any, device: torch.device, channels_last: bool = False) -> Any:
    if torch.is_tensor(x):
        x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, channels_last) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device, channels_last) for k, v in x.items()}
    return x


def cosine_lr(base: float, epochs: int) -> Callable[[int], float]:
    """MoCo's schedule: lr(e) = base * 0.5 * (1 + cos(pi * e / epochs)), set once per epoch."""
    return lambda e: base * 0.5 * (1.0 + math.cos(math.pi * e / epochs))


def step_lr(base: float, milestones: list[int], gamma: float) -> Callable[[int], float]:
    return lambda e: base * gamma ** sum(e >= m for m in milestones)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Engine:
    """Train ``task`` for ``epochs`` epochs over ``loader``; see the module docstring."""

    def __init__(self, *, task: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: torch.utils.data.DataLoader,
                 epochs: int, lr_at: Callable[[int], float], device: torch.device, run_dir: Path, protocol_json: str,
                 checkpoint_every: int, keep_checkpoints: int = 2, quiet: bool = False,
                 console: Optional[Console] = None, epoch_end: Optional[Callable[[int], dict[str, Any]]] = None,
                 desc: str = "train", log_every: int = 10, seed: int = 0,
                 amp: Optional[torch.dtype] = None, channels_last: bool = False,
                 lr_at_step: Optional[Callable[[int], float]] = None):
        self.task, self.optimizer, self.loader = task, optimizer, loader
        self.epochs, self.lr_at, self.device = epochs, lr_at, device
        self.run_dir, self.protocol_json = Path(run_dir), protocol_json
        self.checkpoint_every, self.keep = checkpoint_every, keep_checkpoints
        self.quiet, self.console = quiet, console or Console(stderr=True)
        self.epoch_end, self.desc, self.log_every, self.seed = epoch_end, desc, log_every, seed
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.amp, self.channels_last = amp, channels_last and device.type == "cuda"
        # lr_at_step(global step) overrides lr_at(epoch) when given: the lr is set before every step
        self.lr_at_step = lr_at_step
        # fp16 needs loss scaling; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
        self.sampler_gen = torch.Generator()
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.RandomSampler):
            sampler.generator = self.sampler_gen

    # -------------------------------------------------------------------- state

    def _save(self, epoch: int) -> None:
        extra = {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}
        ckpt.save_train_state(ckpt.state_path(self.run_dir, epoch), model=self.task, optimizer=self.optimizer,
                              epoch=epoch, protocol_json=self.protocol_json, extra=extra)
        ckpt.prune_states(self.run_dir, self.keep)

    def _resume(self, path: Path) -> int:
        done, extra = ckpt.load_train_state(path, model=self.task, optimizer=self.optimizer,
                                            protocol_json=self.protocol_json)
        if self.scaler is not None and "scaler" in extra:
            self.scaler.load_state_dict(extra["scaler"])
        # keep the metrics of the epochs the checkpoint covers, drop any written after it
        kept = [m for m in read_metrics(self.metrics_path) if m.get("epoch", 0) < done]
        ckpt.atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
        return done

    # -------------------------------------------------------------------- loop

    def run(self, resume: Optional[Path] = None) -> list[dict[str, Any]]:
        self.task.to(self.device)
        if self.channels_last:
            self.task.to(memory_format=torch.channels_last)
        start = self._resume(resume) if resume is not None else 0
        if start == 0 and hasattr(self.task, "fill_queue"):
            self._fill_queue()
        if start >= self.epochs:
            return read_metrics(self.metrics_path)
        steps = len(self.loader)
        if steps == 0:
            raise UserError("the dataset has fewer images than one batch; lower the batch size")
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, disable=self.quiet, transient=False)
        with progress:
            bar = progress.add_task(self.desc, total=(self.epochs - start) * steps, info="")
            for epoch in range(start, self.epochs):
                record = self._epoch(epoch, steps, progress, bar)
                if self.epoch_end is not None:
                    self.task.eval()
                    record.update(self.epoch_end(epoch))
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if self.checkpoint_every and ((epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == self.epochs):
                    self._save(epoch + 1)
                if self.quiet:
                    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
                    self.console.print(f"{self.desc} {json.dumps(shown)}", highlight=False)
        return read_metrics(self.metrics_path)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()

    def _fill_queue(self) -> None:
        """Let the task see epoch 0's batches once before training (e.g. to fill a queue)."""
        self.sampler_gen.manual_seed(self.seed * 100_003)
        if hasattr(self.loader.dataset, "set_epoch"):
            self.loader.dataset.set_epoch(0)
        self.task.train()
        with self._autocast():
            self.task.fill_queue((to_device(x, self.device, self.channels_last), to_device(y, self.device))
                                 for x, y in self.loader)

    def _epoch(self, epoch: int, steps: int, progress: Progress, bar: Any) -> dict[str, Any]:
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.sampler_gen.manual_seed(self.seed * 100_003 + epoch)
        dataset = self.loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        self.task.train()
        sums: dict[str, torch.Tensor] = {}
        seen, t0 = 0, time.perf_counter()
        window_loss = torch.zeros((), device=self.device)
        for i, (inputs, labels) in enumerate(self.loader):
            if self.lr_at_step is not None:
                lr = self.lr_at_step(epoch * steps + i)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            inputs = to_device(inputs, self.device, self.channels_last)
            labels = to_device(labels, self.device)
            with self._autocast():
                loss, stats = self.task(inputs, labels)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            n = labels.shape[0] if torch.is_tensor(labels) else len(labels)
            seen += n
            window_loss += loss.detach()
            for key, val in {"loss": loss.detach(), **stats}.items():
                sums[key] = sums.get(key, 0) + torch.as_tensor(val, device=self.device) * n
            if (i + 1) % self.log_every == 0 or i + 1 == steps:
                if not torch.isfinite(window_loss):
                    raise Divergence(f"the loss became {window_loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                                     "the last good checkpoint is kept in "
                                     f"{self.run_dir / 'checkpoints'} (lower the lr or check the data)")
                window_loss.zero_()
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                progress.update(bar, info=f"ep {epoch + 1}/{self.epochs} loss {loss.item():.4f} lr {lr:.4g} "
                                          f"{rate:.0f} samples/s")
            progress.advance(bar)
        elapsed = time.perf_counter() - t0
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        if self.lr_at_step is not None:
            record["iteration"] = (epoch + 1) * steps
        record.update({k: (v / max(seen, 1)).item() for k, v in sums.items()})
        record.update({"samples_per_s": seen / max(elapsed, 1e-9), "time_s": elapsed})
        return record
