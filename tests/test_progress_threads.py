"""Progress lines in a log (stderr not a terminal), --quiet, the CPU thread count (--threads, env.json) and the
queue-size checks."""

import io
import json
import re

import pytest
import torch
from rich.console import Console

from cliutil import run
from leoclr_cli.core import progress, threads

TINY = ["--set", "augment.size=32", "--set", "augment.normalize=builtin", "--set", "data.builtin_train=64",
        "--set", "data.builtin_test=32", "--set", "method.queue_size=32", "--set", "model.dim=16",
        "--set", "model.bn_splits=2", "--arch", "resnet18", "--batch-size", "16", "--epochs", "1"]
STEP_LINE = re.compile(r"^pretrain leoclr: epoch (\d)/2 step (\d)/4 loss \d+\.\d{4} lr [0-9.e-]+ \d+ samples/s "
                       r"ETA \d+:\d\d:\d\d$")


@pytest.fixture(autouse=True)
def restore_settings():
    """The CLI sets process-wide things (torch threads, the progress interval): put them back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    progress.configure(None)


def test_pretrain_to_a_log_prints_step_lines_with_loss_lr_rate_eta(capsys, tmp_path):
    code, out, err = run(["pretrain", "--out", str(tmp_path / "r"), *TINY, "--epochs", "2", "--log-every", "1"], capsys)
    assert code in (0, None), err
    lines = err.splitlines()
    steps = [STEP_LINE.match(ln) for ln in lines]
    # every step of both epochs, in order: 4 steps of 16 out of 64 images
    assert [(int(m[1]), int(m[2])) for m in steps if m] == [(e, s) for e in (1, 2) for s in (1, 2, 3, 4)], err
    assert lines[0] == "pretrain leoclr: 8 steps to go; progress every 1 steps"
    records = [json.loads(ln.split(": ", 1)[1]) for ln in lines if ln.startswith("pretrain leoclr: {")]
    assert [r["epoch"] for r in records] == [1, 2]  # each epoch's record follows its steps
    assert "final loss" in out


def test_quiet_keeps_only_the_summary(capsys, tmp_path):
    code, out, err = run(["pretrain", "--out", str(tmp_path / "r"), *TINY, "--quiet", "--log-every", "1"], capsys)
    assert code in (0, None)
    assert "pretrain leoclr" not in err and "step" not in err, err
    assert "final loss" in out


def test_default_interval_is_time_based():
    """No --log-every: a line once INTERVAL_S has passed since the last one, whatever the steps."""
    now = [0.0]
    buf = io.StringIO()
    console = Console(file=buf, width=40)  # a file: not a terminal
    with progress.Reporter("job", 100, console=console, clock=lambda: now[0]) as rep:
        shown = []
        for step in range(1, 101):
            now[0] = step * 2.0  # 2 s a step: a line every 15 steps
            rep.advance()
            if rep.due():
                shown.append(step)
                rep.show(f"step {step}")
    assert shown == [15, 30, 45, 60, 75, 90]
    lines = buf.getvalue().splitlines()
    assert lines[0] == "job: 100 steps to go; progress about every 30 s"
    # long lines are not wrapped at the console width; the ETA is the steps left at the rate so far
    assert lines[1] == "job: step 15 ETA 0:02:50" and len(lines) == 7


def test_reporter_on_a_terminal_prints_no_lines_and_quiet_nothing():
    for quiet, terminal in ((False, True), (True, False)):
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=terminal, width=100)
        with progress.Reporter("job", 3, console=console, quiet=quiet, clock=lambda: 1e6) as rep:
            for _ in range(3):
                rep.advance()
                assert not rep.due()
                rep.show("text")
                rep.line("a line")
        assert "a line" not in buf.getvalue() and "ETA" not in buf.getvalue()
        assert (buf.getvalue() == "") == quiet


def test_knn_feature_extraction_reports_progress(capsys, tmp_path, random_backbone):
    code, out, err = run(["knn", str(random_backbone), "--out", str(tmp_path / "k"), "--set", "batch_size=16",
                          "--log-every", "1", "--device", "cpu"], capsys)
    assert code in (0, None), err
    bank = [ln for ln in err.splitlines() if re.match(r"knn bank features: batch \d+/7 \d+ images/s ETA", ln)]
    test = [ln for ln in err.splitlines() if re.match(r"knn test features: batch \d+/2 \d+ images/s ETA", ln)]
    assert len(bank) == 7 and len(test) == 2, err  # 100 and 30 images in batches of 16
    assert "top-1" in out


def test_default_threads_divide_the_cores():
    assert threads.default_threads(0, cores=8, ranks=1) == 8
    assert threads.default_threads(2, cores=8, ranks=1) == 6  # a thread per loader worker
    assert threads.default_threads(2, cores=8, ranks=2) == 2  # two ranks on the node: 4 cores each
    assert threads.default_threads(8, cores=4, ranks=1) == 1  # never below one


def test_threads_flag_and_default_are_applied_and_recorded(capsys, tmp_path, monkeypatch):
    code, _, err = run(["pretrain", "--out", str(tmp_path / "a"), *TINY, "--quiet", "--threads", "1"], capsys)
    assert code in (0, None), err
    env = json.loads((tmp_path / "a" / "env.json").read_text())
    assert env["threads"] == 1 and env["threads_from"] == "threads" and torch.get_num_threads() == 1
    assert env["cpus_available"] == threads.available_cores() and env["loader_workers"] == 0

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 3)
    code, _, err = run(["pretrain", "--out", str(tmp_path / "b"), *TINY, "--quiet", "--workers", "1"], capsys)
    assert code in (0, None), err
    env = json.loads((tmp_path / "b" / "env.json").read_text())
    assert env["threads"] == 2 and env["threads_from"].startswith("default")  # 3 cores, 1 loader worker

    # a resume may change the thread count (it sets speed, not results)
    code, _, err = run(["pretrain", "--out", str(tmp_path / "b"), *TINY, "--quiet", "--workers", "1",
                        "--threads", "1", "--resume", "auto"], capsys)
    assert code in (0, None), err


def test_omp_num_threads_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert threads.apply(None, 0) == 1 and threads.recorded()["threads_from"] == "OMP_NUM_THREADS"
    assert threads.apply(2, 0) == 2 and torch.get_num_threads() == 2


@pytest.mark.parametrize("name, enqueue, size, warned", [
    # 64 images, global batch 16: the queue holds the keys of its last size / keys-per-image images
    ("mocov2", "both", 16, []),                        # 16 of 64 images: 3% of queries meet their own image's key
    ("mocov2", "both", 32, ["holds the keys of the last 32 images of 64", "about 12% of queries",
                            "e.g. 16 (a multiple of the 16 keys a step) keeps it under 5%"]),
    ("mocov2", "both", 64, ["about 50% of queries", "e.g. 16"]),
    ("mocov2", "both", 8, ["not a multiple of the 16 keys", "e.g. 16 is"]),
    ("leoclr", "both", 48, ["not a multiple of the 32 keys", "global batch 16 x 2", "e.g. 64",
                            "last 24 images of 64", "about 7% of queries", "e.g. 32 (a multiple of the 32 keys"]),
    ("leoclr", "k1", 16, []),
    ("leoclr", "both", 32, []),                        # 16 images' keys, as MoCo-v2's 16
    ("leoclr", "both", 128, ["about 50% of queries"]),
    ("simclr", "both", 96, []),                        # no queue: the base class has nothing to warn about
])
def test_queue_warnings(name, enqueue, size, warned, tiny_model_cfg):
    from leoclr_cli.methods import build_method
    from leoclr_cli.config import MethodConfig

    method = build_method(tiny_model_cfg, MethodConfig(name=name, enqueue=enqueue, queue_size=size))
    text = " | ".join(method.queue_warnings(64, 16))
    assert all(w in text for w in warned) and (text == "") == (not warned), text


def test_a_queue_that_holds_own_image_keys_is_warned_about_even_when_quiet(capsys, tmp_path):
    code, out, err = run(["pretrain", "--out", str(tmp_path / "r"), *TINY, "--quiet", "--set", "method.queue_size=64"],
                         capsys)
    assert code in (0, None), err
    assert err.strip().splitlines() == ["warning: method.queue_size (64) holds the keys of the last 32 images of 64: "
                                        "with epochs reshuffled, about 12% of queries meet a key of their own image "
                                        "among their negatives; e.g. 32 (a multiple of the 32 keys a step) keeps it "
                                        "under 5%"]
    assert "final loss" in out


def test_a_queue_of_one_steps_keys_is_not_warned_about_and_a_larger_one_says_none_fits(tiny_model_cfg):
    from leoclr_cli.config import MethodConfig
    from leoclr_cli.methods import build_method

    one_step = build_method(tiny_model_cfg, MethodConfig(name="mocov2", queue_size=16))
    assert one_step.queue_warnings(20, 16) == []  # 16 of 16 images an epoch: 50%, but it cannot be smaller
    two_steps = build_method(tiny_model_cfg, MethodConfig(name="mocov2", queue_size=32))
    (text,) = two_steps.queue_warnings(20, 16)
    assert "about 100% of queries" in text and "even one step's 16 keys do not keep it under 5%" in text, text


@pytest.mark.parametrize("images, batch, size, keys_per_image", [
    (1400, 128, 1024, 1), (1400, 128, 1024, 2), (1400, 128, 256, 1), (300, 32, 512, 1), (500, 64, 256, 2)])
def test_own_key_share_matches_a_simulated_queue_over_reshuffled_epochs(images, batch, size, keys_per_image):
    """The closed form of own_key_share against a FIFO queue fed by a reshuffled, drop-last sampler."""
    import collections

    import numpy as np

    from leoclr_cli.methods.momentum import own_key_share

    rng, queue, met, queries = np.random.default_rng(0), collections.deque(maxlen=size), 0, 0
    for epoch in range(60):
        order = rng.permutation(images)
        for step in range(images // batch):
            ids = order[step * batch:(step + 1) * batch]
            if epoch >= 3:  # the queue full and in its steady state
                held = set(queue)
                met, queries = met + sum(int(i) in held for i in ids), queries + len(ids)
            for _ in range(keys_per_image):
                queue.extend(int(i) for i in ids)
    simulated = met / queries
    assert abs(own_key_share(images, batch, size, keys_per_image) - simulated) < 0.02, simulated
