"""One detection trial's outputs, written the same way by both backends (run.py's torchvision trials
and detectron2_backend.py's workers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..core import checkpoint as ckpt
from ..core.rundir import write_json

KIND_DETECTOR = "detector"


def finish_trial(spec: dict[str, Any], metrics: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Write one trial's trial-N/model.safetensors and trial-N/result.json (``metrics``: its AP)."""
    trial_dir = Path(spec["trial_dir"])
    ckpt.save_tensors(trial_dir / "model.safetensors", state, {
        "kind": KIND_DETECTOR, "backend": spec["backend"], "dataset": spec["dataset"],
        "classes": json.dumps(spec["classes"]), "seed": str(spec["seed"]), "protocol": spec["protocol_json"]})
    write_json(trial_dir / "result.json", {"seed": spec["seed"], **metrics})
