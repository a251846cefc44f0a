"""Pretraining objectives by name. Each is a small module: views in, (loss, stats) out."""

from __future__ import annotations

from ..config import MethodConfig, ModelConfig
from .base import ContrastiveMethod
from .leoclr import LeOCLR
from .leoclr_attract_all import LeOCLRAttractAll
from .leoclr_e2e import LeOCLRE2E
from .leoclr_random_original import LeOCLRRandomOriginal
from .momentum import MomentumContrast
from .mocov2 import MoCoV2
from .simclr import SimCLR

METHODS: dict[str, type[ContrastiveMethod]] = {
    "mocov2": MoCoV2,
    "leoclr": LeOCLR,
    "simclr": SimCLR,
    "leoclr-e2e": LeOCLRE2E,
    "leoclr-random-original": LeOCLRRandomOriginal,
    "leoclr-attract-all": LeOCLRAttractAll,
}


def build_method(model: ModelConfig, method: MethodConfig) -> ContrastiveMethod:
    return METHODS[method.name](model, method)
