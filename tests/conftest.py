import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests import fakedata as a module

torch.set_num_threads(2)


@pytest.fixture
def tiny_model_cfg():
    from leoclr_cli.config import ModelConfig

    return ModelConfig(arch="resnet18", dim=8, bn_splits=2)


@pytest.fixture(scope="session")
def random_backbone(tmp_path_factory):
    """A randomly initialised resnet18 backbone.safetensors whose pretraining protocol names the
    built-in data at 32 px (so evaluation commands derive their data defaults from it)."""
    from leoclr_cli.core import checkpoint as ckpt
    from leoclr_cli.core.nets import build_backbone
    from leoclr_cli.config import PretrainProtocol, protocol_json

    torch.manual_seed(0)
    p = PretrainProtocol.model_validate({"augment": {"size": 32, "normalize": "builtin"}, "model": {"arch": "resnet18"},
                                         "data": {"builtin_train": 100, "builtin_test": 30}})
    path = tmp_path_factory.mktemp("backbone") / "backbone.safetensors"
    ckpt.save_backbone(path, build_backbone("resnet18"), arch="resnet18", cifar_stem=False, method="leoclr", epoch=0,
                       protocol_json=protocol_json(p))
    return path


@pytest.fixture
def small_probe(monkeypatch):
    """The quickstart's probe reads the protocol's built-in counts instead of its 10,000 / 5,000 images."""
    monkeypatch.setattr("leoclr_cli.workflows.quickstart.PROBE_IMAGES", (0, 0))
