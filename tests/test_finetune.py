"""Semi-supervised fine-tuning: subsets (seeded class-balanced draws, SimCLR list files) and the
``leoclr finetune`` command end to end on tiny data."""

import json
from collections import Counter

import pytest
import torch

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.data.sources import open_source
from leoclr_cli.errors import UserError
from leoclr_cli.evaluate.subsets import balanced_subset, read_subset_file, write_subset_file
from cliutil import error_line, run

FAST = ["--epochs", "1", "--batch-size", "16", "--quiet"]


# --------------------------------------------------------------------------- subsets


def test_balanced_subset_is_class_balanced_reproducible_and_seeded():
    targets = [i % 4 for i in range(400)] + [-1] * 50  # 100 per class, plus unlabelled images
    classes = ["a", "b", "c", "d"]
    a = balanced_subset(targets, classes, 10, seed=0)
    assert Counter(targets[i] for i in a) == {0: 10, 1: 10, 2: 10, 3: 10}
    assert a == sorted(set(a)) and all(targets[i] >= 0 for i in a)
    assert a == balanced_subset(targets, classes, 10, seed=0)
    assert a != balanced_subset(targets, classes, 10, seed=1)
    # uneven classes: the same share of each
    uneven = [0] * 200 + [1] * 50
    assert Counter(uneven[i] for i in balanced_subset(uneven, ["x", "y"], 2, seed=0)) == {0: 4, 1: 1}


def test_fraction_that_empties_a_class_is_an_error_naming_it():
    targets = [0] * 200 + [1] * 20
    with pytest.raises(UserError, match="leaves class 'rare' empty"):
        balanced_subset(targets, ["common", "rare"], 1, seed=0)


def test_simclr_list_reader_takes_the_class_from_the_prefix(tmp_path):
    from fakedata import imagefolder_class, make_imagefolder

    root = make_imagefolder(tmp_path / "imagenet", classes=3, per_class=4, size=16)
    train = open_source("imagefolder", root, "train")
    names = [f"{imagefolder_class(2)}_1.JPEG", f"{imagefolder_class(0)}_3.JPEG", f"{imagefolder_class(1)}_0.JPEG"]
    listing = tmp_path / "1percent.txt"
    listing.write_text("\n".join(names) + "\n")
    idx = read_subset_file(listing, train)
    assert [train.targets[i] for i in idx] == [2, 0, 1]
    assert [train.files[i] for i in idx] == [f"{n.split('_')[0]}/{n}" for n in names]
    # a written list is in the same SimCLR format and reads back to the same images
    write_subset_file(tmp_path / "again.txt", train, idx)
    assert (tmp_path / "again.txt").read_text().split() == names
    assert read_subset_file(tmp_path / "again.txt", train) == idx

    listing.write_text(names[0] + "\n" + f"{imagefolder_class(1)}_99.JPEG\n")
    with pytest.raises(UserError, match=r"line 2: n00000001_99.JPEG is not in the imagefolder split 'train'"):
        read_subset_file(listing, train)


def test_index_lists_for_array_datasets(tmp_path):
    from leoclr_cli.data.builtin import BuiltinTextures

    ds = BuiltinTextures("train", n=40)
    write_subset_file(tmp_path / "s.txt", ds, [3, 7, 11])
    assert (tmp_path / "s.txt").read_text() == "3\n7\n11\n"
    assert read_subset_file(tmp_path / "s.txt", ds) == [3, 7, 11]
    (tmp_path / "s.txt").write_text("3\n40\n")
    with pytest.raises(UserError, match="line 2: '40' is not an image index"):
        read_subset_file(tmp_path / "s.txt", ds)
    (tmp_path / "s.txt").write_text("3\n3\n")
    with pytest.raises(UserError, match="listed twice"):
        read_subset_file(tmp_path / "s.txt", ds)


# --------------------------------------------------------------------------- the command


def _recompute(run_dir, result, num_classes):
    """top-1/top-5 of the final checkpoint's model on the built-in test split, recomputed here."""
    from leoclr_cli.data.builtin import BuiltinDigits
    from leoclr_cli.data.views import AugmentedDataset, eval_transform
    from leoclr_cli.evaluate.finetune import FinetuneClassifier
    from leoclr_cli.evaluate.knn import topk_accuracy
    from leoclr_cli.core.nets import build_backbone

    tensors, _ = ckpt.load_tensors(ckpt.latest_state(run_dir))
    model = FinetuneClassifier(build_backbone("resnet18"), num_classes)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    model.eval()
    data = AugmentedDataset(BuiltinDigits("test", n=30), eval_transform(32, 32, "none", "builtin"))
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        return topk_accuracy(model.logits(x), y)


def test_finetune_sweep_and_subset_reuse_end_to_end(random_backbone, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = run(["finetune", str(random_backbone), "--labels", "10,50", "--out", str(out), *FAST], capsys)
    assert code in (0, None), err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["labels"] for r in summary["runs"]] == [10, 50]
    for pct, sub in ((10, "labels_10pct"), (50, "labels_50pct")):
        result = json.loads((out / sub / "result.json").read_text())
        assert result["fraction"] == pct / 100 and result["epochs"] == 1 and result["num_test"] == 30
        from leoclr_cli.evaluate.finetune import RESULT_KEYS

        assert set(result) == set(RESULT_KEYS) and result["dataset"] == "builtin" and result["method"] == "leoclr"
        assert 0 <= result["top1"] <= result["top5"] <= 100
        assert result["num_labelled"] == pct  # 100 built-in train images, 10 per class
        # the subset file is class balanced and the result is the checkpoint's accuracy
        idx = [int(v) for v in (out / sub / "subset.txt").read_text().split()]
        from leoclr_cli.data.builtin import BuiltinDigits

        targets = BuiltinDigits("train", n=100).targets
        assert set(Counter(targets[i] for i in idx).values()) == {pct // 10}
        again = _recompute(out / sub, result, 10)
        assert again["top1"] == pytest.approx(result["top1"]) and again["top5"] == pytest.approx(result["top5"])
        assert summary["runs"][0 if pct == 10 else 1]["top1"] == result["top1"]

    # the written subset file, given back, selects the same images
    reuse = tmp_path / "reuse"
    code, _, err = run(["finetune", str(random_backbone), "--subset-file", str(out / "labels_10pct" / "subset.txt"),
                        "--out", str(reuse), "--seed", "5", *FAST], capsys)
    assert code in (0, None), err
    assert (reuse / "subset.txt").read_text() == (out / "labels_10pct" / "subset.txt").read_text()
    assert json.loads((reuse / "result.json").read_text())["subset"] == "file"
    # a different draw seed gives a different subset
    other = tmp_path / "other"
    assert run(["finetune", str(random_backbone), "--labels", "10%", "--seed", "5", "--out", str(other), *FAST],
               capsys)[0] in (0, None)
    assert (other / "subset.txt").read_text() != (out / "labels_10pct" / "subset.txt").read_text()


def test_finetune_imagefolder_with_a_simclr_list(random_backbone, tmp_path, capsys):
    from fakedata import imagefolder_class, make_imagefolder

    root = make_imagefolder(tmp_path / "imagenet", classes=3, per_class=4, size=16)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{imagefolder_class(k)}_{j}.JPEG\n" for k in range(3) for j in (0, 2)))
    out = tmp_path / "ft"
    code, stdout, err = run(["finetune", str(random_backbone), "--source", "imagefolder", "--data", str(root),
                             "--subset-file", str(listing), "--labels", "1%", "--out", str(out), *FAST], capsys)
    assert code in (0, None), err
    result = json.loads((out / "result.json").read_text())
    assert result["num_labelled"] == 6 and result["num_classes"] == 3 and result["num_test"] == 12
    assert result["labels"] == 1 and result["epochs"] == 1
    assert (out / "subset.txt").read_text() == listing.read_text()


def test_finetune_default_epochs_follow_the_label_fraction():
    from leoclr_cli.config import FinetuneProtocol

    assert [FinetuneProtocol(labels=f).resolved_epochs() for f in (1, 2, 5, 10, 20, 100)] == [60, 60, 60, 30, 30, 30]
    assert FinetuneProtocol(labels=1, epochs=7).resolved_epochs() == 7


@pytest.mark.parametrize("extra, needle", [
    (["--labels", "ten"], "--labels 'ten'"),
    (["--labels", "0%"], "(0, 100]"),
    (["--labels", "0.1%"], "leaves class"),
    (["--labels", "1,10", "--subset-file", "x.txt"], "--subset-file"),
    (["--subset-file", "/nonexistent/1percent.txt"], "/nonexistent/1percent.txt"),
    (["--set", "lr=-1"], "field 'lr'"),
    (["--set", "bogus=1"], "unknown field 'bogus'"),
])
def test_finetune_bad_inputs(random_backbone, tmp_path, capsys, extra, needle):
    code, _, err = run(["finetune", str(random_backbone), "--out", str(tmp_path / "r"), *extra], capsys)
    assert needle in error_line(code, err)
    assert not (tmp_path / "r").exists()


def test_protocol_files_of_table_2():
    from leoclr_cli.config import load_protocol

    one = load_protocol("finetune", "protocols/finetune_imagenet_1pct.yaml", {"data.root": "/data/imagenet"})
    ten = load_protocol("finetune", "protocols/finetune_imagenet_10pct.yaml", {"data.root": "/data/imagenet"})
    assert (one.labels, one.resolved_epochs(), ten.labels, ten.resolved_epochs()) == (1, 60, 10, 30)
    assert one.weight_decay == 0 == ten.weight_decay and one.data.test_split == "val"


def test_finetune_resume_on_another_backbone_is_refused(random_backbone, tmp_path, capsys):
    """A fine-tuning run continues only on the backbone it started from: the state holds that backbone's tuned
    weights, so a result under another backbone's name would be the first one's."""
    from leoclr_cli.core.checkpoint import random_backbone_file

    out = tmp_path / "ft"
    assert run(["finetune", str(random_backbone), "--labels", "10%", "--out", str(out), *FAST], capsys)[0] in (0, None)
    result = (out / "result.json").read_bytes()
    other = random_backbone_file("random:resnet18", 1, tmp_path / "other.safetensors")
    code, _, err = run(["finetune", str(other), "--labels", "10%", "--out", str(out), "--resume", "auto", *FAST],
                       capsys)
    line = error_line(code, err)
    assert "was started on the backbone" in line and "other.safetensors" in line and "--force" in line
    assert (out / "result.json").read_bytes() == result
    # the same backbone resumes (its final state: nothing left to train) and gives the same result
    assert run(["finetune", str(random_backbone), "--labels", "10%", "--out", str(out), "--resume", "auto", *FAST],
               capsys)[0] in (0, None)
    assert json.loads((out / "result.json").read_text())["top1"] == json.loads(result)["top1"]
