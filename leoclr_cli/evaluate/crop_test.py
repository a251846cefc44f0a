"""``leoclr crop-test`` (Table 7): a trained linear classifier under the center-crop and random-crop tests.

The classifier (``linear.safetensors``) and the backbone it was trained on are loaded from a linear-eval
run; the backbone file must be the one the classifier was trained with (its SHA-256 is in the
classifier's header). The test split is scored once with a) Resize(shorter side) + CenterCrop and
``repeats`` times with b) Resize(square) + RandomResizedCrop; the drop is a) - b) in points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..config import CropTestProtocol
from ..core import checkpoint as ckpt
from ..core import preempt
from ..core.engine import resolve_device
from ..core.results import CropTestResult
from ..core.rundir import RunDir, command
from ..data.views import AugmentedDataset, crop_test_transform
from ..errors import UserError
from .features import labelled_split
from .linear import evaluate_logits, load_classifier


def linear_run_defaults(linear_dir: Path) -> dict[str, Any]:
    """crop-test defaults: the data, crop size, resize and normalisation of the linear-eval run."""
    lin = RunDir(linear_dir).read_protocol("linear-eval")
    defaults = {f"data.{k}": v for k, v in lin.data.model_dump().items()}
    defaults.update({"size": lin.transform.size, "resize": lin.transform.resize, **lin.transform.norm_fields(),
                     "device": lin.device, "batch_size": lin.batch_size, "seed": lin.seed})
    return defaults


def find_backbone(linear_dir: Path, meta: dict[str, str], override: Optional[Path]) -> Path:
    """The backbone the classifier was trained on: ``override``, the path in its header, or the pretraining
    run directory the linear-eval directory sits in; checked against the SHA-256 recorded at training."""
    if override is not None:
        candidates = [Path(override).expanduser()]
    else:
        candidates = [Path(meta.get("backbone", "")), RunDir(linear_dir.parent).backbone]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UserError(f"backbone {candidates[0]} named by {RunDir(linear_dir).classifier} does not exist; "
                        "give its location with --backbone")
    want = meta.get("backbone_sha256")
    if want and ckpt.file_sha256(found) != want:
        raise UserError(f"backbone {found} is not the one the classifier in {linear_dir} was trained on "
                        "(its SHA-256 differs)")
    return found


@command(resumable=False)
def run_crop_test(protocol: CropTestProtocol, linear_dir: Path, run_dir: Path, *, backbone: Optional[Path] = None,
                  force: bool = False) -> dict[str, Any]:
    path = RunDir(linear_dir).classifier
    meta = ckpt.read_metadata(path, ckpt.KIND_LINEAR)
    backbone_path = find_backbone(linear_dir, meta, backbone)
    net, bmeta = ckpt.load_backbone(backbone_path)
    model = load_classifier(path, net, bmeta["arch"])  # the feature BN's statistics too, frozen (eval mode)
    num_classes = model.fc.out_features
    test_src = labelled_split(protocol.data, "test")
    if test_src.num_classes != num_classes:
        raise UserError(f"test split '{protocol.data.test_split}' has {test_src.num_classes} classes, the classifier "
                        f"{num_classes}")
    run = RunDir(run_dir)
    run.prepare(protocol, resume=None, force=force)
    device = resolve_device(protocol.device)
    model.to(device)

    def score(mode: str, seed: int) -> dict[str, float]:
        tf = crop_test_transform(mode, protocol.size, protocol.resize, protocol.norm,
                                 interpolation=protocol.interpolation, scale=protocol.random_scale,
                                 ratio=protocol.random_ratio)
        loader = torch.utils.data.DataLoader(AugmentedDataset(test_src, tf, seed), batch_size=protocol.batch_size,
                                             num_workers=protocol.data.num_workers, pin_memory=device.type == "cuda",
                                             worker_init_fn=preempt.worker_init())
        return evaluate_logits(model, loader, device)

    center = score("center", protocol.seed)
    randoms = [score("random", protocol.seed + r) for r in range(protocol.repeats)]
    random_top1 = sum(r["top1"] for r in randoms) / len(randoms)
    random_top5 = sum(r["top5"] for r in randoms) / len(randoms)
    return run.write_result(CropTestResult(
        **CropTestResult.provenance(backbone_path, bmeta), linear_run=str(linear_dir), dataset=protocol.data.source,
        num_classes=num_classes, test_images=len(test_src), repeats=protocol.repeats, center_top1=center["top1"],
        center_top5=center["top5"], random_top1=random_top1, random_top5=random_top5,
        random_top1_each=[r["top1"] for r in randoms], drop=center["top1"] - random_top1))
