"""Pretraining objectives by name. Each is a small module: views in, (loss, stats) out."""

from __future__ import annotations

from ..schema import MethodConfig, ModelConfig
from .leoclr import LeOCLR
from .momentum import MomentumContrast
from .mocov2 import MoCoV2

METHODS: dict[str, type[MomentumContrast]] = {"mocov2": MoCoV2, "leoclr": LeOCLR}


def build_method(model: ModelConfig, method: MethodConfig) -> MomentumContrast:
    return METHODS[method.name](model, method)
