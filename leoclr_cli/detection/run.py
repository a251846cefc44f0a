"""``leoclr detect voc|coco``: backend choice, the rescale rule, trials, the run directory.

Run directory: ``protocol.yaml``, ``env.json``, ``result.json`` (means over trials), and per trial
``trial-N/`` with ``metrics.jsonl``, ``model.safetensors`` (the final detector) and ``result.json``;
while a trial runs, ``checkpoints/`` holds its newest train state (every ``period`` iterations, after the
last one, at a signal). ``--resume auto`` keeps the finished trials and continues the interrupted one.
Trackers (``log.*``) are per trial, in ``trial-N/``: the torchvision backend's steps and records, and
every trial's AP (``result/...``).
"""

from __future__ import annotations

import re
import shutil
import statistics
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console

from ..config import DetectProtocol, protocol_json
from ..core import tracking
from ..core.engine import resolve_device
from ..core.results import DetectResult, DetectTrialResult
from ..core.rundir import RunDir, command
from ..errors import Preempted, UserError
from .datasets import VOC_CLASSES, coco_paths, read_coco, read_voc
from . import detectron2_backend as d2_backend
from .export import load_detection_backbone
from .metrics import coco_ap, voc_ap, voc_ground_truth
from .torchvision_r50c4 import predict, train_torchvision, trial_period
from .trial import finish_trial

INSTALL_HINT = "install Detectron2 (docs/detection.md) or pass --backend torchvision"


def load_data(p: DetectProtocol) -> dict[str, Any]:
    """Train and test records, class names, and what the COCO metric needs."""
    if p.dataset == "voc":
        train = [r for s in p.voc_train for r in read_voc(Path(p.root), s)]
        test = read_voc(Path(p.root), p.voc_test)
        data = {"train": train, "test": test, "classes": list(VOC_CLASSES), "ann_file": None, "cat_ids": None}
    else:
        train, classes, _ = read_coco(Path(p.root), p.coco_train)
        test, test_classes, cat_ids = read_coco(Path(p.root), p.coco_test)
        if classes != test_classes:
            raise UserError(f"COCO {p.coco_train} and {p.coco_test} have different categories")
        data = {"train": train, "test": test, "classes": classes, "ann_file": str(coco_paths(Path(p.root),
                                                                                            p.coco_test)[1]),
                "cat_ids": cat_ids}
    if p.max_test_images:
        data["test"] = data["test"][: p.max_test_images]
    if not data["test"]:
        raise UserError(f"the {p.dataset} test set is empty")
    return data


def evaluate(spec: dict[str, Any], dets: list[dict[str, Any]]) -> dict[str, Any]:
    if spec["dataset"] == "voc":
        return voc_ap(voc_ground_truth(spec["test"]), dets, len(spec["classes"]))
    return coco_ap(Path(spec["ann_file"]), spec["test"], dets, spec["cat_ids"])


def choose_backend(p: DetectProtocol, console: Console) -> str:
    if p.backend == "torchvision":
        return "torchvision"
    why = d2_backend.import_error()  # looked up on the module: tests stand in a missing Detectron2
    if why is None:
        return "detectron2"
    if p.backend == "detectron2":
        raise UserError(f"--backend detectron2: Detectron2 cannot be imported ({why}); {INSTALL_HINT}")
    console.print(f"Detectron2 is not importable ({why}); using the torchvision R50-C4 backend "
                  "(same model, schedule and augmentation). For Detectron2 see docs/detection.md.", highlight=False)
    return "torchvision"


def gpu_count(p: DetectProtocol, backend: str) -> int:
    visible = torch.cuda.device_count() if p.device != "cpu" and torch.cuda.is_available() else 0
    if p.gpus is not None and p.gpus > max(visible, 1):
        raise UserError(f"--gpus {p.gpus}: only {visible} CUDA device(s) are visible")
    if backend == "torchvision":
        if p.gpus is not None and p.gpus > 1:
            raise UserError("--gpus above 1 needs the detectron2 backend (the torchvision backend uses one device)")
        return 1
    return p.gpus or max(visible, 1)


def rescale_line(p: DetectProtocol, gpus: int, solver: dict[str, Any]) -> str:
    ref = p.solver(p.reference_gpus)
    line = (f"solver for {gpus} GPU{'s' if gpus > 1 else ''}: batch {solver['ims_per_batch']}, "
            f"lr {solver['base_lr']:g}, {solver['max_iter']} iterations, steps {solver['steps']}, "
            f"warm-up {solver['warmup_iters']}")
    if solver["scale"] != 1.0:
        line += (f" (the recipe is for {p.reference_gpus} GPUs: batch {ref['ims_per_batch']}, lr {ref['base_lr']:g}, "
                 f"{ref['max_iter']} iterations; rescaled linearly: x{solver['scale']:g} batch and lr, "
                 f"/{solver['scale']:g} iterations, steps and warm-up)")
    return line


@command
def run_detect(p: DetectProtocol, backbone_path: Path, run_dir: Path, *, resume: Optional[str] = None,
               force: bool = False, quiet: bool = False, console: Optional[Console] = None) -> dict[str, Any]:
    """Train and test ``p.trials`` detectors; writes result.json. ``resume`` (``auto`` or ``run_dir``) keeps
    the finished trials and continues the interrupted one from its checkpoint."""
    console = console or Console(stderr=True)
    state, meta = load_detection_backbone(backbone_path, archs=("resnet50",))
    data = load_data(p)
    backend = choose_backend(p, console)
    gpus = gpu_count(p, backend)
    solver = p.solver(gpus)
    tracking.check(p.log)
    resuming = RunDir(run_dir).reopen(p, resume=resume, force=force, inputs={"backbone": backbone_path})
    console.print(rescale_line(p, gpus, solver), highlight=False)
    pjson = protocol_json(p)
    trials = []
    for t in range(p.trials):
        seed = p.seed + t
        trial_dir = Path(run_dir) / f"trial-{t}"
        trial = RunDir(trial_dir)
        if not (resuming and trial.result.is_file()):  # a finished trial is kept as it is
            spec = {"protocol": p, "protocol_json": pjson, "dataset": p.dataset, "backend": backend, "seed": seed,
                    "trial_dir": str(trial_dir), "solver": solver, "resume": trial.resume_part(resuming), **data}
            start = tracking.resumed_step(spec["resume"], trial_period(p)) if backend == "torchvision" else 0
            with tracking.closing(tracking.open_tracker(p.log, trial_dir, p.model_dump(mode="json"),
                                                        f"detect {p.dataset} trial {t}", start)) as tracker:
                if backend == "detectron2":
                    _detectron2_trial(spec, state, gpus)
                else:
                    _torchvision_trial(spec, state, quiet, console, tracker)
                tracking.finish(tracker, trial.read_result(DetectTrialResult))
        shutil.rmtree(trial.checkpoints, ignore_errors=True)  # finished: model.safetensors is kept
        trials.append(trial.read_result(DetectTrialResult))
        console.print(f"trial {t + 1}/{p.trials} (seed {seed}): AP {trials[-1]['AP']:.2f}, "
                      f"AP50 {trials[-1]['AP50']:.2f}, AP75 {trials[-1]['AP75']:.2f}", highlight=False)
    result: dict[str, Any] = {
        "dataset": p.dataset, "backend": backend, **DetectResult.provenance(backbone_path, meta),
        "trials": p.trials, "gpus": gpus, "solver": solver, "test_images": len(data["test"]),
        "per_trial": [{"seed": tr["seed"], "AP": tr["AP"], "AP50": tr["AP50"], "AP75": tr["AP75"]} for tr in trials],
    }
    for key in ("AP", "AP50", "AP75"):
        values = [tr[key] for tr in trials]
        result[key] = statistics.fmean(values)
        result[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return RunDir(run_dir).write_result(DetectResult(**result))


def _torchvision_trial(spec: dict[str, Any], state: dict[str, torch.Tensor], quiet: bool, console: Console,
                       tracker: Optional[tracking.Tracker]) -> None:
    p = spec["protocol"]
    model, _ = train_torchvision(p, spec["train"], len(spec["classes"]), state, Path(spec["trial_dir"]),
                                 spec["seed"], spec["protocol_json"], quiet, console, resume=spec["resume"],
                                 tracker=tracker)
    dets = predict(model, spec["test"], p, resolve_device(p.device))
    finish_trial(spec, evaluate(spec, dets), model.state_dict())


def _detectron2_trial(spec: dict[str, Any], state: dict[str, torch.Tensor], gpus: int) -> None:
    from detectron2.engine import launch


    device = "cuda" if gpus > 0 and torch.cuda.is_available() and spec["protocol"].device != "cpu" else "cpu"
    spec = {**spec, "backbone_state": state, "device": device}
    try:
        launch(d2_backend.trial_worker, num_gpus_per_machine=gpus if device == "cuda" else 1, dist_url="auto",
               args=(spec,))
    except Exception as e:  # one process per GPU: a worker's Preempted reaches us as its traceback's text
        stopped = re.search(r"leoclr_cli\.errors\.Preempted: (.+)", str(e))
        if stopped is None:
            raise
        raise Preempted(stopped[1].strip()) from None
