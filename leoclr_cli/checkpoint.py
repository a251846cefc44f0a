"""Every file the project writes or reads as weights: safetensors only.

* ``backbone.safetensors``: torchvision key names (``conv1.weight``, ``layer1.0.bn1.running_mean``,
  no ``fc``), so ``torchvision.models.resnet50().load_state_dict(load_file(p), strict=False)``
  leaves only ``fc.*`` missing. The header carries the metadata (format version, kind, arch,
  cifar_stem, method, epoch, the protocol as JSON).
* training state (``checkpoints/state_eNNNN.safetensors``): model and optimizer tensors, the
  RNG states, and the non-tensor parts as JSON in the header.

Writes go to a temporary file in the same directory, are fsynced and renamed over the target,
so a crash leaves either the old file or the new one. Reading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .errors import UserError

FORMAT_VERSION = "1"
KIND_BACKBONE = "backbone"
KIND_STATE = "train-state"
KIND_LINEAR = "linear-classifier"


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` (made contiguous, on CPU) with string ``metadata``."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format_version": FORMAT_VERSION, **{k: str(v) for k, v in metadata.items()}}
    atomic_write_bytes(path, st_save(clean, metadata=meta))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (ties a linear classifier to the exact backbone it was trained on)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(path: Path, expect_kind: Optional[str] = None) -> dict[str, str]:
    """The header of a leoclr safetensors file, without reading its tensors."""
    return _read(path, expect_kind, with_tensors=False)[1]


def load_tensors(path: Path, expect_kind: Optional[str] = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by this project; one clear sentence for anything else."""
    return _read(path, expect_kind, with_tensors=True)


def _read(path: Path, expect_kind: Optional[str], with_tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if "format_version" not in meta or "kind" not in meta:
        raise UserError(f"checkpoint {path} was not written by leoclr (its header has no leoclr metadata)")
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {meta['format_version']}, this leoclr reads {FORMAT_VERSION}")
    if expect_kind is not None and meta["kind"] != expect_kind:
        raise UserError(f"checkpoint {path} holds a '{meta['kind']}', but a '{expect_kind}' is needed here")
    return tensors, meta


# --------------------------------------------------------------------------- backbones


def save_backbone(path: Path, backbone: torch.nn.Module, *, arch: str, cifar_stem: bool, method: str,
                  epoch: int, protocol_json: str) -> None:
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    save_tensors(path, state, {
        "kind": KIND_BACKBONE, "arch": arch, "cifar_stem": json.dumps(cifar_stem), "method": method,
        "epoch": str(epoch), "protocol": protocol_json,
    })


def load_backbone(path: Path, expect_arch: Optional[str] = None) -> tuple[torch.nn.Module, dict[str, str]]:
    """Build the torchvision ResNet named in the header and load the weights strictly (fc excepted)."""
    from .nets import build_backbone

    tensors, meta = load_tensors(path, KIND_BACKBONE)
    arch = meta.get("arch", "")
    if expect_arch is not None and arch != expect_arch:
        raise UserError(f"checkpoint {path} is a {arch} backbone, but {expect_arch} is needed here")
    try:
        model = build_backbone(arch, cifar_stem=json.loads(meta.get("cifar_stem", "false")))
    except ValueError:
        raise UserError(f"checkpoint {path} names an unknown arch '{arch}'") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise UserError(f"checkpoint {path} does not match a {arch}: "
                        f"{'missing' if missing else 'unexpected'} key '{bad}'")
    return model, meta


# --------------------------------------------------------------------------- training state


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
                     protocol_json: str, extra: Optional[dict[str, Any]] = None) -> None:
    """Everything needed to continue after ``epoch`` completed epochs, bit-exactly on CPU."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_info = flatten_optimizer(optimizer)
    rng_t, rng_info = rng_state()
    tensors.update(opt_t)
    tensors.update(rng_t)
    save_tensors(path, tensors, {
        "kind": KIND_STATE, "epoch": str(epoch), "protocol": protocol_json,
        "optimizer": json.dumps(opt_info), "rng": json.dumps(rng_info), "extra": json.dumps(extra or {}),
    })


def load_train_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     protocol_json: str) -> tuple[int, dict[str, Any]]:
    """Restore model, optimizer and RNGs; returns (completed epochs, extra). Refuses another protocol."""
    tensors, meta = load_tensors(path, KIND_STATE)
    if json.loads(meta["protocol"]) != json.loads(protocol_json):
        theirs, ours = json.loads(meta["protocol"]), json.loads(protocol_json)
        diff = _first_difference(theirs, ours)
        raise UserError(f"checkpoint {path} was made with a different protocol (field '{diff}' differs); "
                        "resume with the protocol it was made with")
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not fit this model ({str(e).splitlines()[0]})") from None
    optimizer.load_state_dict(unflatten_optimizer(
        {k: v for k, v in tensors.items() if k.startswith("optim.")}, json.loads(meta["optimizer"])))
    set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, json.loads(meta["rng"]))
    return int(meta["epoch"]), json.loads(meta.get("extra", "{}"))


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "(root)"


def state_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"state_e{epoch:04d}.safetensors"


def latest_state(run_dir: Path) -> Optional[Path]:
    found = sorted((Path(run_dir) / "checkpoints").glob("state_e*.safetensors"))
    return found[-1] if found else None


def prune_states(run_dir: Path, keep: int) -> None:
    found = sorted((Path(run_dir) / "checkpoints").glob("state_e*.safetensors"))
    for old in found[:-keep]:
        old.unlink(missing_ok=True)
