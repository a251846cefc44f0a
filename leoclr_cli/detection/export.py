"""A torchvision ResNet backbone in Detectron2's names (MoCo's ``convert-pretrain-to-detectron2.py``).

Renaming, in order: keys without ``layer`` get the ``stem.`` prefix; ``layerN`` -> ``res(N+1)``;
``bnK`` -> ``convK.norm``; ``downsample.0`` -> ``shortcut``; ``downsample.1`` -> ``shortcut.norm``.
The classifier (``fc``) is dropped. Detectron2's checkpointer matches the names by suffix
(``matching_heuristics``), so ``res2.0.conv1.weight`` lands on ``backbone.res2.0.conv1.weight`` and
``res5.*`` on ``roi_heads.res5.*`` in the C4 model.

:func:`write_detectron2_pickle` is the only place the project writes a pickle; it never reads one.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..core import checkpoint as ckpt
from ..core.atomic import atomic_write_bytes
from ..errors import UserError

# Detectron2 builds bottleneck ResNets of these depths; R50 is the paper's detector backbone.
DETECTRON2_ARCHS = ("resnet50", "resnet101", "resnet152")


def detectron2_name(key: str) -> str:
    """The Detectron2 name of one torchvision ResNet key (``fc.*`` has none; see :func:`to_detectron2`)."""
    if "layer" not in key:
        key = "stem." + key
    for t in range(1, 5):
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in range(1, 4):
        key = re.sub(rf"\bbn{t}\b", f"conv{t}.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def to_detectron2(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """All backbone tensors under their Detectron2 names, as NumPy arrays; ``fc`` is dropped."""
    return {detectron2_name(k): v.detach().cpu().numpy() for k, v in state.items() if not k.startswith("fc.")}


def detectron2_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """The object Detectron2's ``DetectionCheckpointer`` reads: suffix matching on, no Caffe2 renaming."""
    return {"model": to_detectron2(state), "__author__": "leoclr", "matching_heuristics": True}


def load_detection_backbone(path: Path, archs: tuple[str, ...] = DETECTRON2_ARCHS) -> tuple[dict[str, torch.Tensor],
                                                                                          dict[str, str]]:
    """A backbone.safetensors that a Detectron2 ResNet can take: an ImageNet-stem bottleneck ResNet."""
    arch = ckpt.read_metadata(path, ckpt.KIND_BACKBONE).get("arch")  # before building it (a timm model, ...)
    if arch not in archs:
        need = " or ".join(archs)
        raise UserError(f"checkpoint {path} is a {arch} backbone; detection needs a torchvision {need} "
                        "(Faster R-CNN R50-C4 is built on a ResNet's stages)")
    model, meta = ckpt.load_backbone(path)
    if json.loads(meta.get("cifar_stem", "false")):
        raise UserError(f"checkpoint {path} has the CIFAR stem (3x3 conv, no max-pool); detection needs the "
                        "ImageNet stem")
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, meta


def write_detectron2_pickle(backbone_path: Path, out: Path) -> int:
    """Write ``out`` (a .pkl for Detectron2's ``MODEL.WEIGHTS``) atomically; returns the tensor count."""
    out = Path(out)
    if out.suffix != ".pkl":
        raise UserError(f"--out {out} must end in .pkl (Detectron2 reads the pickle format by that suffix)")
    state, _ = load_detection_backbone(backbone_path)
    obj = detectron2_checkpoint(state)
    atomic_write_bytes(out, pickle.dumps(obj, protocol=4))
    return len(obj["model"])
