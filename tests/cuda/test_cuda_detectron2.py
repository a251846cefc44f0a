"""Detectron2's Faster R-CNN R50-C4 on CUDA: two iterations from an exported backbone on a tiny VOC copy,
then AP computed."""

import json

import pytest
import torch

from cliutil import run
from leoclr_cli.detection import detectron2_backend as d2b
from test_detection import TINY, check_run, coco_root, needs_d2, r50, voc_root  # noqa: F401 (fixtures)

ON_CUDA = [a if a != "cpu" else "cuda" for a in TINY]


@pytest.mark.cuda
@needs_d2
def test_detectron2_r50c4_trains_two_iterations_on_cuda_and_computes_ap(r50, voc_root, tmp_path, capsys,
                                                                        monkeypatch):
    assert "--device" in ON_CUDA and "cuda" in ON_CUDA and "cpu" not in ON_CUDA
    devices = []
    worker = d2b.trial_worker

    def spy(spec):  # one GPU: Detectron2's launch runs the trial in this process
        devices.append(spec["device"])
        return worker(spec)

    monkeypatch.setattr(d2b, "trial_worker", spy)
    torch.cuda.reset_peak_memory_stats()
    out = tmp_path / "voc"
    code, text, err = run(["detect", "voc", str(r50), "--data", str(voc_root), "--out", str(out), "--backend",
                           "detectron2", *ON_CUDA], capsys)
    assert code in (0, None), err
    result = check_run(out, "voc", "detectron2")  # AP, AP50, AP75 in [0, 100], 2 iterations' metrics
    print(json.dumps({k: result[k] for k in ("AP", "AP50", "AP75")}))
    assert "AP50" in text
    assert devices == ["cuda"] and torch.cuda.max_memory_allocated() > 0  # Detectron2 really ran on the GPU
