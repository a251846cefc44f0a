"""The CUDA tier (``pytest -m cuda``): tests marked ``cuda`` are skipped, each with one reason, where
CUDA is absent; the harness parts that mean something on a CPU run there too, unmarked, in the normal
suite (their ``cpu`` parameter)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the tests import cudaharness as a module

NO_CUDA = "CUDA not available (the CUDA tier runs on a GPU machine: pytest -m cuda, or tools/gpu-check)"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
