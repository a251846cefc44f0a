"""WebDataset shards: `leoclr shards` round trip, the split over gloo ranks and loader workers, and
pretraining on shards with exact resume."""

import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import fakedata
from cliutil import error_line, run
from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.data.shards import ShardSource, ShardViews, write_shards
from test_distributed import two_ranks


class Numbered:
    """24 PNG-able images whose red value is their index; label index % 3."""

    name, root, split, files = "numbered", "x", "train", None

    def __init__(self, n=24):
        self.targets = [i % 3 for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return Image.new("RGB", (8, 8), (i, 7, 9)), self.targets[i]


def red(img):
    return int(np.asarray(img)[0, 0, 0])


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    out = tmp_path_factory.mktemp("num")
    r = write_shards(Numbered(), str(out / "s-%03d.tar"), per_shard=3, log=lambda _: None)
    assert r == {"samples": 24, "shards": 8, "pattern": str(out / "s-{000..007}.tar")}
    return r["pattern"]


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    from leoclr_cli.data import open_data

    out = tmp_path_factory.mktemp("tex")
    return write_shards(open_data("builtin", None, "train", builtin_n=24), str(out / "t-%02d.tar"), per_shard=5,
                        log=lambda _: None)["pattern"]


def test_shards_cli_round_trip_keeps_every_file_and_label(tmp_path, capsys):
    root = fakedata.make_imagefolder(tmp_path / "if", classes=3, per_class=5, splits=("train",))
    code, text, err = run(["shards", "--data", str(root), "--out", str(tmp_path / "sh" / "train-%04d.tar"),
                           "--per-shard", "4"], capsys)
    assert code in (0, None), err
    assert "15 images" in text and "4 shards" in text and "train-{0000..0003}.tar" in text
    members = {}
    for f in sorted((tmp_path / "sh").glob("train-*.tar")):
        with tarfile.open(f) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar})
    originals = sorted(p.read_bytes() for p in (root / "train").rglob("*.JPEG"))
    assert sorted(v for k, v in members.items() if k.endswith(".jpg")) == originals  # the files' own bytes
    labels = sorted(int(v) for k, v in members.items() if k.endswith(".cls"))
    assert labels == [0] * 5 + [1] * 5 + [2] * 5
    assert not list((tmp_path / "sh").glob(".shards-*"))  # the temporary folder is gone
    code, _, err = run(["shards", "--data", str(root), "--out", str(tmp_path / "sh" / "train-%04d.tar")], capsys)
    assert "--force" in error_line(code, err)  # existing shards are not overwritten
    code, _, err = run(["shards", "--data", str(root), "--out", str(tmp_path / "x.tar")], capsys)
    assert "%06d" in error_line(code, err)


def epoch_ids(source, rank, world, epoch, workers=2, batch=3, shuffle=True):
    views = ShardViews(source, red, seed=5, batch_size=batch, rank=rank, world=world, shuffle=shuffle)
    views.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(views, batch_size=batch, num_workers=workers)
    return [int(v) for b, _ in loader for v in b]


def test_ranks_and_workers_read_disjoint_shards_in_a_seeded_order(numbered):
    source = ShardSource(numbered)
    assert len(source) == 24
    e0 = [epoch_ids(source, r, 2, 0) for r in range(2)]
    assert [len(ids) for ids in e0] == [12, 12]  # 24 // (2 ranks x batch 3) = 4 steps each
    assert sorted(e0[0] + e0[1]) == list(range(24))  # every image once per epoch, no rank sees another's
    assert e0 == [epoch_ids(source, r, 2, 0) for r in range(2)]  # reproducible
    e1 = [epoch_ids(source, r, 2, 1) for r in range(2)]
    assert sorted(e1[0] + e1[1]) == list(range(24)) and e1 != e0  # a new order each epoch
    # each worker reads whole shards of its own: a shard's three images come from one worker
    one = epoch_ids(source, 0, 1, 0, workers=2, batch=4)
    assert sorted(one) == list(range(24))
    batches = [set(one[i:i + 4]) for i in range(0, 24, 4)]  # batch b comes from worker b % 2
    workers = [set().union(*batches[0::2]), set().union(*batches[1::2])]
    shards = [{red(img) for _, img, _ in source.stream([url])} for url in source.urls]
    assert all(len(shard) == 3 and (shard <= workers[0] or shard <= workers[1]) for shard in shards)


SPLIT_SCRIPT = """
import os, sys, numpy as np, torch
sys.path.insert(0, os.environ["TESTS_DIR"])
from leoclr_cli.core import distributed
from leoclr_cli.data import open_data
from leoclr_cli.workflows.pretrain import build_loader
from leoclr_cli.config import load_protocol
rank, world, dev = distributed.init_from_env(torch.device("cpu"))
p = load_protocol("pretrain", None, {"data.source": "webdataset", "data.root": os.environ["SHARDS"],
                                     "data.num_workers": 2, "augment.size": 8, "augment.crop": False,
                                     "augment.color_jitter": False, "augment.grayscale": False, "augment.blur": False,
                                     "augment.flip": False, "augment.normalize": "builtin", "method.name": "mocov2",
                                     "optim.batch_size": 6, "model.bn_splits": 1})
loader = build_loader(p, open_data("webdataset", p.data.root, "train"), ("crop",), dev, batch_size=3)
loader.dataset.set_epoch(0)
ids = [int(round(float(v[0, 0, 0]) * 0.25 * 255 + 0.5 * 255)) for views, _ in loader for v in views[0]]
report({"rank": rank, "ids": ids, "steps": len(loader)})
distributed.shutdown()
"""


def test_two_gloo_ranks_split_the_shards(numbered, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDS", numbered)
    rows = two_ranks(tmp_path, SPLIT_SCRIPT)
    assert [r["steps"] for r in rows] == [4, 4]  # the same number of steps on every rank
    assert sorted(rows[0]["ids"] + rows[1]["ids"]) == list(range(24))


TINY = ["pretrain", "--source", "webdataset", "--arch", "resnet18", "--epochs", "2", "--batch-size", "4",
        "--device", "cpu", "--quiet", "-j", "2", "--set", "augment.size=16", "--set", "augment.normalize=builtin",
        "--set", "model.dim=8", "--set", "model.bn_splits=2", "--set", "method.queue_size=16",
        "--set", "model.cifar_stem=true", "--set", "checkpoint_every=1", "--set", "checkpoint_every_steps=2", "--set", "keep_checkpoints=8"]


def test_pretrain_on_shards_resumes_exactly(textured, tmp_path, capsys):
    full = tmp_path / "full"
    code, _, err = run([*TINY, "--data", textured, "--out", str(full)], capsys)
    assert code in (0, None), err
    final, _ = ckpt.load_tensors(ckpt.state_path(full, 2))
    # from the epoch boundary, and from the middle of epoch 2 (step 2 of 6)
    for kept in (ckpt.state_path(full, 1), ckpt.state_path(full, 1, 2)):
        again = tmp_path / kept.stem
        shutil.copytree(full, again)
        for f in ckpt.list_states(again):
            if f.name > kept.name:
                f.unlink()
        code, _, err = run([*TINY, "--data", textured, "--out", str(again), "--resume", "auto"], capsys)
        assert code in (0, None), err
        resumed, _ = ckpt.load_tensors(ckpt.state_path(again, 2))
        assert resumed.keys() == final.keys()
        assert all(torch.equal(resumed[k], final[k]) for k in final if k.startswith(("model", "optim"))), kept.name


@pytest.mark.parametrize("sets, needle", [(["--set", "augment.crops=contrastive"], "augment.crops"),
                                          (["--set", "monitor.knn_every=1"], "monitor.knn_every"),
                                          (["--set", "monitor.linear_every=1"], "monitor.linear_every")])
def test_what_shards_cannot_do_is_one_line(sets, needle, numbered, tmp_path, capsys):
    code, _, err = run([*TINY, "--data", numbered, "--out", str(tmp_path / "r"), *sets], capsys)
    assert needle in error_line(code, err)
    assert not (tmp_path / "r").exists()


def test_bad_shard_lists_are_one_line(numbered, tmp_path, capsys):
    code, _, err = run([*TINY, "--data", str(tmp_path / "none-{0..3}.tar"), "--out", str(tmp_path / "r")], capsys)
    assert "none-0.tar" in error_line(code, err)
    code, _, err = run([*TINY, "--data", "https://example.invalid/s-{0..3}.tar", "--out", str(tmp_path / "r")],
                       capsys)
    assert "data.shard_samples" in error_line(code, err)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar file at all" * 40)
    code, _, err = run([*TINY, "--data", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert "bad.tar" in error_line(code, err)
    assert not (tmp_path / "r").exists()


def test_views_of_shards(numbered, tmp_path, capsys):
    out = tmp_path / "v.png"
    code, _, err = run(["views", "--source", "webdataset", "--data", numbered, "-n", "3", "--set", "augment.size=16",
                        "--out", str(out)], capsys)
    assert code in (0, None), err
    assert Image.open(out).size[0] > 3 * 16
