"""Run directories: each file name is written in one place (RunDir), and a result writes exactly the keys
it was given."""

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from leoclr_cli.core.results import (FinetuneSweepResult, FromBackbone, KnnResult, LinearResult, PretrainResult,
                                     QuickstartResult)
from leoclr_cli.core.rundir import RunDir

PACKAGE = Path(__file__).resolve().parents[1] / "leoclr_cli"
NAMES = {RunDir.PROTOCOL, RunDir.ENV, RunDir.METRICS, RunDir.CHECKPOINTS, RunDir.RESULT, RunDir.BACKBONE,
         RunDir.BOXES, RunDir.CLASSIFIER, RunDir.DETECTOR, RunDir.GRID, RunDir.SUBSET, RunDir.TRACKING, RunDir.STATES,
         QuickstartResult.file, FinetuneSweepResult.file}
HOMES = {PACKAGE / "core" / "rundir.py", PACKAGE / "core" / "results.py"}


def test_no_run_directory_file_name_is_spelled_outside_rundir():
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path in HOMES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_a_result_writes_the_keys_it_was_given_and_its_kind(tmp_path):
    meta = {"arch": "resnet18", "method": "leoclr", "epoch": "7"}
    knn = KnnResult(**KnnResult.provenance(tmp_path / "b.safetensors", meta), k=200, t=0.1, bank=10, test=5,
                    top1=50.0, top5=90.0)
    written = RunDir(tmp_path).write_result(knn)
    assert written == RunDir(tmp_path).read_result()
    assert written == {"kind": "knn", "backbone": str(tmp_path / "b.safetensors"), "arch": "resnet18",
                       "method": "leoclr", "k": 200, "t": 0.1, "bank": 10, "test": 5, "top1": 50.0, "top5": 90.0}
    assert LinearResult.provenance(Path("b"), meta)["pretrain_epoch"] == 7  # the kinds with pretraining epochs
    other_rank = PretrainResult(method="leoclr", arch="resnet18", epochs=1, rank=1, world_size=2, global_batch=8,
                                lr=0.03)
    assert "final_loss" not in other_rank.record() and other_rank.record()["kind"] == "pretrain"


def test_a_result_refuses_a_missing_or_unknown_key():
    with pytest.raises(ValidationError):
        FromBackbone(backbone="b", arch="resnet18")  # method is written even when None: it must be given
    with pytest.raises(ValidationError):
        KnnResult(backbone="b", arch="a", method=None, k=1, t=0.1, bank=1, test=1, top1=1.0, top5=1.0, extra=1)


def test_env_json_records_argv_and_the_checkout_commit(monkeypatch):
    import subprocess
    import sys

    from leoclr_cli.core import rundir

    monkeypatch.setattr(sys, "argv", ["leoclr", "knn", "runs/x"])
    env = rundir.environment()
    assert env["argv"] == ["leoclr", "knn", "runs/x"]
    root = rundir.Path(rundir.__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert env["git_commit"].split("-")[0] == head and len(head) == 40
    assert rundir.git_commit(root / "leoclr_cli") is None  # not a checkout's root: nothing recorded


def test_a_resume_may_change_the_trackers_and_threads_but_not_what_is_computed(tmp_path):
    from leoclr_cli.config import load_protocol

    run = RunDir(tmp_path / "ft")
    run.prepare(load_protocol("finetune", None, {}), resume=None, force=False)
    watched = load_protocol("finetune", None, {"log.tensorboard": True, "log.artifacts": True, "threads": 2})
    assert run.protocol_difference(watched) is None
    assert run.protocol_difference(load_protocol("finetune", None, {"lr": 0.5})) == "lr"
