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


def build_method(model: ModelConfig, method: MethodConfig, local_crops: int = 0) -> ContrastiveMethod:
    """The method ``method.name``; ``local_crops`` (``augment.local_crops``) for LeOCLR's multi-crop, which
    the protocol allows only for :data:`~..config.LOCAL_CROP_METHODS`."""
    if local_crops:
        return METHODS[method.name](model, method, local_crops=local_crops)  # type: ignore[call-arg]
    return METHODS[method.name](model, method)
