"""Reliability, third pass: one writer per run directory (RUN/.lock), writes that fail on a full disk in one
sentence and resume, bounded numbers and messages, hostile weight files, ``pipe:`` only when asked, and
runs that write the same files twice."""

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cliutil import error_line, run
from leoclr_cli.config import PretrainProtocol, load_protocol, protocol_json
from leoclr_cli.core import atomic, preempt
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core.nets import build_backbone
from leoclr_cli.core.rundir import RunDir
from leoclr_cli.core.tensorfile import save_tensors
from leoclr_cli.errors import Preempted, UserError

TINY = ["--method", "mocov2", "--arch", "resnet18", "--batch-size", "16", "--device", "cpu", "--quiet",
        "--threads", "1", "--set", "augment.size=16", "--set", "augment.blur=false",
        "--set", "augment.normalize=builtin", "--set", "method.queue_size=16", "--set", "model.dim=8",
        "--set", "data.builtin_train=64"]


def hold_lock(run_dir: Path, pid: int = 424242):
    """Lock ``run_dir`` as another writer would (an open file description of our own), naming ``pid``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid} 2030-01-01T00:00:00+00:00\n".encode())
    return fd


def records(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_naming_the_pid(tmp_path, capsys):
    out = tmp_path / "run"
    fd = hold_lock(out)
    try:
        code, _, err = run(["pretrain", *TINY, "--epochs", "1", "--out", str(out)], capsys)
    finally:
        os.close(fd)
    line = error_line(code, err)
    assert f"run directory {out} is in use by process 424242 (started 2030-01-01T00:00:00+00:00)" in line
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written


def test_force_refuses_while_a_nested_run_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["pretrain", *TINY, "--epochs", "1", "--out", str(out)], capsys)
    assert code in (0, None), err
    fd = hold_lock(out / "linear-eval", 777)
    try:
        code, _, err = run(["pretrain", *TINY, "--epochs", "1", "--out", str(out), "--force"], capsys)
    finally:
        os.close(fd)
    assert "run directory" in error_line(code, err) and "in use by process 777" in err
    assert (out / "linear-eval" / ".lock").is_file() and (out / "backbone.safetensors").is_file()
    assert not (out / ".lock").exists()  # released (and removed) when the command ended


def test_a_live_writers_temporaries_are_kept(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        live = tmp_path / f".state_e0001.safetensors.{child.pid}.abcd1234.tmp"
        gone = tmp_path / f".state_e0001.safetensors.{dead.pid}.abcd1234.tmp"
        mine = tmp_path / f".metrics.jsonl.{os.getpid()}.abcd1234.tmp"
        for path in (live, gone, mine):
            path.write_bytes(b"partial")
        atomic.remove_temporaries(tmp_path)
        assert live.exists() and not gone.exists() and not mine.exists()
    finally:
        child.kill()
        child.wait()


def cli_process(argv, env, wait_for=None):
    """``leoclr ARGV`` in a fresh interpreter; ``wait_for``: imported (the runners too), it starts once that file
    exists."""
    wait = f"while not os.path.exists({str(wait_for)!r}): time.sleep(0.01)\n" if wait_for else ""
    # the CLI imports its runners lazily: import them before waiting, so the second is ready at once
    code = (f"import os, time\nimport leoclr_cli.workflows.pretrain\nfrom leoclr_cli.cli import main\n"
            f"{wait}main({argv!r})")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def race(argv, lock: Path):
    """Start ``leoclr ARGV`` twice, the second once the first holds ``lock``; their (rc, stderr, pid)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    second = cli_process(argv, env, wait_for=lock)
    time.sleep(1)  # the second imports first, so it is ready when the first has locked
    first = cli_process(argv, env)
    _, err2 = second.communicate(timeout=600)
    _, err1 = first.communicate(timeout=600)
    return (first.returncode, err1, first.pid), (second.returncode, err2.strip(), second.pid)


def test_two_runs_into_one_out_and_two_resumes_at_once(tmp_path):
    out = tmp_path / "run"
    argv = ["pretrain", *TINY, "--epochs", "3", "--set", "checkpoint_every=1", "--set", "keep_checkpoints=3",
            "--out", str(out)]
    (rc1, err1, pid1), (rc2, err2, _) = race(argv, out / ".lock")
    assert rc1 == 0, err1
    assert rc2 == 2 and err2.startswith(f"error: run directory {out} is in use by process {pid1} (started "), err2
    assert [m["epoch"] for m in records(out)] == [1, 2, 3]

    # back to the state after epoch 1, then two --resume auto at once: one continues, the other is refused
    for name in ("state_e0002.safetensors", "state_e0003.safetensors"):
        (out / "checkpoints" / name).unlink(missing_ok=True)
    assert ckpt.latest_state(out).name == "state_e0001.safetensors"
    (rc1, err1, pid1), (rc2, err2, _) = race(argv + ["--resume", "auto"], out / ".lock")
    assert rc1 == 0, err1
    assert rc2 == 2 and f"is in use by process {pid1}" in err2, err2
    assert [m["epoch"] for m in records(out)] == [1, 2, 3]


def test_resume_lists_every_epoch_once(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pretrain", *TINY, "--epochs", "2", "--set", "checkpoint_every=1", "--out", str(out)]
    assert run(argv, capsys)[0] in (0, None)
    straight = records(out)
    # what two writers left before the lock: every epoch twice, and the state after epoch 2 gone
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], lines[0], lines[1], lines[1]]) + "\n")
    (out / "checkpoints" / "state_e0002.safetensors").unlink()
    assert run(argv + ["--resume", "auto"], capsys)[0] in (0, None)
    again = records(out)
    assert [m["epoch"] for m in again] == [1, 2]
    assert again[0] == straight[0] and again[1]["loss"] == straight[1]["loss"]


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_while_appending_metrics_is_one_sentence_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["pretrain", *TINY, "--epochs", "2", "--set", "checkpoint_every=1", "--out", str(out)]
    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            real_write(fd, bytes(data)[:7])  # part of the line reaches the disk before it fills up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(atomic.os, "write", full)
    code, _, err = run(argv, capsys)
    line = error_line(code, err)
    assert f"could not write {out / 'metrics.jsonl'}: No space left on device" in line
    assert (out / "metrics.jsonl").read_text() == ""  # the half line was cut off
    monkeypatch.setattr(atomic.os, "write", real_write)
    code, _, err = run(argv + ["--resume", "auto"], capsys)
    assert code in (0, None), err
    assert [m["epoch"] for m in records(out)] == [1, 2]


def test_a_tracker_that_cannot_write_is_one_sentence(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch.utils.tensorboard")
    from leoclr_cli.core import tracking

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run" / "tensorboard" / "events"))

    monkeypatch.setattr(tracking.TensorBoard, "rows", read_only)
    code, _, err = run(["pretrain", *TINY, "--epochs", "1", "--set", "log.tensorboard=true",
                        "--out", str(tmp_path / "run")], capsys)
    assert "Read-only file system" in error_line(code, err)


def _mounted_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def comparable(run_dir: Path):
    """The files of a finished run that a resume must reproduce byte for byte (metrics without wall times)."""
    files = {name: (run_dir / name).read_bytes() for name in ("backbone.safetensors", "protocol.yaml")}
    files["state"] = ckpt.latest_state(run_dir).read_bytes()
    files["metrics"] = [{k: v for k, v in m.items() if k not in ("samples_per_s", "time_s")} for m in records(run_dir)]
    return files


def test_a_3mb_tmpfs_run_exits_2_and_resumes_identical(tmp_path, capsys):
    mnt = tmp_path / "mnt"
    if not _mounted_tmpfs(mnt, "3m"):
        pytest.skip("needs root and mount -t tmpfs (the monkeypatched full-disk test above always runs)")
    try:
        argv = ["pretrain", *TINY, "--epochs", "2", "--set", "checkpoint_every=1"]
        assert run(argv + ["--out", str(tmp_path / "straight")], capsys)[0] in (0, None)
        straight = comparable(tmp_path / "straight")
        for free in (3 << 20, 600):  # the disk fills at the first checkpoint; at protocol.yaml or env.json
            out = mnt / f"run{free}"
            filler = mnt / "filler"
            filler.write_bytes(b"\0" * max(0, (3 << 20) - free - 64 * 1024))
            code, _, err = run(argv + ["--out", str(out)], capsys)
            line = error_line(code, err)
            assert "could not write" in line and "No space left on device" in line, line
            subprocess.run(["mount", "-o", "remount,size=400m", str(mnt)], check=True)
            filler.unlink()
            code, _, err = run(argv + ["--out", str(out), "--resume", "auto"], capsys)
            assert code in (0, None), err
            assert comparable(out) == straight
            shutil.rmtree(out)
            subprocess.run(["mount", "-o", "remount,size=3m", str(mnt)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("args, needle", [
    (["--set", "seed=-1"], "field 'seed': Input should be greater than or equal to 0"),
    (["--set", f"seed={2**32}"], "field 'seed': Input should be less than or equal to 4294967295"),
    (["--set", "data.builtin_train=10000000000"], "field 'data.builtin_train': 10000000000 images need 149.0 GiB"),
    (["--threads", "100000"], "threads 100000 is more than 4 per CPU core"),
    (["--set", "optim.weight_decay=1e308"], "field 'optim.weight_decay': must be at most 1e+09"),
    (["--set", "optim.lr=.inf"], "field 'optim.lr': Input should be a finite number"),
])
def test_numbers_out_of_bounds_are_refused_before_the_run(tmp_path, capsys, args, needle):
    argv = ["pretrain", *TINY, "--epochs", "1", "--out", str(tmp_path / "run"), *args]
    assert needle in error_line(*run(argv, capsys)[::2])
    assert not (tmp_path / "run").exists()


BOMB = ("name: [&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], "
        "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], "
        "&g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]]\n")


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(UserError, match="its aliases expand to more than 100000 values"):
        load_protocol("pretrain", path)
    with pytest.raises(UserError, match="--set 'name': the value is refused"):
        load_protocol("pretrain", overrides=__import__("leoclr_cli.config", fromlist=["parse_set"]).parse_set(
            ["name=" + BOMB.split(": ", 1)[1]]))


def test_a_validation_message_shows_an_excerpt_only(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"name": [list(range(1000))] * 50}))
    with pytest.raises(UserError) as e:
        load_protocol("pretrain", path)
    assert len(str(e.value)) < 300 and "field 'name'" in str(e.value)


# --------------------------------------------------------------------------- weight files


def raw_safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def backbone_with(path: Path, change=None, **meta) -> Path:
    torch.manual_seed(0)
    state = {k: v for k, v in build_backbone("resnet18").state_dict().items() if not k.startswith("fc.")}
    if change:
        change(state)
    p = PretrainProtocol.model_validate({"model": {"arch": "resnet18"}, "augment": {"size": 32}})
    save_tensors(path, state, {"kind": "backbone", "arch": "resnet18", "cifar_stem": "false", "method": "leoclr",
                               "epoch": "1", "protocol": protocol_json(p), **meta})
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda d: raw_safetensors(d / "deep.safetensors", b"[" * 200_000 + b"]" * 200_000),
     "its header is not a JSON object"),
    (lambda d: raw_safetensors(d / "offsets.safetensors",
                               b'{"w":{"dtype":"F32","shape":[1],"data_offsets":{"a":0}}}', b"\0" * 4),
     "'w' has data_offsets that are not two integers"),
    (lambda d: backbone_with(d / "proto.safetensors", protocol="{not json"), "'protocol' is not JSON"),
    (lambda d: backbone_with(d / "epoch.safetensors", epoch="-1e999"), "'epoch' is '-1e999', not a non-negative"),
    (lambda d: backbone_with(d / "schema.safetensors", protocol=json.dumps({"kind": "pretrain", "seed": -5})),
     "'protocol' is not a valid pretrain protocol"),
    (lambda d: backbone_with(d / "int.safetensors", lambda s: s.update({"conv1.weight": s["conv1.weight"].long()})),
     "'conv1.weight' is int64, a weight must be float16, bfloat16, float32 or float64"),
    (lambda d: backbone_with(d / "bool.safetensors", lambda s: s.update({"conv1.weight": s["conv1.weight"] > 0})),
     "'conv1.weight' is bool"),
    (lambda d: backbone_with(d / "complex.safetensors",
                             lambda s: s.update({"conv1.weight": s["conv1.weight"].to(torch.complex64)})),
     "'conv1.weight' is complex64"),
    (lambda d: backbone_with(d / "nan.safetensors", lambda s: s["layer1.0.conv1.weight"].view(-1).fill_(float("nan"))),
     "'layer1.0.conv1.weight' holds NaN values"),
])
def test_hostile_backbones_are_one_sentence_before_any_work(tmp_path, capsys, make, needle):
    path = make(tmp_path)
    code, _, err = run(["linear-eval", str(path), "--out", str(tmp_path / "lin"), "--epochs", "1", "--threads", "1",
                        "--set", "data.builtin_train=64", "--set", "data.builtin_test=32", "--device", "cpu"], capsys)
    assert needle in error_line(code, err)
    assert not (tmp_path / "lin").exists()


def test_a_pth_whose_tensor_is_an_int_is_refused_naming_the_key(tmp_path, capsys):
    state = {f"module.encoder_q.{k}": v for k, v in build_backbone("resnet18").state_dict().items()}
    state["module.encoder_q.conv1.weight"] = 3
    torch.save({"state_dict": state, "arch": "resnet18"}, tmp_path / "moco.pth.tar")
    code, _, err = run(["import", str(tmp_path / "moco.pth.tar"), "--out", str(tmp_path / "b.safetensors")], capsys)
    assert "'module.encoder_q.conv1.weight' holds a Python int, not a tensor" in error_line(code, err)


def test_import_refuses_a_complex_weight(tmp_path, capsys):
    state = dict(build_backbone("resnet18").state_dict())
    state["conv1.weight"] = state["conv1.weight"].to(torch.complex64)
    torch.save(state, tmp_path / "c.pth")
    code, _, err = run(["import", str(tmp_path / "c.pth"), "--arch", "resnet18",
                        "--out", str(tmp_path / "b.safetensors")], capsys)
    assert "'conv1.weight' is complex64" in error_line(code, err)
    assert not (tmp_path / "b.safetensors").exists()


# --------------------------------------------------------------------------- pipe:, knn, reproducibility


def test_a_pipe_from_a_protocol_file_alone_does_not_run(tmp_path, capsys):
    mark = tmp_path / "ran"
    protocol = tmp_path / "p.yaml"
    protocol.write_text(yaml.safe_dump({"data": {"source": "webdataset", "root": f"pipe:touch {mark}",
                                                 "shard_samples": 64}}))
    code, _, err = run(["pretrain", "-p", str(protocol), *TINY, "--epochs", "1", "--out", str(tmp_path / "r")], capsys)
    assert "names a 'pipe:' shard, which runs a shell command" in error_line(code, err)
    assert not mark.exists()
    from leoclr_cli.data.shards import ShardSource
    from leoclr_cli.options import pipe_allowed

    assert ShardSource("pipe:cat x.tar", 4, allow_pipe=True).urls == ["pipe:cat x.tar"]
    assert pipe_allowed(False, "pipe:cat x.tar", None) and pipe_allowed(True, None, None)
    assert pipe_allowed(False, None, ["data.root=pipe:cat x"]) and not pipe_allowed(False, None, ["seed=1"])


def test_a_stop_message_suggests_resume_only_where_the_command_has_it():
    def stopped(resumable):
        with preempt.preemptible(), preempt.resumable(resumable):
            preempt._received = 15
            with pytest.raises(Preempted) as e:
                preempt.check("feature extraction")
        return str(e.value)

    assert "--resume" not in stopped(False)
    assert "--resume auto" in stopped(True)


def test_two_identical_linear_evals_write_equal_files_with_one_mode(random_backbone, tmp_path):
    """In two processes (NumPy's and Python's unseeded RNG states differ only between processes, and every
    state file holds them)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [cli_process(["linear-eval", str(random_backbone), "--out", str(out), "--epochs", "2", "--threads", "1",
                          "--set", "data.builtin_train=64", "--set", "data.builtin_test=32", "--batch-size", "16",
                          "--device", "cpu", "--quiet", "--train-augment", "random-resized-crop"], env)
             for out in runs]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file())
    assert any(f.parent.name == "checkpoints" for f in files)
    for rel in files:
        if rel.suffix == ".safetensors":
            assert (runs[0] / rel).read_bytes() == (runs[1] / rel).read_bytes(), rel
    modes = {(r / rel).stat().st_mode & 0o777 for r in runs for rel in files}
    assert modes == {atomic.file_mode()}
