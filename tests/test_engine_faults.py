"""The engine under faults, with a task small enough to run hundreds of steps in a second:
mid-epoch checkpoints and exact resume, SIGTERM at a step boundary, a NaN at an exact step,
a failed checkpoint write, the task/dataset extra-state hooks and the task's warm-up hook."""

import errno
import json
import os
import signal
import stat

import pytest
import torch
from rich.console import Console

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.core.engine import (Checkpoints, DeviceSpec, Divergence, Engine, Observers, Schedule, Task, cosine_lr,
                                    read_metrics)
from leoclr_cli.errors import EXIT_PREEMPTED, Preempted, UserError

STEPS, EPOCHS = 4, 3  # 16 samples, batch 4


class Toy(Task):
    """A linear classifier with dropout (the global RNG matters) and a counter of its own state."""

    def __init__(self, nan_at=None, signal_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 3)
        self.calls, self.nan_at, self.signal_at = 0, nan_at, signal_at
        self.boxes = torch.zeros(16, 4)  # stands in for e.g. ContrastiveCrop boxes

    def extra_state(self):
        return {"boxes": self.boxes, "calls": self.calls}

    def load_extra_state(self, state):
        self.boxes, self.calls = state["boxes"].clone(), state["calls"]

    def forward(self, x, y):
        self.calls += 1
        self.boxes[self.calls % 16] += x.sum()
        if self.calls == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        loss = torch.nn.functional.cross_entropy(self.fc(torch.nn.functional.dropout(x, 0.3)), y)
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return loss, {"acc": (self.fc(x).argmax(1) == y).float().mean()}


def engine(run_dir, task, epochs=EPOCHS, every_steps=0, keep=100, epoch_end=None, data=None):
    g = torch.Generator().manual_seed(1)
    if data is None:
        data = torch.utils.data.TensorDataset(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, drop_last=True)
    opt = torch.optim.SGD([q for q in task.parameters() if q.requires_grad], lr=0.5, momentum=0.9)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Engine(task, opt, loader, schedule=Schedule(epochs, cosine_lr(0.5, EPOCHS), seed=3),
                  checkpoints=Checkpoints(run_dir, '{"p": 1}', every=1, every_steps=every_steps, keep=keep),
                  device=DeviceSpec(torch.device("cpu")),
                  observers=Observers(quiet=True, console=Console(file=open(os.devnull, "w")), log_every=10,
                                      epoch_end=epoch_end))


def strip(records):
    return [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")} for r in records]


def final(run_dir):
    return ckpt.load_tensors(ckpt.state_path(run_dir, EPOCHS))[0]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    engine(run, Toy(), every_steps=1).run()
    return run


def test_every_step_checkpoint_resumes_bit_identically(straight, tmp_path):
    states = ckpt.list_states(straight)
    assert len(states) == EPOCHS * STEPS  # one per step: mid-epoch ones plus the epoch ends
    assert [s.name for s in states[:5]] == ["state_e0000_s000001.safetensors", "state_e0000_s000002.safetensors",
                                            "state_e0000_s000003.safetensors", "state_e0001.safetensors",
                                            "state_e0001_s000001.safetensors"]
    want, metrics = final(straight), strip(read_metrics(straight / "metrics.jsonl"))
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for state in states[:-1]:
        run = tmp_path / state.stem
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / state.name).write_bytes(state.read_bytes())
        # metrics written after the checkpoint (by the run that was interrupted) must be dropped
        (run / "metrics.jsonl").write_text((straight / "metrics.jsonl").read_text() + '{"epoch": 3, "tor')
        task = Toy()
        engine(run, task, every_steps=1).run(resume=state)
        got = final(run)
        assert [k for k in want if not torch.equal(want[k], got[k])] == [], state.name
        assert strip(read_metrics(run / "metrics.jsonl")) == metrics, state.name
        assert task.calls == EPOCHS * STEPS  # the hook restored the task's own state


def test_sigterm_checkpoints_at_the_step_boundary_and_resume_matches(straight, tmp_path):
    run = tmp_path / "term"
    with pytest.raises(Preempted) as exc:
        engine(run, Toy(signal_at=6)).run()  # no step checkpoints asked for: the signal makes one
    assert exc.value.exit_code == EXIT_PREEMPTED == 75
    assert "SIGTERM at epoch 2, step 2" in str(exc.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    last = ckpt.latest_state(run)
    assert last.name == "state_e0001_s000002.safetensors"
    engine(run, Toy()).run(resume=last)
    want, got = final(straight), final(run)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    assert strip(read_metrics(run / "metrics.jsonl")) == strip(read_metrics(straight / "metrics.jsonl"))


def test_nan_stops_at_the_exact_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(Divergence) as exc:
        engine(run, Toy(nan_at=7), every_steps=2).run()  # global step 7 = epoch 2, step 3
    assert "epoch 2, step 3 of 4 (global step 7)" in str(exc.value)
    last = ckpt.latest_state(run)
    assert last.name == "state_e0001_s000002.safetensors" and str(last) in str(exc.value)
    tensors, _ = ckpt.load_tensors(last)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    run = tmp_path / "full"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.extend([] if stat.S_ISDIR(os.fstat(fd).st_mode) else [fd])
        if len(calls) >= 3:  # the third checkpoint hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(UserError, match="No space left on device") as exc:
        engine(run, Toy(), every_steps=1).run()
    assert "state_e0000_s000003.safetensors" in str(exc.value)
    monkeypatch.undo()
    states = ckpt.list_states(run)
    assert [s.name for s in states] == ["state_e0000_s000001.safetensors", "state_e0000_s000002.safetensors"]
    assert not list((run / "checkpoints").glob(".*"))  # no temporary file left behind
    ckpt.load_tensors(states[-1])  # intact: the checksum verifies


def test_keep_last_n_counts_mid_epoch_states(tmp_path):
    run = tmp_path / "keep"
    engine(run, Toy(), every_steps=1, keep=3).run()
    assert [s.name for s in ckpt.list_states(run)] == ["state_e0002_s000002.safetensors",
                                                       "state_e0002_s000003.safetensors", "state_e0003.safetensors"]


def test_dataset_hook_and_metadata(tmp_path):
    """dataset.state_dict()/load_state_dict() travel with the checkpoint like the task's extra state."""
    run = tmp_path / "ds"
    e = engine(run, Toy(), epochs=1)

    class Stateful(type(e.loader.dataset)):
        def state_dict(self):
            return {"weights": torch.arange(3.0), "name": "v1"}

        def load_state_dict(self, state):
            self.loaded = state

    e.loader.dataset.__class__ = Stateful
    e.run()
    _, meta = ckpt.load_tensors(ckpt.state_path(run, 1))
    assert json.loads(meta["extra"])["dataset"] == {"name": "v1"} and meta["step"] == "0"
    e2 = engine(tmp_path / "ds2", Toy(), epochs=1)
    e2.loader.dataset.__class__ = Stateful
    e2.run(resume=ckpt.state_path(run, 1))
    assert torch.equal(e2.loader.dataset.loaded["weights"], torch.arange(3.0))
    assert e2.loader.dataset.loaded["name"] == "v1"


def test_sigterm_during_the_epoch_end_evaluation_stops_there_and_resume_matches(tmp_path):
    """A signal while the epoch-end hook evaluates (feature extraction, here of 8 batches) stops
    within one of its batches, not after the next training step: the state after the epoch's steps
    is saved, and resuming re-runs the evaluation and ends bit-identical to an uninterrupted run."""
    from leoclr_cli.evaluate.features import extract

    bank = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 6), torch.zeros(16)),
                                       batch_size=2)
    seen = []

    class Signals(torch.nn.Module):
        def __init__(self, at):
            super().__init__()
            self.at = at

        def forward(self, x):
            seen.append(len(x))
            if len(seen) == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            return x

    def hook(at=None):
        return lambda epoch: {"bank": float(extract(Signals(at), bank, torch.device("cpu"))[0].sum())}

    straight = tmp_path / "straight"
    engine(straight, Toy(), epoch_end=hook()).run()
    run = tmp_path / "eval"
    seen.clear()
    with pytest.raises(Preempted, match="SIGTERM at epoch 2, step 4"):
        engine(run, Toy(), epoch_end=hook(at=8 + 2)).run()  # the 2nd batch of epoch 2's evaluation
    assert len(seen) == 8 + 2  # stopped right after the batch during which the signal came
    last = ckpt.latest_state(run)
    assert last.name == "state_e0001_s000004.safetensors"
    engine(run, Toy(), epoch_end=hook()).run(resume=last)
    want, got = final(straight), final(run)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    assert strip(read_metrics(run / "metrics.jsonl")) == strip(read_metrics(straight / "metrics.jsonl"))


class Counted(torch.utils.data.Dataset):
    """``items``, counting the loads."""

    def __init__(self, items):
        self.items, self.loads = items, 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.loads += 1
        return self.items[i]


def test_a_task_without_a_queue_needs_no_warmup(tmp_path):
    """Task's default warm-up takes no batch: a new run loads its epoch's batches and nothing more."""
    g = torch.Generator().manual_seed(1)
    data = Counted(list(zip(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))))
    task = Toy()
    engine(tmp_path / "plain", task, epochs=1, data=data).run()
    assert data.loads == 16 and task.calls == STEPS


def test_the_moco_queue_is_filled_by_warmup_before_the_first_step(tmp_path):
    """queue_init keys: before the first step the engine hands MoCo-v2 epoch 0's batches, and the queue
    holds the key encoder's keys of the first ones, in order (the first step sees the first batch
    again); a resumed run does not warm up again."""
    from leoclr_cli.methods import MoCoV2
    from leoclr_cli.config import MethodConfig, ModelConfig

    def build():
        torch.manual_seed(0)
        return MoCoV2(ModelConfig(arch="resnet18", dim=4, bn_splits=1, shuffle_bn=False),
                      MethodConfig(name="mocov2", queue_size=16, queue_init="keys"))

    g = torch.Generator().manual_seed(2)
    images = torch.randn(16, 2, 3, 16, 16, generator=g)
    data = Counted([([v[0], v[1]], 0) for v in images])
    task, first = build(), {}
    queue0, forward = task.queue.clone(), task.forward

    def spy(views, labels=None):
        if not first:
            first.update(queue=task.queue.clone(), ptr=int(task.queue_ptr), loads=data.loads,
                         keys=torch.cat([task.encode_keys(v) for v in views]))
        return forward(views, labels)

    task.forward = spy
    run = tmp_path / "moco"
    engine(run, task, epochs=1, data=data).run()
    # 8 keys a batch (both crops): two batches fill the queue, then the first step loads its batch
    assert first["loads"] == 2 * 4 + 4 and first["ptr"] == 0
    assert bool((first["queue"] != queue0).any(dim=0).all())
    torch.testing.assert_close(first["queue"][:, :8], first["keys"].T)

    data.loads = 0
    engine(tmp_path / "resumed", build(), epochs=2, data=data).run(resume=ckpt.state_path(run, 1))
    assert data.loads == 16  # epoch 2's batches only
