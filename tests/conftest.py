import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests import fakedata as a module

torch.set_num_threads(2)


@pytest.fixture
def tiny_model_cfg():
    from leoclr_cli.schema import ModelConfig

    return ModelConfig(arch="resnet18", dim=8, bn_splits=2)
