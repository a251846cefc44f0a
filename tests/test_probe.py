"""The linear probe: well conditioned on a random-init backbone (SGD and L-BFGS agree), selected on a
validation split carved from train (never on test), resumable with the selected head, and random:ARCH
backbones as floors for any data."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cliutil import error_line, run
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.evaluate.linear import run_linear_eval
from leoclr_cli.core.checkpoint import random_backbone_file
from leoclr_cli.core.nets import build_backbone
from leoclr_cli.config.catalog import installed as protocol_file
from leoclr_cli.config import load_protocol
from leoclr_cli.errors import UserError

AGREE = 2.0  # points: the SGD and the L-BFGS probe on the same frozen random-init features
CS = [10.0 ** k for k in range(-4, 3)]  # the L-BFGS sweep of the tests: a decade apart
PROBE_32PX = {"transform.size": 32, "transform.resize": 32, "transform.test": "none", "transform.normalize": "builtin",
              "train_augment": "none", "device": "cpu", "cs": CS}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("sklearn.datasets")
    from fakedata import make_digits

    base = tmp_path_factory.mktemp("digits")
    return {"plain": make_digits(base / "plain"), "permuted": make_digits(base / "permuted", permute_val_labels=True)}


@pytest.fixture(scope="module")
def random18(tmp_path_factory):
    return random_backbone_file("random:resnet18", 0, tmp_path_factory.mktemp("rand") / "backbone.safetensors")


def digits_data(root):
    return {"data.source": "imagefolder", "data.root": str(root), "data.train_split": "train", "data.test_split": "val"}


def probe(backbone, where, **fields):
    return run_linear_eval(load_protocol("linear-eval", None, {**PROBE_32PX, **fields}), backbone, where, quiet=True)


def check_agreement(sgd, lbfgs, sgd_dir, floor=100 / 10 + 20):
    """Both probes on BN-standardised features, each chosen on the same held-out 10% of train: the default SGD
    probe lands within AGREE points of the L-BFGS sweep, above ``floor``, with a training loss that never blows
    up (MoCo's lr 10 on raw features reached a cross-entropy in the hundreds on such features)."""
    print(json.dumps({"sgd": sgd["top1"], "lbfgs": lbfgs["top1"], "c": lbfgs["selected_c"]}))
    assert sgd["feature_norm"] == lbfgs["feature_norm"] == "bn" and sgd["selected_on"] == lbfgs["selected_on"] == "val"
    assert abs(sgd["top1"] - lbfgs["top1"]) <= AGREE, (sgd["top1"], lbfgs["top1"])
    assert sgd["top1"] > floor
    losses = [json.loads(line)["loss"] for line in (sgd_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 100 and max(losses) < 2 * math.log(10), max(losses)


def test_sgd_and_lbfgs_probes_agree_on_a_random_init_backbone_on_the_builtin_data(random18, tmp_path):
    sgd = probe(random18, tmp_path / "sgd")
    lbfgs = probe(random18, tmp_path / "lbfgs", probe="lbfgs")
    # the digits-in-photos set is hard for random features (about 15-21% against 10% chance)
    check_agreement(sgd, lbfgs, tmp_path / "sgd", floor=100 / 10 + 5)
    grid = json.loads((tmp_path / "lbfgs" / "grid.json").read_text())
    assert grid["cells"][grid["best"]]["c"] == lbfgs["selected_c"] and len(grid["cells"]) == len(CS)


def test_on_real_pixels_the_probes_agree_and_selection_never_looks_at_the_test_labels(digits, random18, tmp_path):
    """scikit-learn's digits: the probes agree; then the same train split with every test label wrong: the
    epoch and the C chosen, and the classifiers saved, do not change; only the test score does."""
    runs = {name: {kind: probe(random18, tmp_path / f"{kind}-{name}", probe=kind, **digits_data(root))
                   for kind in ("sgd", "lbfgs")} for name, root in digits.items()}
    check_agreement(runs["plain"]["sgd"], runs["plain"]["lbfgs"], tmp_path / "sgd-plain")
    for kind, key in (("sgd", "selected_epoch"), ("lbfgs", "selected_c")):
        plain, permuted = runs["plain"][kind], runs["permuted"][kind]
        assert plain[key] == permuted[key] and plain["val_top1"] == permuted["val_top1"]
        assert plain["top1"] > 50 > 15 > permuted["top1"]  # the test labels did change
        a, b = (load_file(tmp_path / f"{kind}-{n}" / "linear.safetensors") for n in ("plain", "permuted"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # selection test (MoCo's convention) reports the best test epoch instead, and says so
    best = probe(random18, tmp_path / "on-test", epochs=12, selection="test", **digits_data(digits["plain"]))
    assert best["selected_on"] == "test" and best["num_val"] == 0 and best["top1"] == best["top1_test_best"]


def test_resume_keeps_the_selected_classifier(digits, random18, tmp_path):
    full = probe(random18, tmp_path / "full", epochs=6, checkpoint_every=2, **digits_data(digits["plain"]))
    state = tmp_path / "full" / "checkpoints" / "state_e0004.safetensors"
    tensors, _ = ckpt.load_tensors(state)
    assert "extra.task.selected.fc.weight" in tensors and "extra.task.selected.norm.running_mean" in tensors
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    for name in ("result.json", "linear.safetensors", "checkpoints/state_e0006.safetensors"):
        (part / name).unlink()
    lin = load_protocol("linear-eval", part / "protocol.yaml")
    resumed = run_linear_eval(lin, random18, part, resume="auto", quiet=True)
    assert {k: v for k, v in resumed.items()} == full
    a, b = load_file(tmp_path / "full" / "linear.safetensors"), load_file(part / "linear.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_auto_of_a_finished_probe_reads_its_result_back(digits, random18, tmp_path, monkeypatch):
    import leoclr_cli.evaluate.linear as linear

    done = probe(random18, tmp_path / "done", epochs=2, **digits_data(digits["plain"]))
    lin = load_protocol("linear-eval", tmp_path / "done" / "protocol.yaml")
    before = (tmp_path / "done" / "linear.safetensors").read_bytes()

    def no_extraction(*args, **kwargs):
        raise AssertionError("features extracted for a finished probe")

    monkeypatch.setattr(linear, "extract", no_extraction)
    assert run_linear_eval(lin, random18, tmp_path / "done", resume="auto", quiet=True) == done
    assert (tmp_path / "done" / "linear.safetensors").read_bytes() == before
    # another backbone is not this probe, and its run may not continue on it: refused, nothing rewritten
    other = random_backbone_file("random:resnet18", 1, tmp_path / "other.safetensors")
    result = (tmp_path / "done" / "result.json").read_bytes()
    with pytest.raises(UserError, match=r"was started on the backbone .*backbone\.safetensors, not on "
                                        r".*other\.safetensors \(another file\); give another --out"):
        run_linear_eval(lin, other, tmp_path / "done", resume="auto", quiet=True)
    assert (tmp_path / "done" / "result.json").read_bytes() == result
    assert (tmp_path / "done" / "linear.safetensors").read_bytes() == before


def test_a_probe_resumes_on_a_moved_copy_of_its_backbone_and_not_on_another(digits, random18, tmp_path):
    part = tmp_path / "part"
    probe(random18, part, epochs=4, checkpoint_every=2, **digits_data(digits["plain"]))
    for name in ("result.json", "linear.safetensors", "checkpoints/state_e0004.safetensors"):
        (part / name).unlink()
    lin = load_protocol("linear-eval", part / "protocol.yaml")
    moved = tmp_path / "moved.safetensors"
    shutil.copyfile(random18, moved)  # the same weights at another path
    assert run_linear_eval(lin, moved, part, resume="auto", quiet=True)["top1"] > 10
    (part / "result.json").unlink()
    (part / "checkpoints" / "state_e0004.safetensors").unlink()
    other = random_backbone_file("random:resnet18", 1, tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="not on .*other.safetensors"):
        run_linear_eval(lin, other, part, resume="auto", quiet=True)


def test_probe_defaults_follow_the_protocol():
    for name, lr in (("linear_imagenet.yaml", 30.0), ("linear_cifar10.yaml", 10.0), ("linear_stl10.yaml", 10.0)):
        p = load_protocol("linear-eval", protocol_file(name), {"data.root": "/data"})
        assert (p.feature_norm, p.lr, p.selection, p.probe) == ("none", lr, "val", "sgd"), name
    cached = load_protocol("linear-eval", None, {"train_augment": "none"})
    assert (cached.feature_norm, cached.lr) == ("bn", 0.03)
    assert load_protocol("linear-eval", None, {"train_augment": "none", "feature_norm": "none"}).lr == 30.0


@pytest.mark.parametrize("argv, needle", [
    (["linear-eval", "random:resnet18", "--probe", "lbfgs"], "field 'probe'"),
    (["linear-eval", "random:resnet18", "--selection", "train"], "field 'selection'"),
    (["knn", "random:resnet9"], "random:resnet9: unknown arch 'resnet9'"),
])
def test_bad_probe_input_one_line(argv, needle, capsys, tmp_path):
    code, _, err = run([*argv, "--out", str(tmp_path / "r")], capsys)
    assert needle in error_line(code, err)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- random:ARCH


def test_random_arch_knn_and_linear_eval(capsys, tmp_path):
    from fakedata import make_imagefolder

    out = tmp_path / "runs" / "knn"
    code, stdout, err = run(["knn", "random:resnet18", "--seed", "3", "--k", "5", "--set", "data.builtin_train=64",
                             "--set", "data.builtin_test=32", "--out", str(out)], capsys)
    assert code in (0, None), err
    knn = json.loads((out / "result.json").read_text())
    assert knn["method"] == "random-init" and knn["arch"] == "resnet18" and knn["bank"] == 64
    path = tmp_path / "runs" / "random-resnet18-seed3" / "backbone.safetensors"
    torch.manual_seed(3)
    expected = build_backbone("resnet18").state_dict()
    weights = load_file(path)
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    assert yaml_size(out) == 32  # built-in data: 32 px

    # the same spec and seed reuse the file; another seed is another backbone; the CIFAR stem is a 3x3 conv1
    before = path.read_bytes()
    assert random_backbone_file("random:resnet18", 3, path) == path and path.read_bytes() == before
    other = load_file(random_backbone_file("random:resnet18", 4, tmp_path / "s4.safetensors"))
    assert not torch.equal(other["conv1.weight"], weights["conv1.weight"])
    cifar = load_file(random_backbone_file("random:resnet18-cifar", 0, tmp_path / "c.safetensors"))
    assert cifar["conv1.weight"].shape[-1] == 3

    # linear-eval on the user's own ImageFolder (40 px images: evaluated at their own size)
    root = make_imagefolder(tmp_path / "folder", classes=3, per_class=10, size=40)
    lin_dir = tmp_path / "runs" / "lin"
    code, stdout, err = run(["linear-eval", "random:resnet18", "--data", str(root), "--seed", "3", "--epochs", "2",
                             "--quiet", "--out", str(lin_dir)], capsys)
    assert code in (0, None), err
    assert "reading it as --source imagefolder" in err
    r = json.loads((lin_dir / "result.json").read_text())
    assert r["method"] == "random-init" and r["dataset"] == "imagefolder" and r["num_classes"] == 3
    assert {"top1", "selected_on", "top1_test_best"} <= set(r) and r["selected_on"] == "val"
    assert yaml_size(lin_dir) == 40 and r["feature_norm"] == "bn"
    assert f"top-1 {r['top1']:.2f}%" in stdout.replace("\n", " ")


def yaml_size(run_dir):
    import yaml

    return yaml.safe_load((run_dir / "protocol.yaml").read_text())["transform"]["size"]
