"""Learning happens on real pixels: scikit-learn's bundled handwritten digits (1,797 scanned 8x8
images), written as an ImageFolder of JPEGs, pretrained briefly with LeOCLR; under linear evaluation
the pretrained backbone must beat a random-init backbone of the same seed by MARGIN points."""

import json

import pytest
import torch

from leoclr_cli.core import checkpoint as ckpt
from leoclr_cli.evaluate.linear import run_linear_eval
from leoclr_cli.core.nets import build_backbone
from leoclr_cli.workflows.pretrain import run_pretrain
from leoclr_cli.config import load_protocol, protocol_json

MARGIN = 1.0  # percentage points (95.2 pretrained vs 92.5 random init under MoCo's lr 10 on raw features)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    pytest.importorskip("sklearn.datasets")
    from fakedata import make_digits

    return make_digits(tmp_path_factory.mktemp("digits"))


@pytest.mark.xfail(strict=True, reason=(
    "under the well-conditioned probe (feature_norm bn, selected on validation) 4 epochs of LeOCLR on the digits do "
    "not beat random init: SGD probe 93.75-94.25 vs 94.5, L-BFGS probe 95.5 vs 95.0 (8 epochs: 94.25 vs 94.5, "
    "94.75 vs 95.0); the former 95.2 vs 92.5 came from MoCo's lr 10 on raw features, which under-rated the random "
    "backbone (issue 13). Learning on real pixels is issue 13 part 3."))
def test_leoclr_pretraining_beats_random_init_on_digits(digits_folder, tmp_path):
    p = load_protocol("pretrain", None, {
        "data.source": "imagefolder", "data.root": str(digits_folder), "data.split": "train",
        "augment.size": 32, "augment.blur": False, "augment.normalize": "builtin", "augment.crop_scale": [0.4, 1.0],
        "model.arch": "resnet18", "model.bn_splits": 4, "method.name": "leoclr", "method.queue_size": 256,
        "method.momentum": 0.99, "method.temperature": 0.2, "method.queue_init": "keys",
        "optim.batch_size": 64, "optim.epochs": 4, "optim.lr": 0.06, "optim.weight_decay": 5e-4, "device": "cpu"})
    run_pretrain(p, tmp_path / "pre", quiet=True)

    torch.manual_seed(p.seed)
    ckpt.save_backbone(tmp_path / "rand.safetensors", build_backbone("resnet18"), arch="resnet18", cifar_stem=False,
                       method="random-init", epoch=0, protocol_json=protocol_json(p))
    lin = load_protocol("linear-eval", None, {
        "data.source": "imagefolder", "data.root": str(digits_folder), "data.train_split": "train",
        "data.test_split": "val", "transform.size": 32, "transform.resize": 32, "transform.test": "none",
        "transform.normalize": "builtin", "train_augment": "none", "epochs": 60,
        "milestones": [36, 48], "device": "cpu"})
    pre = run_linear_eval(lin, tmp_path / "pre" / "backbone.safetensors", tmp_path / "lin-pre", quiet=True)
    rand = run_linear_eval(lin, tmp_path / "rand.safetensors", tmp_path / "lin-rand", quiet=True)
    print(json.dumps({"pretrained": pre["top1"], "random": rand["top1"]}))
    assert pre["top1"] >= rand["top1"] + MARGIN, (pre["top1"], rand["top1"])
