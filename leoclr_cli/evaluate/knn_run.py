"""``leoclr knn``: weighted kNN accuracy of a backbone checkpoint; writes a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console

from ..config import KnnProtocol
from ..core import checkpoint as ckpt
from ..core import tracking
from ..core.engine import resolve_device
from ..core.results import KnnResult
from ..core.rundir import RunDir, command
from .features import extract, labelled_split, loader_for
from .knn import knn_accuracy


@command(resumable=False)
def run_knn(p: KnnProtocol, backbone_path: Path, run_dir: Path, *, force: bool = False, quiet: bool = False,
            console: Optional[Console] = None) -> dict[str, Any]:
    backbone, meta = ckpt.load_backbone(backbone_path)
    bank_src, test_src = labelled_split(p.data, "train"), labelled_split(p.data, "test")
    run = RunDir(run_dir)
    tracking.check(p.log)
    run.prepare(p, resume=None, force=force)
    device = resolve_device(p.device)
    backbone.to(device)
    shown = {"console": console, "quiet": quiet}
    bank, bank_y = extract(backbone, loader_for(bank_src, p.transform, p.batch_size, p.data.num_workers, device), device,
                           desc="knn bank features", **shown)
    test, test_y = extract(backbone, loader_for(test_src, p.transform, p.batch_size, p.data.num_workers, device), device,
                           desc="knn test features", **shown)
    keep = bank_y >= 0  # STL-10 unlabeled images cannot vote
    acc = knn_accuracy(bank[keep], bank_y[keep], test, test_y, bank_src.num_classes, p.k, p.t)
    with tracking.closing(tracking.open_tracker(p.log, run.path, p.model_dump(mode="json"), "knn")) as tracker:
        record = run.write_result(KnnResult(**KnnResult.provenance(backbone_path, meta), k=p.k, t=p.t,
                                            bank=int(keep.sum()), test=len(test_y), **acc))
        tracking.finish(tracker, record)
    return record
