"""``leoclr import``: a foreign ``.pth`` / ``.pth.tar`` backbone (MoCo's releases, torchvision state
dicts) converted to ``backbone.safetensors`` without running code from the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import RESNETS
from ..errors import UserError
from .backbone import load_fitting, save_backbone
from .nets import build_backbone


#: key prefixes of released checkpoints, tried in order: MoCo v1/v2 (DataParallel or not), MoCo v3,
#: a DataParallel torchvision model, a wrapped ``backbone``, plain torchvision keys
IMPORT_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.", "module.",
                   "backbone.", "")


def import_torch_checkpoint(src: Path, out: Path, *, arch: Optional[str] = None) -> dict[str, Any]:
    """Convert a foreign ``.pth``/``.pth.tar`` (e.g. MoCo's releases) to ``backbone.safetensors``.

    The file is read with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
    containers and refuses any other object, so importing never runs code from the file. The query
    encoder (``module.encoder_q.*``) or plain torchvision keys become the backbone; ``fc`` (the
    classifier or MoCo-v2's projection head) is dropped. ``arch`` defaults to the file's ``arch``.
    """

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise UserError(f"{src} does not exist")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code-carrying pickles, RuntimeError/EOFError for junk
        raise UserError(_refusal(src, e)) from None
    state = obj
    if isinstance(obj, dict):
        state = next((obj[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(obj.get(k), dict)), obj)
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{src} holds no state dict of tensors (looked at the file, 'state_dict' and 'model')")
    prefix = next((p for p in IMPORT_PREFIXES if f"{p}conv1.weight" in state), None)
    if prefix is None:
        raise UserError(f"{src} has no ResNet backbone: no key ends in 'conv1.weight' under any of the prefixes "
                        f"{', '.join(repr(p) for p in IMPORT_PREFIXES[:-1])} or none")
    tensors = {k[len(prefix):]: v for k, v in state.items()
               if isinstance(k, str) and k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}
    odd = next((k for k, v in tensors.items() if not torch.is_tensor(v)), None)
    if odd is not None:
        raise UserError(f"{src}: '{prefix}{odd}' holds a Python {type(tensors[odd]).__name__}, not a tensor")
    if arch is None:
        arch = obj.get("arch") if isinstance(obj, dict) and isinstance(obj.get("arch"), str) else None
        if arch not in RESNETS:
            raise UserError(f"{src} does not name its arch; give --arch (one of {', '.join(RESNETS)})")
    elif arch not in RESNETS:
        raise UserError(f"unknown arch '{arch}'; choose one of {', '.join(RESNETS)}")
    cifar_stem = tensors["conv1.weight"].ndim == 4 and tensors["conv1.weight"].shape[-1] == 3
    model = build_backbone(arch, cifar_stem=cifar_stem)
    load_fitting(model, tensors, src, arch, prefix)
    epoch = obj.get("epoch", 0) if isinstance(obj, dict) else 0
    save_backbone(out, model, arch=arch, cifar_stem=cifar_stem, method="imported",
                  epoch=epoch if type(epoch) is int and 0 <= epoch < 10**9 else 0, protocol_json="{}",
                  extra_meta={"imported_from": str(src), "imported_prefix": prefix})
    return {"arch": arch, "cifar_stem": cifar_stem, "prefix": prefix, "tensors": len(tensors), "out": str(out)}


def _refusal(src: Path, e: Exception) -> str:
    """One sentence for what ``torch.load(weights_only=True)`` refused: the global a pickle needed
    (torch's own text is a page of advice with terminal escape codes), else its first sentence."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"{src} cannot be imported: torch.load(weights_only=True) refused the Python global "
                f"'{found[1]}' it needs")
    unpickler = re.search(r"WeightsUnpickler error: ([^\n]*?)(?:\.\s|\.?$)", text, re.M)
    first = unpickler[1] if unpickler else re.split(r"(?<=[a-z])\.\s", text.strip(), maxsplit=1)[0].strip()
    return (f"{src} cannot be imported: torch.load(weights_only=True) cannot read it "
            f"({(first or type(e).__name__)[:200].rstrip('.')})")

