"""Transfer: the Stanford Cars / Oxford-IIIT Pets / Birdsnap readers on generated copies of their
official layouts, the metric, the validation split, the grid selection, and ``leoclr transfer``
end to end in both modes."""

import json

import numpy as np
import pytest
import torch

from leoclr_cli.data.sources import open_source
from leoclr_cli.errors import UserError
from leoclr_cli.evaluate import transfer as tr
from leoclr_cli.evaluate.linear import fit_logistic
from cliutil import error_line, run


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    from fakedata import make_birdsnap, make_pets, make_stanford_cars

    base = tmp_path_factory.mktemp("transfer-data")
    return {"cars": make_stanford_cars(base / "cars", classes=3, n_train=12, n_test=6, size=24),
            "pets": make_pets(base / "pets", classes=3, per_class_trainval=4, per_class_test=2, size=24),
            "birdsnap": make_birdsnap(base / "birdsnap", per_class_train=4, per_class_test=2, missing=1, size=24)}


# --------------------------------------------------------------------------- readers


def _colour(image):
    return tuple(int(v) for v in np.asarray(image).reshape(-1, 3).mean(0).round())


def test_cars_reader(copies):
    from fakedata import imagefolder_colour

    train, test = open_source("cars", copies["cars"], "train"), open_source("cars", copies["cars"], "test")
    assert (len(train), len(test), train.num_classes) == (12, 6, 3)
    assert train.targets == [i % 3 for i in range(12)]  # 1-based 'class' in the .mat, 0-based here
    assert train.classes[1] == "Make1 Model1 2011" and train.files[4] == "00005.jpg"
    image, label = test[4]
    assert label == 1 and image.size == (24, 24)
    assert np.allclose(_colour(image), imagefolder_colour("test", 1, 4), atol=3)


def test_pets_reader(copies):
    train, test = open_source("pets", copies["pets"], "trainval"), open_source("pets", copies["pets"], "test")
    assert (len(train), len(test)) == (12, 6)
    assert train.classes == ["Abyssinian", "American Bulldog", "Bengal"]
    assert test.targets == [0, 0, 1, 1, 2, 2] and test.files[2].startswith("american_bulldog_")
    with pytest.raises(UserError, match="invalid split 'train' for pets"):
        open_source("pets", copies["pets"], "train")


def test_birdsnap_reader_counts_present_images(copies):
    train, test = open_source("birdsnap", copies["birdsnap"], "train"), open_source("birdsnap", copies["birdsnap"], "test")
    assert (train.listed, train.present, len(train)) == (12, 9, 9)  # one dead URL per species
    assert (test.listed, test.present, len(test)) == (6, 6, 6)
    assert train.classes == ["Blue Jay", "Bald Eagle", "Snow Goose"]
    assert train.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert not set(train.files) & set(test.files)
    assert test[3][1] == 1 and test.files[3].startswith("Bald_Eagle/")


def test_reader_errors_name_the_missing_file(copies, tmp_path):
    import shutil

    cars = shutil.copytree(copies["cars"], tmp_path / "cars")
    (cars / "stanford_cars" / "cars_test" / "00003.jpg").unlink()
    with pytest.raises(UserError, match="00003.jpg is missing"):
        open_source("cars", cars, "test")
    (cars / "stanford_cars" / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(UserError, match="cars_meta.mat is missing"):
        open_source("cars", cars, "train")
    birds = shutil.copytree(copies["birdsnap"], tmp_path / "birds")
    (birds / "test_images.txt").unlink()
    with pytest.raises(UserError, match="test_images.txt is missing"):
        open_source("birdsnap", birds, "train")


# --------------------------------------------------------------------------- metric, split, grid


def test_mean_per_class_accuracy_against_a_hand_computation():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 0, 1, 2])
    # class 0: 3/4, class 1: 1/2, class 2: 1/1 -> (0.75 + 0.5 + 1) / 3 = 75%; top-1 would be 5/7
    assert tr.mean_per_class_accuracy(pred, labels) == pytest.approx(75.0)
    scores = torch.nn.functional.one_hot(pred, 3).float()
    assert tr.score("mean_per_class", scores, labels) == pytest.approx(75.0)
    assert tr.score("top1", scores, labels) == pytest.approx(100 * 5 / 7)


def test_validation_split_is_seeded_disjoint_and_20_percent():
    fit, val = tr.split_train_val(50, 0.2, seed=0)
    assert len(val) == 10 and sorted(fit + val) == list(range(50))
    assert (fit, val) == tr.split_train_val(50, 0.2, seed=0)
    assert val != tr.split_train_val(50, 0.2, seed=1)[1]


def test_grid_search_refits_the_best_validation_cell(copies, random_backbone, tmp_path, monkeypatch):
    """Stub training and scoring: each cell gets a known validation score; the refit must use the best."""
    from leoclr_cli.config import TransferProtocol

    fits = []
    monkeypatch.setattr(tr, "train_classifier", lambda model, data, **kw: fits.append((len(data), kw["lr"], kw["weight_decay"])))
    val_scores = iter([20.0, 70.0, 40.0, 70.0, 10.0, 30.0])  # 6 cells; the first of the two 70s wins

    def fake_predict(model, loader, device):
        n = len(loader.dataset)
        value = next(val_scores, None)
        if value is None:  # the test evaluation
            return torch.eye(3)[[i % 3 for i in range(n)]], torch.tensor([i % 3 for i in range(n)])
        right = round(value / 10)
        labels = torch.zeros(10, dtype=torch.long)
        return torch.eye(3)[[0] * right + [1] * (10 - right)], labels

    monkeypatch.setattr(tr, "predict_scores", fake_predict)
    p = TransferProtocol(dataset="cars", root=str(copies["cars"]), device="cpu", lrs=[0.01, 0.1, 1.0],
                         wds=[0.0, 1e-4], steps=1, transform={"size": 16, "resize": 16, "test": "none"})
    result = tr.run_transfer(p, random_backbone, tmp_path / "run", quiet=True)
    grid = json.loads((tmp_path / "run" / "grid.json").read_text())
    vals = [c["val"] for c in grid["cells"]]
    assert vals == pytest.approx([20.0, 70.0, 40.0, 70.0, 10.0, 30.0])
    assert grid["best"] == 1 == int(np.argmax(vals))
    assert (grid["cells"][1]["lr"], grid["cells"][1]["wd"]) == (0.01, 1e-4)
    assert (result["best_lr"], result["best_wd"], result["val"]) == (0.01, 1e-4, vals[1])
    # six cells on the fit split (12 - 20%), then one refit on all 12 with lr 0.01 and wd 1e-4 / 0.01
    assert [f[0] for f in fits] == [10] * 6 + [12]
    assert fits[-1][1:] == (0.01, pytest.approx(1e-2))
    assert result["value"] == pytest.approx(100.0)  # the (stubbed) test evaluation


def test_lbfgs_logistic_regression_fits_separable_features():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=gen) * 4
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 8, generator=gen)
    strong = fit_logistic(x, y, 3, c=10.0, max_iter=100)
    assert (strong(x).argmax(1) == y).float().mean() > 0.95
    weak = fit_logistic(x, y, 3, c=1e-6, max_iter=100)  # heavy L2: weights shrink towards zero
    assert weak.weight.norm() < 0.01 * strong.weight.norm()


# --------------------------------------------------------------------------- the command


TINY = ["--set", "transform.size=32", "--set", "transform.resize=32", "--set", "transform.test=none",
        "--batch-size", "8", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("dataset", ["cars", "pets", "birdsnap"])
@pytest.mark.parametrize("mode", ["finetune", "linear"])
def test_transfer_end_to_end(dataset, mode, copies, random_backbone, tmp_path, capsys):
    out = tmp_path / "run"
    lrs = "[0.01,0.1]" if dataset == "cars" else "[0.1]"  # test_grid_search_* covers the selection itself
    grid_flags = (["--set", f"lrs={lrs}", "--set", "wds=[0]", "--set", "steps=1"] if mode == "finetune"
                  else ["--set", "cs=[0.001,1.0,100.0]", "--set", "lbfgs_max_iter=30"])
    code, stdout, err = run(["transfer", str(random_backbone), dataset, "--data", str(copies[dataset]), "--mode", mode,
                             "--out", str(out), *TINY, *grid_flags], capsys)
    assert code in (0, None), err
    result = json.loads((out / "result.json").read_text())
    grid = json.loads((out / "grid.json").read_text())
    assert result["dataset"] == dataset and result["mode"] == mode
    assert result["metric"] == ("mean_per_class" if dataset == "pets" else "top1")
    assert 0 <= result["value"] <= 100 and result["num_test"] == 6 and result["num_classes"] == 3
    n_train = 9 if dataset == "birdsnap" else 12
    assert (result["num_train"], result["num_val"], result["num_fit"]) == (n_train, round(n_train * 0.2), n_train - round(n_train * 0.2))
    assert len(grid["cells"]) == (len(lrs.split(",")) if mode == "finetune" else 3)
    vals = [c["val"] for c in grid["cells"]]
    assert grid["best"] == vals.index(max(vals)) and result["val"] == max(vals)
    chosen = grid["cells"][grid["best"]]
    if mode == "finetune":
        assert (result["best_lr"], result["best_wd"]) == (chosen["lr"], chosen["wd"]) and result["epochs"] == 1
        assert (out / "refit" / "checkpoints").is_dir()
    else:
        assert result["best_c"] == chosen["c"] and result["best_wd"] == pytest.approx(1 / chosen["c"])
        assert (out / "linear.safetensors").is_file()
    if dataset == "birdsnap":
        assert (result["images_listed"], result["images_present"]) == (18, 15)
        assert "15 of 18 listed images present" in stdout.replace("\n", " ")


@pytest.mark.parametrize("argv, needle", [
    (["imagenet", "--data", "{cars}"], "field 'dataset'"),
    (["cars"], "needs a path"),
    (["cars", "--data", "/nonexistent/cars"], "/nonexistent/cars"),
    (["pets", "--data", "{cars}"], "oxford-iiit-pet"),
    (["cars", "--data", "{cars}", "--mode", "svm"], "field 'mode'"),
    (["cars", "--data", "{cars}", "--set", "lrs=[0.1,-1]"], "field 'lrs'"),
])
def test_transfer_bad_inputs(argv, needle, copies, random_backbone, tmp_path, capsys):
    argv = [a.replace("{cars}", str(copies["cars"])) for a in argv]
    code, _, err = run(["transfer", str(random_backbone), *argv, "--out", str(tmp_path / "r")], capsys)
    assert needle in error_line(code, err)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- interruptions and --resume


def files_of(run_dir):
    """Every file under ``run_dir`` with its bytes."""
    return {str(f.relative_to(run_dir)): f.read_bytes() for f in sorted(run_dir.rglob("*")) if f.is_file()}


def another_backbone(path, out):
    """A copy of the backbone file ``path`` (the same protocol and header) with other weights."""
    from leoclr_cli.core import checkpoint as ckpt
    from leoclr_cli.core.backbone import save_backbone

    model, meta = ckpt.load_backbone(path)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_backbone(out, model, arch=meta["arch"], cifar_stem=False, method=meta["method"], epoch=0,
                  protocol_json=meta["protocol"])
    return out


GRIDS = {"finetune": ["--set", "lrs=[0.01,0.1]", "--set", "wds=[0]", "--set", "steps=1"],
         "linear": ["--set", "cs=[0.001,1.0,100.0]", "--set", "lbfgs_max_iter=30"]}


@pytest.mark.parametrize("mode, target, call, other, stopped", [
    # the 3rd training step is the second cell's first (each cell: one epoch of two steps)
    ("finetune", "leoclr_cli.evaluate.finetune:FinetuneClassifier.forward", 3, "lrs=[0.01,0.5]",
     "stopped: SIGTERM at epoch 1, step 1; checkpoint "),
    ("linear", "leoclr_cli.evaluate.linear:fit_logistic", 2, "lbfgs_max_iter=31",
     "stopped: SIGTERM during the L-BFGS fit"),
])
def test_sigterm_then_resume_auto_ends_as_an_uninterrupted_run(mode, target, call, other, stopped, copies,
                                                                random_backbone, tmp_path, capsys, monkeypatch):
    from test_reliability import cli, signal_at_call, tagged_env

    from leoclr_cli.errors import EXIT_PREEMPTED

    argv = ["transfer", str(random_backbone), "cars", "--data", str(copies["cars"]), "--mode", mode, *TINY,
            *GRIDS[mode]]
    code, _, err = run([*argv, "--out", str(tmp_path / "straight")], capsys)
    assert code in (0, None), err
    out = tmp_path / "run"
    env = {**tagged_env()[0], "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same sums as in here
    proc = cli([*argv, "--out", str(out)], env, prelude=signal_at_call(target, call))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert err.strip().splitlines()[-1].startswith(stopped), err
    assert not (out / "result.json").exists()
    first_cell = out / "grid" / "lr0.01_wd0"
    if mode == "finetune":  # the first cell is in grid.json (its state removed), the second has one
        assert [c["lr"] for c in json.loads((out / "grid.json").read_text())["cells"]] == [0.01]
        assert not (first_cell / "checkpoints").exists()
        assert [s.name for s in (out / "grid" / "lr0.1_wd0" / "checkpoints").iterdir()] == [
            "state_e0000_s000001.safetensors"]
    else:  # the features and the first C's fit are kept
        assert {f.name for f in (out / "checkpoints").iterdir()} == {"features.safetensors", "lbfgs.safetensors"}

    before = files_of(out)
    code, _, err = run([*argv, "--out", str(out), "--set", other, "--resume", "auto"], capsys)
    assert f"field '{other.split('=')[0]}' differs" in error_line(code, err)
    assert files_of(out) == before  # nothing touched
    changed = another_backbone(random_backbone, tmp_path / "changed.safetensors")  # same protocol, other weights
    code, _, err = run([*[str(changed) if a == str(random_backbone) else a for a in argv], "--out", str(out),
                        "--resume", "auto"], capsys)
    assert "was started on the backbone" in error_line(code, err) and "changed.safetensors" in err
    assert files_of(out) == before

    if mode == "linear":  # the features come from the run's cache
        monkeypatch.setattr(tr, "extract", lambda *a, **k: pytest.fail("the features were extracted again"))
    else:  # the finished cell is not trained again
        kept = (first_cell / "metrics.jsonl").stat().st_mtime_ns
    code, _, err = run([*argv, "--out", str(out), "--resume", "auto"], capsys)
    assert code in (0, None), err
    for name in ("result.json", "grid.json"):
        assert (out / name).read_text() == (tmp_path / "straight" / name).read_text(), name
    if mode == "finetune":
        assert (first_cell / "metrics.jsonl").stat().st_mtime_ns == kept
        assert not (out / "grid" / "lr0.1_wd0" / "checkpoints").exists() and (out / "refit" / "checkpoints").is_dir()
    else:
        assert not (out / "checkpoints").exists()  # the caches go once the run is finished
        assert files_of(out)["linear.safetensors"] == files_of(tmp_path / "straight")["linear.safetensors"]


def test_resume_auto_of_a_run_with_no_part_done_starts_it_over(copies, random_backbone, tmp_path, capsys):
    """A run killed after it wrote protocol.yaml, before any part: --resume auto runs it from the start."""
    from leoclr_cli.config import load_protocol, write_protocol

    argv = ["transfer", str(random_backbone), "cars", "--data", str(copies["cars"]), "--mode", "linear", *TINY,
            *GRIDS["linear"], "--out", str(tmp_path / "run")]
    code, _, err = run([*argv, "--resume", "auto"], capsys)  # no run directory at all: a fresh start
    assert code in (0, None), err
    p = load_protocol("transfer", tmp_path / "run" / "protocol.yaml")
    for name in ("grid.json", "result.json", "linear.safetensors"):
        (tmp_path / "run" / name).unlink()
    write_protocol(p, tmp_path / "run" / "protocol.yaml")
    code, _, err = run([*argv, "--resume", "auto"], capsys)
    assert code in (0, None), err
    assert json.loads((tmp_path / "run" / "result.json").read_text())["num_test"] == 6
    code, _, err = run([*argv, "--resume", str(tmp_path / "elsewhere")], capsys)
    assert "continues its own run directory" in error_line(code, err)
