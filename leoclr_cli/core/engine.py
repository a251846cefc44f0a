"""The only training loop in the project.

A *task* is a :class:`Task`: an ``nn.Module`` whose ``forward(inputs, labels)`` returns
``(loss, stats)``; the pretraining methods (methods/base.py), the linear and fine-tuning classifiers
and detection are tasks. Before the first step of a new run (not on a resume) the engine hands the
task epoch 0's batches through :meth:`Task.warmup` (a no-op by default, which loads no batch; MoCo's
methods fill their queue in it).

The engine owns everything around the step. Its constructor takes the task, the optimizer, the loader
and four small objects: the :class:`Schedule` (epochs, the learning rate per epoch or per step for
iteration-based schedules such as detection's warm-up and steps, the seed of the data order), the
:class:`Checkpoints` policy (the run directory, resumable checkpoints every N epochs, every M steps and
at the end, how many are kept), the :class:`DeviceSpec` (device, AMP dtype and its gradient scaler,
channels_last) and the :class:`Observers` (progress, progress.py; the trackers, tracking.py, fed the
records ``metrics.jsonl`` gets; the epoch-end hook; how often the divergence check runs). It also does
exact resume (also from the middle of an epoch) and preemption (SIGTERM/SIGINT).

Exact resume: an epoch's sample order comes from a generator seeded by (seed, epoch), the views of
a sample from (seed, epoch, index), DataLoader worker seeds from another (seed, epoch) generator,
so a checkpoint only needs the step position within the epoch (the sampler then starts that many
batches in; skipped batches are never loaded), the global RNGs (torch, CUDA, NumPy, Python; the
task's own draws such as shuffle-BN use them), the optimizer, the AMP scaler and the partial
epoch's metric sums. Extra state is saved through two pairs of hooks, so a task or dataset with
state of its own needs no engine change: ``task.extra_state() -> dict`` /
``task.load_extra_state(dict)`` (:class:`Task`'s defaults save nothing) and the optional
``dataset.state_dict() -> dict`` / ``dataset.load_state_dict(dict)``; tensor values are stored as
tensors, the rest as JSON.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import torch
from rich.console import Console

from . import checkpoint as ckpt
from .atomic import append_text, atomic_write_text
from . import distributed, preempt
from ..errors import Preempted, UserError
from .progress import Reporter
from .rundir import RunDir

if TYPE_CHECKING:
    from .tracking import Tracker


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


def warmup_lr(base: float, warmup_steps: int, total_steps: int, cosine: bool = True) -> Callable[[int], float]:
    """A per-step schedule (MoCo v3, DINO): linear from base / warmup_steps up to ``base`` over the first
    ``warmup_steps`` steps, then a half cosine to 0 over the rest (or ``base`` throughout, ``cosine`` False)."""
    def lr(step: int) -> float:
        if step < warmup_steps:
            return base * (step + 1) / warmup_steps
        if not cosine:
            return base
        return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return lr


def step_lr(base: float, milestones: list[int], gamma: float) -> Callable[[int], float]:
    return lambda e: base * gamma ** sum(e >= m for m in milestones)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a last line torn by a kill is ignored."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for n, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n + 1 < len(lines):
                raise UserError(f"{path} line {n + 1} is not valid JSON") from None
    return records


def metrics_until(records: list[dict[str, Any]], done: int) -> list[dict[str, Any]]:
    """The records of epochs 1..``done`` in order, each epoch once (its first record): what a run resumed
    from the state after ``done`` epochs keeps of its ``metrics.jsonl``."""
    kept: list[dict[str, Any]] = []
    for m in records:
        epoch = m.get("epoch", 0)
        if epoch <= done and (not kept or epoch > kept[-1].get("epoch", 0)):
            kept.append(m)
    return kept


def require_a_batch(loader: torch.utils.data.DataLoader) -> int:
    """The loader's number of batches; refuses a dataset smaller than one batch."""
    steps = len(loader)
    if steps == 0:
        images = len(loader.sampler) if loader.sampler is not None and hasattr(loader.sampler, "__len__") else None
        if images is None:
            images = len(loader.dataset)  # type: ignore[arg-type]
        suggestion = max(2, images // 4 // 2 * 2)
        raise UserError(f"the batch size ({loader.batch_size}) is larger than the {images} images of the dataset, "
                        f"so not one batch can be made; lower optim.batch_size (e.g. --batch-size {suggestion})")
    return steps


class SkipFirst(torch.utils.data.Sampler):
    """Wraps a sampler; the next iteration starts ``skip`` indices in (then ``skip`` resets to 0).

    The wrapped sampler draws its order as usual, so a resumed epoch sees the uninterrupted run's
    remaining batches, and the skipped ones are never loaded.
    """

    def __init__(self, inner: Any):
        self.inner, self.skip = inner, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)


class Task(torch.nn.Module):
    """What the engine trains. A subclass implements ``forward(inputs, labels) -> (loss, stats)``
    (``stats``: named 0-d tensors, averaged over the epoch into its record) and overrides the hooks
    it needs. ``loss`` is what is backpropagated and checked for finiteness; the records' ``loss`` is
    ``stats["loss"]`` when the task gives one (a task whose backpropagated loss carries an auxiliary
    term, such as the online probe's, reports its own loss there), else ``loss``."""

    def forward(self, inputs: Any, labels: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def warmup(self, batches: Iterable[tuple[Any, Any]]) -> None:
        """Called once before the first step of a new run (not on a resume), in train mode and under
        autocast, with epoch 0's ``(inputs, labels)`` batches on the device, loaded as it iterates;
        no gradient step follows. The default takes none (no batch is loaded)."""

    def extra_state(self) -> dict[str, Any]:
        """The task's own state beyond its parameters and buffers, for the checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (called only when it returned something)."""


@dataclass(frozen=True)
class Schedule:
    """How long and at what learning rate the engine trains, and the seed of the data order."""

    epochs: int
    lr_at: Callable[[int], float]  #: the lr of an epoch, set as it starts
    #: the lr of a global step, set before every step (overrides ``lr_at``; iteration-based schedules)
    lr_at_step: Optional[Callable[[int], float]] = None
    seed: int = 0  #: with the epoch, seeds the epoch's sample order and the DataLoader worker seeds


@dataclass(frozen=True)
class Checkpoints:
    """Where the run's state goes and when. ``run_dir`` holds ``checkpoints/`` and ``metrics.jsonl``
    (which a resume cuts back to the checkpoint); every state is tagged with ``protocol_json`` (a resume
    refuses another protocol). A state is saved every ``every`` epochs and after the last (0: neither),
    every ``every_steps`` global steps (0: never) and whenever a signal stops the run; the newest
    ``keep`` are kept."""

    run_dir: Path
    protocol_json: str
    every: int = 0
    every_steps: int = 0
    keep: int = 2


@dataclass(frozen=True)
class DeviceSpec:
    """Where the task runs and in what precision."""

    device: torch.device
    amp: Optional[torch.dtype] = None  #: the autocast dtype (:func:`amp_dtype`); None: full precision
    channels_last: bool = False  #: channels_last weights and batches; honoured on CUDA only

    @property
    def nhwc(self) -> bool:
        """Whether weights and batches are made channels_last."""
        return self.channels_last and self.device.type == "cuda"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()

    def grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        """A loss scaler for fp16 (None otherwise: bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None


@dataclass(frozen=True)
class Observers:
    """What watches the run and adds to its records: the progress bar and log lines (``desc``,
    ``quiet``, ``console``, default stderr), a line and a divergence check every ``log_every`` steps,
    the trackers (TensorBoard / MLflow / W&B, rank 0 only) and ``epoch_end(epoch) -> dict``, run on
    every rank after each epoch's steps (in eval mode), whose entries join the epoch's record."""

    desc: str = "train"
    quiet: bool = False
    console: Optional[Console] = None
    log_every: int = 10
    tracker: Optional["Tracker"] = None
    epoch_end: Optional[Callable[[int], dict[str, Any]]] = None


class Engine:
    """Train ``task`` over ``loader`` as ``schedule`` says; see the module docstring.
    ``batch_transform`` runs on the device before the task (e.g. the tensor view generator,
    data/gpu_views.py)."""

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, loader: torch.utils.data.DataLoader, *,
                 schedule: Schedule, checkpoints: Checkpoints, device: DeviceSpec,
                 observers: Observers = Observers(), batch_transform: Optional[Callable[[Any], Any]] = None):
        self.task, self.optimizer, self.loader = task, optimizer, loader
        self.schedule, self.checkpoints, self.spec, self.observers = schedule, checkpoints, device, observers
        self.epochs, self.device = schedule.epochs, device.device
        self.run_dir = Path(checkpoints.run_dir)
        self.console = observers.console or Console(stderr=True)
        self.metrics_path = RunDir(self.run_dir).metrics
        self.scaler = device.grad_scaler()
        self.batch_transform = batch_transform
        # TensorBoard / MLflow / W&B (tracking.Tracker): fed from _emit and _flush_steps, rank 0 only
        self.tracker = observers.tracker if distributed.is_main() else None
        self.main = distributed.is_main()  # under DDP only rank 0 writes metrics and checkpoints
        self.model: torch.nn.Module = task  # DistributedDataParallel(task) under torchrun, set by run()
        self.sampler_gen = torch.Generator()
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.RandomSampler):
            sampler.generator = self.sampler_gen
        # worker seeds from (seed, epoch), not from the global RNG (which the task's own draws use)
        self.worker_gen = torch.Generator()
        loader.generator = self.worker_gen
        if loader.num_workers > 0:
            loader.worker_init_fn = preempt.worker_init(loader.worker_init_fn)
        batches = getattr(loader, "batch_sampler", None)
        self.skipper: Optional[SkipFirst] = None
        # a streamed (iterable) dataset has no indices to skip: a mid-epoch resume reads and drops the batches
        if batches is not None and hasattr(batches, "sampler") and not isinstance(
                loader.dataset, torch.utils.data.IterableDataset):
            self.skipper = batches.sampler = SkipFirst(batches.sampler)
        self.stop_flag = distributed.HostFlag()
        self._epoch_sums: dict[str, Any] = {}  # the metric sums of the epoch just trained (see _stop)

    # -------------------------------------------------------------------- state

    def _save(self, epoch: int, step: int = 0, partial: Optional[dict[str, Any]] = None) -> Optional[Path]:
        """Write the state after ``epoch`` epochs and ``step`` batches of the next (``partial``: that
        epoch's metric sums so far); refuses to save non-finite weights. Under DDP every rank calls
        it (the BN statistics and the partial sums are reduced across ranks) and only rank 0 writes;
        the other ranks return None."""
        distributed.average_buffers(self.task)
        if partial is not None and distributed.active():
            partial = {"sums": {k: distributed.all_reduce_sum(torch.as_tensor(v, device=self.device).clone())
                                for k, v in partial["sums"].items()},
                       **{k: int(distributed.all_reduce_sum(torch.tensor(partial[k], device=self.device)))
                          for k in ("seen", "bad_images")}}
        params = [q.detach() for q in self.task.parameters()]
        if params and not bool(torch.stack([torch.isfinite(q).all() for q in params]).all()):
            raise Divergence(f"the weights became non-finite by epoch {epoch + 1}, step {step}; "
                             f"{self._kept()} (lower the lr or check the data)")
        if not self.main:
            return None
        extra: dict[str, Any] = {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}
        tensors: dict[str, torch.Tensor] = {}
        for owner, obj, getter in self._hooks():
            fn = getattr(obj, getter, None)
            if callable(fn):
                for key, val in fn().items():
                    if torch.is_tensor(val):
                        tensors[f"{owner}.{key}"] = val
                    else:
                        extra.setdefault(owner, {})[key] = val
        if partial is not None:
            tensors.update({f"sums.{k}": torch.as_tensor(v) for k, v in partial["sums"].items()})
            extra["partial"] = {"seen": partial["seen"], "bad_images": partial["bad_images"],
                                "keys": list(partial["sums"])}
        path = ckpt.state_path(self.run_dir, epoch, step)
        ckpt.save_train_state(path, model=self.task, optimizer=self.optimizer, epoch=epoch, step=step,
                              protocol_json=self.checkpoints.protocol_json, extra=extra, extra_tensors=tensors)
        ckpt.prune_states(self.run_dir, self.checkpoints.keep)
        return path

    def _hooks(self) -> list[tuple[str, Any, str]]:
        return [("task", self.task, "extra_state"), ("dataset", self.loader.dataset, "state_dict")]

    def _kept(self) -> str:
        last = ckpt.latest_state(self.run_dir)
        return f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"

    def _resume(self, path: Path) -> tuple[int, int, Optional[dict[str, Any]]]:
        done, extra = ckpt.load_train_state(path, model=self.task, optimizer=self.optimizer,
                                            protocol_json=self.checkpoints.protocol_json)
        if self.scaler is not None and "scaler" in extra:
            self.scaler.load_state_dict(extra["scaler"])
        tensors = extra["tensors"]
        for owner, obj, getter in self._hooks():
            fn = getattr(obj, "load_" + getter, None)
            state = {**extra.get(owner, {}), **{k[len(owner) + 1:]: v for k, v in tensors.items()
                                               if k.startswith(owner + ".")}}
            if callable(fn) and state:
                fn(state)
        step, partial = extra["step"], None
        if step:
            info = extra["partial"]
            partial = {"sums": {k: tensors[f"sums.{k}"].to(self.device) for k in info["keys"]},
                       "seen": info["seen"], "bad_images": info["bad_images"]}
            if not self.main:  # the sums are over all ranks (see _save): rank 0 carries them
                partial = {"sums": {k: torch.zeros_like(v) for k, v in partial["sums"].items()},
                           "seen": 0, "bad_images": 0}
        # keep the metrics of the epochs the checkpoint covers, each once, and drop any written after it
        if self.main:
            atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in metrics_until(
                read_metrics(self.metrics_path), done)))
        return done, step, partial

    # -------------------------------------------------------------------- loop

    def run(self, resume: Optional[Path] = None) -> list[dict[str, Any]]:
        self.task.to(self.device)
        if self.spec.nhwc:
            self.task.to(memory_format=torch.channels_last)
        self.model = distributed.wrap(self.task, self.device)  # DistributedDataParallel under torchrun
        start, start_step, partial = self._resume(resume) if resume is not None else (0, 0, None)
        if resume is None:
            self._warmup()
        if start >= self.epochs:
            return read_metrics(self.metrics_path)
        steps = require_a_batch(self.loader)
        reporter = Reporter(self.observers.desc, (self.epochs - start) * steps - start_step, console=self.console,
                            quiet=self.observers.quiet or not self.main)
        with reporter, preempt.preemptible():
            for epoch in range(start, self.epochs):
                first = epoch == start
                record = self._epoch(epoch, steps, reporter, start_step if first else 0,
                                     partial if first else None)
                epoch_end = self.observers.epoch_end
                if epoch_end is not None:
                    self.task.eval()
                    rng = ckpt.rng_state()  # what the hook starts from, and so must its re-run on resume
                    try:
                        record.update(epoch_end(epoch))
                    except Preempted:  # a signal during the epoch-end evaluation: keep the epoch's steps
                        ckpt.set_rng_state(*rng)
                        self._stop(preempt.requested(), epoch, steps, self._epoch_sums)
                self._emit(record, (epoch + 1) * steps)
                every, every_steps = self.checkpoints.every, self.checkpoints.every_steps
                if (every_steps and (epoch + 1) * steps % every_steps == 0
                        or every and ((epoch + 1) % every == 0 or epoch + 1 == self.epochs)):
                    self._save(epoch + 1)
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
                reporter.line(json.dumps(shown))  # in a log, each epoch's record
        self.stop_flag.drain()
        return read_metrics(self.metrics_path)

    def _emit(self, record: dict[str, Any], step: int) -> None:
        """The one place an epoch's record goes out: ``metrics.jsonl``, then the trackers (rank 0)."""
        if not self.main:
            return
        append_text(self.metrics_path, json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.epoch(step, record)

    def _flush_steps(self, pending: list[tuple[int, torch.Tensor, float]]) -> None:
        """Hand the per-step (global step, loss, lr) gathered since the last flush to the trackers
        (one device sync for all of them)."""
        if pending:
            losses = torch.stack([loss for _, loss, _ in pending]).float().tolist()
            self.tracker.steps([(s, {"loss": v, "lr": lr}) for (s, _, lr), v in zip(pending, losses)])
            pending.clear()

    def _set_lr(self, lr: float) -> None:
        """Every parameter group's lr: the schedule's, times the group's ``lr_scale`` (default 1; the
        online probe's group, methods/base.py, runs at its own multiple of the schedule)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def _set_epoch(self, epoch: int) -> None:
        """Seed the epoch's order (RandomSampler or DistributedSampler), worker seeds and views."""
        seed = self.schedule.seed
        self.sampler_gen.manual_seed(seed * 100_003 + epoch)
        self.worker_gen.manual_seed(seed * 100_003 + epoch + 1_000_000_007)
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        if hasattr(self.loader.dataset, "set_epoch"):
            self.loader.dataset.set_epoch(epoch)

    def _inputs(self, inputs: Any) -> Any:
        inputs = to_device(inputs, self.device, self.spec.nhwc and self.batch_transform is None)
        if self.batch_transform is not None:
            inputs = to_device(self.batch_transform(inputs), self.device, self.spec.nhwc)
        return inputs

    def _warmup(self) -> None:
        """Hand the task epoch 0's batches once before training (:meth:`Task.warmup`)."""
        self.task.train()
        with self.spec.autocast():
            self.task.warmup(self._warmup_batches())

    def _warmup_batches(self) -> Iterator[tuple[Any, Any]]:
        self._set_epoch(0)  # on the first batch asked for: a task that takes none costs nothing
        for x, y, *_ in preempt.each(self.loader, "the warm-up before the first step"):
            yield self._inputs(x), to_device(y, self.device)

    def _epoch(self, epoch: int, steps: int, reporter: Reporter, skip: int = 0,
               partial: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """One epoch from batch ``skip`` on (``partial``: the metric sums of the batches before it)."""
        lr = self.schedule.lr_at(epoch)
        self._set_lr(lr)
        self._set_epoch(epoch)
        self.task.train()
        sums: dict[str, torch.Tensor] = dict(partial["sums"]) if partial else {}
        seen = partial["seen"] if partial else 0
        bad_images = partial["bad_images"] if partial else 0
        t0 = time.perf_counter()
        window: list[torch.Tensor] = []  # per-step losses since the last finiteness check
        pending: list[tuple[int, torch.Tensor, float]] = []  # per-step values for the trackers
        batches: Any = self.loader
        if skip and self.skipper is not None:
            self.skipper.skip = skip * (self.loader.batch_size or 1)
        elif skip:
            batches = itertools.islice(self.loader, skip, None)
        for i, batch in enumerate(batches, start=skip):
            if self.schedule.lr_at_step is not None:
                lr = self.schedule.lr_at_step(epoch * steps + i)
                self._set_lr(lr)
            inputs = self._inputs(batch[0])
            labels = to_device(batch[1], self.device)
            if len(batch) > 2:  # the count of unreadable images replaced in this batch
                bad_images += int(torch.as_tensor(batch[2]).sum())
            with self.spec.autocast():
                loss, stats = self.model(inputs, labels)
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
            window.append(loss.detach())
            reported = stats["loss"] if "loss" in stats else window[-1]  # what the records call the loss
            if self.tracker is not None:
                pending.append((epoch * steps + i + 1, reported, lr))
            for key, val in {"loss": loss.detach(), **stats}.items():
                sums[key] = sums.get(key, 0) + torch.as_tensor(val, device=self.device) * n
            done = i + 1
            every_steps = self.checkpoints.every_steps
            due = every_steps and (epoch * steps + done) % every_steps == 0 and done < steps
            stop = self._stop_requested()
            if stop is not None or due:
                self._check_finite(window, epoch, done, steps)
                if stop is not None:
                    self._stop(stop, epoch, done, {"sums": sums, "seen": seen, "bad_images": bad_images})
                self._save(epoch, done, {"sums": sums, "seen": seen, "bad_images": bad_images})
            reporter.advance()
            checked = done % self.observers.log_every == 0 or done == steps
            if checked:  # a collective under DDP: on every rank at the same steps
                self._check_finite(window, epoch, done, steps)
                if self.tracker is not None:
                    self._flush_steps(pending)
            if checked or reporter.due():  # due() follows rank 0's clock: no collective in here
                rate = (seen - (partial["seen"] if partial else 0)) / max(time.perf_counter() - t0, 1e-9)
                reporter.show(f"epoch {epoch + 1}/{self.epochs} step {done}/{steps} loss {reported.item():.4f} "
                              f"lr {lr:.4g} {rate:.0f} samples/s")
        self._check_finite(window, epoch, steps, steps)
        self._epoch_sums = {"sums": dict(sums), "seen": seen, "bad_images": bad_images}  # this rank's, for _stop
        elapsed = time.perf_counter() - t0
        if distributed.active():  # the epoch's totals over all ranks
            seen = int(distributed.all_reduce_sum(torch.tensor(seen, device=self.device)))
            bad_images = int(distributed.all_reduce_sum(torch.tensor(bad_images, device=self.device)))
            sums = {k: distributed.all_reduce_sum(torch.as_tensor(v, device=self.device).clone())
                    for k, v in sums.items()}
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        if self.schedule.lr_at_step is not None:
            record["iteration"] = (epoch + 1) * steps
        record.update({k: (v / max(seen, 1)).item() for k, v in sums.items()})
        if bad_images:
            record["bad_images_skipped"] = bad_images
        record.update({"samples_per_s": seen / max(elapsed, 1e-9), "time_s": elapsed})
        return record

    def _stop(self, signum: int, epoch: int, done: int, partial: dict[str, Any]) -> None:
        """Save the state after ``done`` steps of ``epoch`` and raise Preempted (exit 75)."""
        path = self._save(epoch, done, partial)
        self.stop_flag.drain()
        written = f"checkpoint {path} written" if path else "checkpoint written by rank 0"
        raise Preempted(f"{signal.Signals(signum).name} at epoch {epoch + 1}, step {done}; {written}; "
                        "continue with --resume auto")

    def _stop_requested(self) -> Optional[int]:
        """The signal that asked to stop (None: keep going); under DDP any rank's, so that every
        rank checkpoints and stops at the same step. The ranks' flags are reduced on the host
        (:class:`~.distributed.HostFlag`), so the check costs no device sync and the stop comes
        one step after the signal."""
        return self.stop_flag.exchange(preempt.requested() or 0) or None

    def _check_finite(self, window: list[torch.Tensor], epoch: int, done: int, steps: int) -> None:
        """Raise Divergence naming the exact step if a loss in ``window`` (the steps up to ``done``)
        is NaN or infinite; one device sync per check, not per step."""
        if not window:
            return
        # under DDP the losses summed over ranks: every rank stops at the same check
        losses = distributed.all_reduce_sum(torch.stack(window).float())
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            k = int((~finite).nonzero()[0])
            step = done - len(window) + k + 1
            raise Divergence(f"the loss became {losses[k].item()} at epoch {epoch + 1}, step {step} of {steps} "
                             f"(global step {epoch * steps + step}); {self._kept()} (lower the lr or check the data)")
        window.clear()
