"""One detection trial's outputs, written the same way by both backends (run.py's torchvision trials
and detectron2_backend.py's workers)."""

from __future__ import annotations

import json
from typing import Any

import torch

from ..core import checkpoint as ckpt
from ..core.results import DetectTrialResult
from ..core.rundir import RunDir

KIND_DETECTOR = "detector"


def finish_trial(spec: dict[str, Any], metrics: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Write one trial's trial-N/model.safetensors and trial-N/result.json (``metrics``: its AP)."""
    trial = RunDir(spec["trial_dir"])
    ckpt.save_tensors(trial.detector, state, {
        "kind": KIND_DETECTOR, "backend": spec["backend"], "dataset": spec["dataset"],
        "classes": json.dumps(spec["classes"]), "seed": str(spec["seed"]), "protocol": spec["protocol_json"]})
    trial.write_result(DetectTrialResult(seed=spec["seed"], **metrics))
