"""``python -m leoclr_cli pretrain`` killed for real: SIGKILL at random step boundaries and in
between, then ``--resume auto``, ends bit-identical (weights, queue, optimizer, RNGs, metrics) to
the uninterrupted run; SIGTERM stops at a step boundary with exit status 75 and a resumable
checkpoint; a second signal stops at once without leaving a damaged checkpoint."""

import filecmp
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.errors import EXIT_PREEMPTED

STEPS, EPOCHS = 4, 2
ARGS = ["pretrain", "--method", "mocov2", "--arch", "resnet18", "--batch-size", "8", "--epochs", str(EPOCHS),
        "--device", "cpu", "--quiet", "--checkpoint-every-steps", "1",
        "--set", "augment.size=16", "--set", "augment.blur=false", "--set", "augment.normalize=builtin",
        "--set", "data.builtin_train=32", "--set", "data.builtin_test=16", "--set", "method.queue_size=24",
        "--set", "model.dim=8", "--set", "model.bn_splits=2", "--set", "keep_checkpoints=3",
        "--set", "deterministic=true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(run_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "leoclr_cli", *ARGS, "--out", str(run_dir), *extra], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def position(run_dir):
    """Global step of the newest checkpoint (-1: none yet)."""
    last = ckpt.latest_state(run_dir)
    if last is None:
        return -1
    e, s = re.fullmatch(r"state_e(\d+)(?:_s(\d+))?\.safetensors", last.name).groups()
    return int(e) * STEPS + int(s or 0)


def wait_for(proc, run_dir, step, timeout=300):
    """Poll until a checkpoint at ``step`` or later exists; False if the process ended first."""
    t0 = time.monotonic()
    while position(run_dir) < step:
        if proc.poll() is not None:
            return False
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.02)
    return True


def finished(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def outcome(run_dir):
    state = ckpt.load_tensors(ckpt.state_path(run_dir, EPOCHS))[0]
    backbone = ckpt.load_tensors(run_dir / "backbone.safetensors")[0]
    metrics = [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "samples_per_s")}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return state, backbone, metrics


def assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        assert x.keys() == y.keys()
        assert [k for k in x if not torch.equal(x[k], y[k])] == []
    assert a[2] == b[2] and [m["epoch"] for m in a[2]] == list(range(1, EPOCHS + 1))


@pytest.fixture(scope="module")
def straight_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "straight"
    finished(start(run))
    return run


@pytest.fixture(scope="module")
def straight(straight_dir):
    return outcome(straight_dir)


def test_sigkill_at_random_points_then_resume_is_bit_identical(straight, tmp_path):
    seed = int(os.environ.get("LEOCLR_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    run = tmp_path / "killed"
    kills = sorted(rng.sample(range(1, EPOCHS * STEPS - 1), 3))
    proc, killed_at = start(run), []
    for target in kills:
        if not wait_for(proc, run, target):
            break
        time.sleep(rng.uniform(0, 0.5))  # anywhere in the next step, its checkpoint write included
        proc.kill()
        proc.wait()
        killed_at.append(position(run))
        # what a kill during the backbone's (or any file's) write leaves behind
        (run / f".backbone.safetensors.k{len(killed_at)}ll3d0_.tmp").write_bytes(b"\0" * 64)
        proc = start(run, "--resume", "auto")
    finished(proc)
    assert len(killed_at) >= 2, f"seed {seed}: the run ended before the kills ({killed_at})"
    assert_same(outcome(run), straight)
    assert not list(run.glob(".*.tmp")) and not list((run / "checkpoints").glob(".*.tmp"))


def test_requeue_of_a_run_killed_before_its_first_checkpoint(straight, tmp_path):
    """``--resume auto`` on a run directory without a checkpoint starts the run over when its
    protocol.yaml is this protocol, and refuses another protocol naming the field."""
    run = tmp_path / "early"
    proc = start(run)
    while not (run / "protocol.yaml").is_file():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert position(run) == -1, "the first checkpoint came before the kill"
    other = subprocess.run([sys.executable, "-m", "leoclr_cli", *ARGS, "--lr", "0.5", "--out", str(run),
                            "--resume", "auto"], env=ENV, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "field 'optim.lr' differs" in other.stderr, other.stderr
    assert other.stderr.strip().count("\n") == 0  # one sentence
    finished(start(run, "--resume", "auto"))
    assert_same(outcome(run), straight)


def test_two_identical_runs_write_identical_bytes(straight_dir, tmp_path):
    """Same protocol and seed on the same machine: the backbone and the final state are ``cmp``-equal
    (the safetensors header is written in one canonical order)."""
    run = tmp_path / "again"
    finished(start(run))
    for name in ("backbone.safetensors", f"checkpoints/state_e{EPOCHS:04d}.safetensors"):
        assert filecmp.cmp(run / name, straight_dir / name, shallow=False), name


def test_sigterm_leaves_a_resumable_checkpoint_and_exit_75(straight, tmp_path):
    run = tmp_path / "term"
    proc = start(run)
    assert wait_for(proc, run, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED == 75, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped: SIGTERM at epoch") and "--resume auto" in line
    stopped_at = position(run)
    assert stopped_at >= 1 and not (run / "backbone.safetensors").exists() and not (run / "result.json").exists()
    finished(start(run, "--resume", "auto"))
    assert_same(outcome(run), straight)


def test_a_second_signal_stops_at_once_and_leaves_no_damaged_checkpoint(tmp_path):
    run = tmp_path / "twice"
    proc = start(run)
    assert wait_for(proc, run, 1)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=300)
    # both arrive before Python runs a handler; it handles them in signal-number order
    assert proc.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM)  # not 75: no final checkpoint
    for state in ckpt.list_states(run):
        ckpt.load_tensors(state)  # every checkpoint left verifies
