"""Semi-supervised fine-tuning (SimCLR's protocol; the paper's Table 2 and Figure 3).

The whole backbone and a new fc are trained (BN in train mode) on a labelled subset of the train
split: SimCLR's list file (``subset_file``) or a class-balanced draw of ``labels``% of each class.
RandomResizedCrop + flip only, no weight decay, SGD-Nesterov with a cosine schedule; then top-1
and top-5 on the full test/val split. :func:`train_classifier` is also the fine-tuning step of
``leoclr transfer``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from ..config import FinetuneProtocol, Norm, protocol_json
from ..core import checkpoint as ckpt
from ..core import tracking
from ..core.engine import Checkpoints, DeviceSpec, Engine, Observers, Schedule, Task, cosine_lr, resolve_device
from ..core.results import FinetuneResult, FinetuneSweepResult
from ..core.rundir import RunDir, command
from ..data.views import AugmentedDataset, linear_train_transform
from ..errors import UserError
from .features import labelled_split, loader_for
from .linear import evaluate_logits
from .subsets import balanced_subset, read_subset_file, take, write_subset_file

RESULT_KEYS = tuple(FinetuneResult.model_fields)


class FinetuneClassifier(Task):
    """A backbone (all layers trainable, BN in train mode) with a new zero-initialised fc (SimCLR's
    ``zero_init_logits_layer``)."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(True)
        self.fc = nn.Linear(backbone.feature_dim, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.logits(x)
        return F.cross_entropy(out, labels), {"acc": (out.argmax(1) == labels).float().mean() * 100}


def train_classifier(model: FinetuneClassifier, train: torch.utils.data.Dataset, *, size: int, normalize: Norm,
                     epochs: int, batch_size: int, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                     schedule: str, device: torch.device, run_dir: Path, protocol: str, seed: int,
                     checkpoint_every: int, keep_checkpoints: int = 1, num_workers: int = 0,
                     resume: Optional[Path] = None, quiet: bool = False, console: Optional[Console] = None,
                     desc: str = "finetune", tracker: Optional[tracking.Tracker] = None) -> list[dict[str, Any]]:
    """Train every parameter of ``model`` on ``train`` (RandomResizedCrop + flip) with the one engine (``tracker``
    gets its steps and epochs)."""
    data = AugmentedDataset(train, linear_train_transform(size, normalize), seed)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                         drop_last=epoch_batches(len(data), batch_size)[1],
                                         pin_memory=device.type == "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                                weight_decay=weight_decay)
    lr_at = cosine_lr(lr, epochs) if schedule == "cosine" else (lambda e: lr)
    engine = Engine(model, optimizer, loader, schedule=Schedule(epochs, lr_at, seed=seed),
                    checkpoints=Checkpoints(run_dir, protocol, every=checkpoint_every, keep=keep_checkpoints),
                    device=DeviceSpec(device), observers=Observers(desc, quiet=quiet, console=console, tracker=tracker))
    return engine.run(resume)


def epoch_batches(images: int, batch_size: int) -> tuple[int, bool]:
    """(batches per epoch, whether the last is dropped) of :func:`train_classifier`'s loader: a last batch of
    one image is dropped (it cannot be batch-normalised at 1x1 spatial size)."""
    drop = images % batch_size == 1 and images > 1
    return images // batch_size if drop else -(-images // batch_size), drop


def _labelled_subset(p: FinetuneProtocol, train_src) -> tuple[list[int], str]:
    if all(t < 0 for t in train_src.targets):
        raise UserError(f"split '{p.data.train_split}' has no labelled images; fine-tuning needs labels")
    if p.subset_file:
        return read_subset_file(Path(p.subset_file), train_src), "file"
    return balanced_subset(train_src.targets, train_src.classes, p.labels, p.subset_seed), "drawn"


@command
def run_finetune(p: FinetuneProtocol, backbone_path: Path, run_dir: Path, *, resume: Optional[str] = None,
                 force: bool = False, quiet: bool = False, console: Optional[Console] = None,
                 splits: Optional[tuple[Any, Any]] = None) -> dict[str, Any]:
    """Fine-tune on the labelled subset, test on the full test split; writes ``subset.txt`` and ``result.json``.
    ``splits``: the labelled train and test splits of ``p.data`` when the caller opened them already."""
    backbone, meta = ckpt.load_backbone(backbone_path)
    train_src, test_src = splits or (labelled_split(p.data, "train"), labelled_split(p.data, "test"))
    indices, how = _labelled_subset(p, train_src)
    run = RunDir(run_dir)
    tracking.check(p.log)
    resume_from = run.prepare(p, resume=resume, force=force, inputs={"backbone": backbone_path})
    write_subset_file(run.subset, train_src, indices)
    ckpt.seed_everything(p.seed)
    device = resolve_device(p.device)
    model = FinetuneClassifier(backbone, train_src.num_classes)
    epochs, desc = p.resolved_epochs(), f"finetune {p.labels:g}%"
    start = tracking.resumed_step(resume_from, epoch_batches(len(indices), p.batch_size)[0])
    with tracking.closing(tracking.open_tracker(p.log, run.path, p.model_dump(mode="json"), desc, start)) as tracker:
        train_classifier(model, take(train_src, indices), size=p.transform.size, normalize=p.transform.norm,
                         epochs=epochs, batch_size=p.batch_size, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov,
                         weight_decay=p.weight_decay, schedule=p.schedule, device=device, run_dir=run.path,
                         protocol=protocol_json(p), seed=p.seed, checkpoint_every=p.checkpoint_every,
                         keep_checkpoints=p.keep_checkpoints, num_workers=p.data.num_workers, resume=resume_from,
                         quiet=quiet, console=console, desc=desc, tracker=tracker)
        acc = evaluate_logits(model, loader_for(test_src, p.transform, p.batch_size, p.data.num_workers, device),
                              device)
        record = run.write_result(FinetuneResult(
            **FinetuneResult.provenance(backbone_path, meta), dataset=p.data.source, labels=p.labels,
            fraction=p.labels / 100, top1=acc["top1"], top5=acc["top5"], epochs=epochs,
            num_classes=train_src.num_classes, num_labelled=len(indices), num_test=len(test_src), subset=how,
            subset_file=str(run.subset)))
        tracking.finish(tracker, record)
    return record


def parse_labels(text: str) -> list[float]:
    """``10%``, ``1``, ``0.5%`` or a sweep ``1,2,5,10,20,50,100`` -> percents in (0, 100]."""
    values = []
    for part in text.split(","):
        part = part.strip().rstrip("%").strip()
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--labels {text!r}: {part!r} is not a percentage (e.g. 10% or 1,10,100)") from None
        if not 0 < value <= 100:
            raise UserError(f"--labels {text!r}: {value:g} is not a percentage in (0, 100]")
        values.append(value)
    if len(set(values)) != len(values):
        raise UserError(f"--labels {text!r} names a fraction twice")
    return values


def label_fractions(labels: Optional[str], subset_file: Optional[Path]) -> list[Optional[float]]:
    """The fractions ``--labels`` names (``[None]``: the protocol's own); ``--subset-file`` fixes one subset."""
    fractions: list[Optional[float]] = list(parse_labels(labels)) if labels is not None else [None]
    if subset_file is not None and len(fractions) > 1:
        raise UserError("--subset-file fixes one subset; it cannot be combined with a sweep of --labels")
    return fractions


def fraction_dir(labels: float) -> str:
    """Subdirectory name of one fraction of a sweep: ``labels_1pct``, ``labels_0.5pct``."""
    return f"labels_{labels:g}pct"


@command
def run_finetune_sweep(protocols: list[FinetuneProtocol], backbone_path: Path, run_dir: Path, *,
                       resume: Optional[str] = None, force: bool = False, quiet: bool = False,
                       console: Optional[Console] = None) -> dict[str, Any]:
    """One fine-tuning run per protocol (one per label fraction) in ``run_dir/labels_<N>pct``, and
    ``run_dir/summary.json``. With ``resume='auto'`` finished fractions are kept and others resumed."""
    if resume not in (None, "auto"):
        raise UserError("a sweep of --labels resumes with --resume auto only")
    run_dir = Path(run_dir)
    splits = labelled_split(protocols[0].data, "train"), labelled_split(protocols[0].data, "test")  # opened once
    for p in protocols:  # every fraction's subset is valid before the first one trains
        _labelled_subset(p, splits[0])
    if run_dir.exists() and any(run_dir.iterdir()) and resume is None:
        if not force:
            raise UserError(f"run directory {run_dir} already exists; use --resume auto to continue it "
                            "or --force to start over")
        shutil.rmtree(run_dir)
    runs = []
    for p in protocols:
        sub = RunDir(run_dir / fraction_dir(p.labels))
        if resume == "auto" and sub.result.is_file():
            result = sub.read_result()
        else:
            again = "auto" if resume == "auto" and ckpt.latest_state(sub.path) is not None else None
            result = run_finetune(p, backbone_path, sub.path, resume=again, force=resume == "auto", quiet=quiet,
                                  console=console, splits=splits)
        runs.append({"dir": sub.path.name, **{k: result[k] for k in ("labels", "fraction", "top1", "top5", "epochs")}})
    return RunDir(run_dir).write_result(FinetuneSweepResult(backbone=str(backbone_path), runs=runs))


def sweep_table(summary: dict[str, Any]) -> Table:
    """A sweep's summary as a table: one row per label fraction."""
    table = Table(title=f"Semi-supervised fine-tuning of {summary['backbone']}")
    for col in ("labels %", "epochs", "top-1 %", "top-5 %"):
        table.add_column(col, justify="right")
    for row in summary["runs"]:
        table.add_row(f"{row['labels']:g}", str(row["epochs"]), f"{row['top1']:.2f}", f"{row['top5']:.2f}")
    return table
