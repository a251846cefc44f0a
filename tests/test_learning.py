"""Learning happens on real pixels: scikit-learn's bundled handwritten digits (1,797 scanned 8x8
images), written as an ImageFolder of JPEGs, pretrained briefly with LeOCLR and with MoCo-v2 (the
same hyper-parameters for both).

What is asserted is that each method learns its own task on real images: within 3 epochs its
per-term InfoNCE loss falls clearly below log(K + 1), the loss of an encoder that cannot tell its
positive from the K queued keys, and the positive wins among the K + 1 candidates many times more
often than chance.

What is measured and NOT asserted, because at this budget it does not hold (the README says the
same of the built-in data): that the pretrained backbone beats a random-init backbone of the same
seed on held-out images. Linear probe (feature_norm bn, selected on validation), LeOCLR 4 epochs:
SGD 93.75-94.25 vs 94.5, L-BFGS 95.5 vs 95.0. Nearest-original retrieval of a random crop among the
400 held-out originals (cosine on backbone features): random init 20.8 %, LeOCLR 15.5 % after 3
epochs and 13.8 % after 10, MoCo-v2 13.3 % after 10.
"""

import math

import pytest

from leoclr_cli.config import load_protocol
from leoclr_cli.core.engine import read_metrics
from leoclr_cli.workflows.pretrain import run_pretrain

QUEUE = 256


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    pytest.importorskip("sklearn.datasets")
    from fakedata import make_digits

    return make_digits(tmp_path_factory.mktemp("digits"))


@pytest.mark.parametrize("method, terms", [("leoclr", 2), ("mocov2", 1)])
def test_contrastive_task_is_learned_on_real_digits(digits_folder, tmp_path, method, terms):
    p = load_protocol("pretrain", None, {
        "data.source": "imagefolder", "data.root": str(digits_folder), "data.split": "train",
        "augment.size": 32, "augment.blur": False, "augment.normalize": "builtin",
        "model.arch": "resnet18", "model.bn_splits": 4, "method.name": method, "method.queue_size": QUEUE,
        "method.momentum": 0.99, "method.temperature": 0.2, "method.queue_init": "keys",
        "optim.batch_size": 64, "optim.epochs": 3, "optim.lr": 0.06, "optim.weight_decay": 5e-4, "device": "cpu"})
    run_pretrain(p, tmp_path / "pre", quiet=True)
    epochs = [r for r in read_metrics(tmp_path / "pre" / "metrics.jsonl") if "loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    first, last = epochs[0], epochs[-1]
    chance_loss, chance_acc = math.log(QUEUE + 1), 100 / (QUEUE + 1)  # acc is a percent
    print(method, {"loss_per_term": [r["loss"] / terms for r in epochs], "acc": [r["acc"] for r in epochs]})
    assert last["loss"] / terms < chance_loss - 0.15, (last["loss"] / terms, chance_loss)
    assert last["loss"] < first["loss"]
    assert last["acc"] > 8 * chance_acc and last["acc"] > first["acc"], (first["acc"], last["acc"])
