"""Faults a new user meets outside the training loop: a corrupt image with DataLoader workers
alive, the main process killed under its workers, SIGTERM during evaluation commands, ``--out``
where no directory can be made, a backbone that is not its run's, and the wording of refusals."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image

from cliutil import error_line, run
from fakedata import imagefolder_class, make_imagefolder
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.errors import EXIT_PREEMPTED
from leoclr_cli.core.nets import build_backbone
from leoclr_cli.config import PretrainProtocol, protocol_json, write_protocol

TINY = ["--method", "mocov2", "--arch", "resnet18", "--batch-size", "4", "--device", "cpu", "--quiet",
        "--set", "augment.size=16", "--set", "augment.blur=false", "--set", "augment.normalize=builtin",
        "--set", "method.queue_size=4", "--set", "model.dim=8", "--set", "model.bn_splits=2"]


def tagged_env():
    """An environment whose token every process of the command inherits (workers included)."""
    token = uuid.uuid4().hex
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LEOCLR_TEST_TOKEN": token}, token


def alive_with(token):
    """Pids of the live (not zombie) processes carrying ``token`` in their environment."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"LEOCLR_TEST_TOKEN={token}".encode() not in (proc / "environ").read_bytes():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def kill_all(token):
    for pid in alive_with(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cli(argv, env, prelude=""):
    """``leoclr ARGV`` in a fresh interpreter, after ``prelude`` (Python run first)."""
    code = f"{prelude}\nfrom leoclr_cli.cli import main\nmain({argv!r})"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


# --------------------------------------------------------------------------- workers


def test_a_corrupt_jpeg_with_workers_ends_the_run_at_once(tmp_path):
    """The error raised while workers are alive ends the process with its sentence and exit 2. The
    garbage collector is off, as it may be at any exit: the traceback's reference cycle then keeps
    the loader's workers alive into interpreter exit, where they used to be joined for ever."""
    root = make_imagefolder(tmp_path / "data", classes=2, per_class=4, size=20, splits=("train",))
    cut = root / "train" / imagefolder_class(1) / f"{imagefolder_class(1)}_2.JPEG"
    Image.effect_noise((20, 20), 64).convert("RGB").save(cut, format="JPEG")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    env, token = tagged_env()
    out = tmp_path / "r"
    proc = cli(["pretrain", "--source", "imagefolder", "--data", str(root), *TINY, "--epochs", "1", "--workers", "2",
                "--out", str(out)], env, prelude="import gc; gc.disable()")
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the run did not exit within 120 s of the bad image")
    finally:
        leftover = alive_with(token)
        kill_all(token)
    assert "could not be decoded" in error_line(proc.returncode, err) and str(cut) in err
    assert leftover == []  # workers reaped
    assert not out.exists()  # it failed before its first step: nothing to resume, nothing left


def test_workers_die_within_a_second_of_their_parent(tmp_path):
    env, token = tagged_env()
    proc = cli(["pretrain", *TINY, "--epochs", "50", "--workers", "2", "--set", "data.builtin_train=64",
                "--set", "data.builtin_test=16", "--out", str(tmp_path / "r")], env)
    try:
        t0 = time.monotonic()
        while len(alive_with(token)) < 3:  # the main process and its two workers
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - t0 < 300, "the workers never started"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 1.0
        while alive_with(token) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert alive_with(token) == []
    finally:
        kill_all(token)


# --------------------------------------------------------------------------- SIGTERM outside pretraining

SIGNAL_AT_FIRST_CALL = """
import os, signal
import leoclr_cli.evaluate.{module} as m
real = m.{name}
def signalled(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
m.{name} = signalled
"""


def signal_at_call(target, n):
    """A prelude for :func:`cli`: SIGTERM to the process at the ``n``-th call of ``target``
    ('module:name' or 'module:Class.method')."""
    module, attr = target.split(":")
    owner, _, name = attr.rpartition(".")
    return f"""
import importlib, os, signal
owner = importlib.import_module({module!r})
for part in {owner.split(".") if owner else []!r}:
    owner = getattr(owner, part)
real, calls = getattr(owner, {name!r}), [0]
def signalled(*a, **k):
    calls[0] += 1
    if calls[0] == {n}:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
setattr(owner, {name!r}, signalled)
"""


def test_sigterm_during_knn_feature_extraction_stops_with_75(random_backbone, tmp_path):
    env, _ = tagged_env()
    out = tmp_path / "knn"
    proc = cli(["knn", str(random_backbone), "--out", str(out), "--device", "cpu"], env,
               prelude=SIGNAL_AT_FIRST_CALL.format(module="knn_run", name="extract"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert err.strip().splitlines()[-1].startswith("stopped: SIGTERM during feature extraction")
    assert not out.exists()  # nothing to resume from: the same command redoes it without --force


def test_sigterm_during_linear_eval_testing_checkpoints_and_resumes(random_backbone, tmp_path):
    """The epoch-end test evaluation stops within one batch, with the epoch's training saved."""
    env, _ = tagged_env()
    out = tmp_path / "lin"
    args = ["linear-eval", str(random_backbone), "--out", str(out), "--device", "cpu", "--epochs", "2",
            "--batch-size", "20", "--train-augment", "none", "--quiet"]
    proc = cli(args, env, prelude=SIGNAL_AT_FIRST_CALL.format(module="linear", name="evaluate_logits"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "stopped: SIGTERM at epoch 1, step 5" in err  # 100 images, batch 20
    assert [s.name for s in ckpt.list_states(out)] == ["state_e0000_s000005.safetensors"]
    resumed = subprocess.run([sys.executable, "-m", "leoclr_cli", *args, "--resume", "auto"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run([sys.executable, "-m", "leoclr_cli", *args[:3], str(tmp_path / "straight"), *args[4:]],
                              env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    got, want = (json.loads((d / "result.json").read_text()) for d in (out, tmp_path / "straight"))
    assert (got["top1"], got["top1_test_best"], got["top1_last"]) == (want["top1"], want["top1_test_best"],
                                                                     want["top1_last"])
    assert ckpt.load_tensors(out / "linear.safetensors")[0]["fc.weight"].equal(
        ckpt.load_tensors(tmp_path / "straight" / "linear.safetensors")[0]["fc.weight"])


# --------------------------------------------------------------------------- --out, run directories


@pytest.mark.parametrize("command", ["pretrain", "knn"])
def test_out_under_a_file_is_one_sentence(random_backbone, tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    argv = ["pretrain", *TINY, "--epochs", "1", "--set", "data.builtin_train=16", "--set", "data.builtin_test=16"] \
        if command == "pretrain" else ["knn", str(random_backbone), "--device", "cpu"]
    line = error_line(*run([*argv, "--out", str(blocker / "run")], capsys)[::2])
    assert str(blocker / "run") in line and "cannot be created" in line
    line = error_line(*run([*argv, "--out", str(blocker)], capsys)[::2])
    assert str(blocker) in line and "is a file" in line
    assert blocker.read_text() == "not a directory"


def run_dir_of(tmp_path, arch="resnet18", cifar_stem=False, size=32, builtin_test=20):
    """A pretraining run directory: protocol.yaml (resnet18, 32 px, builtin data) and a backbone
    with the given arch, stem and size in its header."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = {"builtin_train": 24, "builtin_test": builtin_test}
    mine = PretrainProtocol.model_validate({"augment": {"size": 32, "normalize": "builtin"},
                                            "model": {"arch": "resnet18"}, "data": data})
    write_protocol(mine, run_dir / "protocol.yaml")
    theirs = PretrainProtocol.model_validate({"augment": {"size": size, "normalize": "builtin"},
                                              "model": {"arch": arch, "cifar_stem": cifar_stem},
                                              "data": {"builtin_train": 4000, "builtin_test": 1000}})
    torch.manual_seed(0)
    ckpt.save_backbone(run_dir / "backbone.safetensors", build_backbone(arch, cifar_stem=cifar_stem), arch=arch,
                       cifar_stem=cifar_stem, method="leoclr", epoch=1, protocol_json=protocol_json(theirs))
    return run_dir


@pytest.mark.parametrize("field, kw", [("model.arch", {"arch": "resnet34"}), ("model.cifar_stem", {"cifar_stem": True}),
                                       ("augment.size", {"size": 224})])
@pytest.mark.parametrize("command", ["knn", "linear-eval"])
def test_a_backbone_that_is_not_its_runs_is_refused(tmp_path, capsys, field, kw, command):
    run_dir = run_dir_of(tmp_path, **kw)
    line = error_line(*run([command, str(run_dir), "--device", "cpu"], capsys)[::2])
    assert f"its {field} is" in line and str(run_dir) in line
    assert sorted(p.name for p in run_dir.iterdir()) == ["backbone.safetensors", "protocol.yaml"]


def test_evaluation_defaults_come_from_the_runs_protocol(tmp_path, capsys):
    run_dir = run_dir_of(tmp_path, builtin_test=20)  # the header says 1000 test images
    code, _, err = run(["knn", str(run_dir), "--device", "cpu"], capsys)
    assert code in (0, None), err
    assert json.loads((run_dir / "knn" / "result.json").read_text())["test"] == 20


# --------------------------------------------------------------------------- messages


def test_one_message_per_kind_of_damage_from_every_reader(random_backbone, tmp_path, capsys):
    good = random_backbone.read_bytes()
    n = int.from_bytes(good[:8], "little")
    cases = {"empty": b"", "short": good[:5], "in-header": good[: 8 + n // 2], "in-tensors": good[: len(good) // 2],
             "pickle": b"\x80\x02}q\x00." + b"\0" * 64}
    for name, data in cases.items():
        path = tmp_path / name / "backbone.safetensors"
        path.parent.mkdir()
        path.write_bytes(data)
        lines = {error_line(*run(argv, capsys)[::2]) for argv in (["info", str(path)], ["knn", str(path)],
                                                                   ["knn", str(path.parent)])}
        assert len(lines) == 1, (name, lines)  # the same sentence whichever command reads it
        line = lines.pop()
        assert str(path) in line and "claims 0" not in line
        assert ("is empty" if name == "empty" else "not a readable" if name == "pickle" else "is truncated") in line
        assert not (path.parent / "knn").exists()
