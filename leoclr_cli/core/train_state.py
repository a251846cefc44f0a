"""Training state: everything needed to continue a run bit-exactly (model and optimizer tensors, the RNG
states, the engine's extra state) in one safetensors file, and the protocol check of a resume. Where
the state files go and how they are named, listed and pruned: :mod:`.rundir`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import comparable, first_difference
from ..errors import UserError
from .tensorfile import KIND_STATE, load_tensors, save_tensors


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    for idx, st in info["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": info["param_groups"]}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every global RNG a run draws from (Python's ``random``, NumPy's, torch's on every device), so two
    runs of one protocol write the same files; ``deterministic``: torch's deterministic kernels too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    info = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": json.loads(json.dumps(random.getstate()))}
    return tensors, info


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    name, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))


def save_train_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                     protocol_json: str, extra: Optional[dict[str, Any]] = None, step: int = 0,
                     extra_tensors: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Everything needed to continue after ``epoch`` completed epochs and ``step`` batches of the
    next one, bit-exactly on CPU. ``extra`` (JSON) and ``extra_tensors`` are the engine's own."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_info = flatten_optimizer(optimizer)
    rng_t, rng_info = rng_state()
    tensors.update(opt_t)
    tensors.update(rng_t)
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    save_tensors(path, tensors, {
        "kind": KIND_STATE, "epoch": str(epoch), "step": str(step), "protocol": protocol_json,
        "optimizer": json.dumps(opt_info), "rng": json.dumps(rng_info), "extra": json.dumps(extra or {}),
    })


def load_train_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     protocol_json: str) -> tuple[int, dict[str, Any]]:
    """Restore model, optimizer and RNGs; returns (completed epochs, extra). ``extra["step"]`` is the
    number of batches done in the next epoch, ``extra["tensors"]`` the saved ``extra_tensors``.
    Refuses a file made with another protocol."""
    tensors, meta = load_tensors(path, KIND_STATE)
    theirs, ours = (comparable(json.loads(text)) for text in (meta["protocol"], protocol_json))
    if theirs != ours:
        diff = first_difference(theirs, ours)
        raise UserError(f"checkpoint {path} was made with a different protocol (field '{diff}' differs); "
                        "resume with the protocol it was made with, or start the run over with --force")
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not fit this model ({str(e).splitlines()[0]})") from None
    optimizer.load_state_dict(unflatten_optimizer(
        {k: v for k, v in tensors.items() if k.startswith("optim.")}, json.loads(meta["optimizer"])))
    set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, json.loads(meta["rng"]))
    extra = json.loads(meta.get("extra", "{}"))
    extra["step"] = int(meta.get("step", "0"))
    extra["tensors"] = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return int(meta["epoch"]), extra
