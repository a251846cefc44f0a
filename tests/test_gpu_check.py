"""tools/gpu-check --dry-run on this machine, reusing this environment: it writes gpu-check.json and
gpu-check.md; without CUDA every CUDA row says "not run" with the reason, every CUDA test is reported
skipped with its reason, and the CPU's tiny bench rows are measured beside them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CUDA_ROWS = ("cuda_tests", "peak_r50_b64", "train_leoclr", "train_mocov2", "train_cost_ratio", "train_peak", "gpu_util",
             "gpu_views_vs_loader", "e2e_tensor")
# the CUDA tier, by what each test file checks (the list)
TIER = ("test_cuda_amp", "test_cuda_views", "test_cuda_speed_paths", "test_cuda_distributed", "test_cuda_checkpoint",
        "test_cuda_detectron2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only report; on a GPU run tools/gpu-check itself")
def test_dry_run_on_a_cpu_marks_the_cuda_rows_not_run(tmp_path):
    out = tmp_path / "gc"
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu-check"), "--dry-run", "--python", sys.executable,
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads((out / "gpu-check.json").read_text())
    rows = {r["key"]: r for r in data["rows"]}
    for key in CUDA_ROWS:
        assert rows[key]["status"] == "not run" and rows[key]["value"] is None, key
        assert rows[key]["reason"].startswith("CUDA not available"), key
    assert data["parts"]["install"]["status"] == "not run" and data["parts"]["torch"]["cuda_available"] is False
    # pytest -m cuda: every test of the tier reported, each skipped with its reason, none passed off as run
    tests = data["tests"]
    assert {t["test"].split("::")[0].split(".")[-1] for t in tests} == set(TIER)
    assert len(tests) >= 19 and all(t["outcome"] == "skipped" for t in tests)
    assert all(t["reason"].startswith(("CUDA not available", "Detectron2 is not installed")) for t in tests)
    # the CPU's tiny bench, measured beside the CUDA rows and labelled as a dry run
    ratio = rows["train_cost_ratio_cpu"]
    assert ratio["status"] == "measured" and ratio["value"] > 0 and "dry run" in ratio["what"]
    assert ratio["spread"][0] <= ratio["value"] <= ratio["spread"][1]
    assert data["parts"]["bench"]["complete"] is True
    table = (out / "gpu-check.md").read_text().splitlines()
    assert table[0] == "| what | ours | on | paper (3 A100, 200 epochs) |" and len(table) == 2 + len(data["rows"])
    assert "1.19x (81 h / 68 h, end to end)" in (out / "gpu-check.md").read_text()
    assert "CUDA: not available" in run.stdout
