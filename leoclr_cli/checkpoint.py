"""Every file the project writes or reads as weights: safetensors only.

* ``backbone.safetensors``: torchvision key names (``conv1.weight``, ``layer1.0.bn1.running_mean``,
  no ``fc``), so ``torchvision.models.resnet50().load_state_dict(load_file(p), strict=False)``
  leaves only ``fc.*`` missing. The header carries the metadata (format version, kind, arch,
  cifar_stem, method, epoch, the protocol as JSON).
* training state (``checkpoints/state_eNNNN.safetensors`` after NNNN epochs, or
  ``state_eNNNN_sSSSSSS.safetensors`` after SSSSSS more steps of the next epoch): model and
  optimizer tensors, the RNG states, the partial epoch's metric sums, any task/dataset extra
  state, and the non-tensor parts as JSON in the header.

Writes go to a temporary file in the same directory, are fsynced and renamed over the target
(and the directory fsynced), so a crash leaves either the old file or the new one; a failed write
(disk full, read-only directory) is one :class:`UserError` and leaves the old file as it was.
Every file carries ``sha256``, a SHA-256 of the whole file with that value blanked, checked
before any tensor is used: a truncated or altered file is refused in one sentence. Reading never
unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .atomic import atomic_write_bytes, remove_temporaries
from .errors import UserError
from .nets import build_backbone, parse_random
from .schema import RESNETS

FORMAT_VERSION = "1"
KIND_BACKBONE = "backbone"
KIND_STATE = "train-state"
KIND_LINEAR = "linear-classifier"


CHECKSUM_KEY = "sha256"
_BLANK = b'"' + CHECKSUM_KEY.encode() + b'":"' + b"0" * 64 + b'"'


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` (made contiguous, on CPU) with string ``metadata`` and a checksum."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format_version": FORMAT_VERSION, **{k: str(v) for k, v in metadata.items()}, CHECKSUM_KEY: "0" * 64}
    data = memoryview(st_save(clean, metadata=meta))
    n = int.from_bytes(data[:8], "little")
    header = _canonical_header(bytes(data[8 : 8 + n]))
    assert header.count(_BLANK) == 1  # JSON escapes quotes inside values: only the key itself matches
    digest = hashlib.sha256(header)
    digest.update(data[8 + n :])
    signed = header.replace(_BLANK, _BLANK[:-65] + digest.hexdigest().encode() + b'"')
    atomic_write_bytes(path, len(signed).to_bytes(8, "little"), signed, data[8 + n :])


def _canonical_header(header: bytes) -> bytes:
    """The header with its metadata keys sorted (safetensors writes them from a hash map, in another
    order each process), padded with spaces to a multiple of 8 as safetensors does: the same tensors
    and metadata give the same bytes, so a reproduction can be checked with a hash."""
    parsed = json.loads(header)
    parsed["__metadata__"] = dict(sorted(parsed["__metadata__"].items()))
    text = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)


#: safetensors refuses headers above 100 MB; a larger length field means the file is something else
MAX_HEADER = 100_000_000


def verify(path: Path, contents: bool = True) -> None:
    """Refuse a damaged file in one sentence, one wording per kind of damage: empty, truncated, not
    safetensors at all, and (``contents``: the bytes against the checksum written with them; files
    without one pass) altered."""
    try:
        _verify(path, contents)
    except OSError as e:
        raise UserError(f"checkpoint {path} could not be read ({e.strerror or e})") from None


def _verify(path: Path, contents: bool) -> None:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise UserError(f"checkpoint {path} is empty (0 bytes); use an earlier checkpoint or start over")
        n = int.from_bytes(f.read(8), "little")
        if size >= 8 and n > MAX_HEADER:
            raise UserError(f"checkpoint {path} is not a readable safetensors file "
                            "(its first 8 bytes are no header length)")
        if size < 8 or n > size - 8:
            raise UserError(f"checkpoint {path} is truncated ({size} bytes, its header alone needs {8 + n}); "
                            "use an earlier checkpoint or start over")
        header = f.read(n)
        try:
            parsed = json.loads(header)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UserError(f"checkpoint {path} is not a readable safetensors file (its header is not a JSON object)")
        ends = [e["data_offsets"][1] for k, e in parsed.items()
                if k != "__metadata__" and isinstance(e, dict) and len(e.get("data_offsets", ())) == 2]
        expected = 8 + n + max([e for e in ends if isinstance(e, int)], default=0)
        if size < expected:
            raise UserError(f"checkpoint {path} is truncated ({size} of {expected} bytes); "
                            "use an earlier checkpoint or start over")
        meta = parsed.get("__metadata__")
        digest = meta.get(CHECKSUM_KEY) if isinstance(meta, dict) else None
        if not contents or not isinstance(digest, str):
            return
        mine = b'"' + CHECKSUM_KEY.encode() + b'":"' + digest.encode() + b'"'
        h = hashlib.sha256(header.replace(mine, _BLANK))
        while chunk := f.read(1 << 24):
            h.update(chunk)
    if h.hexdigest() != digest or size != expected:
        raise UserError(f"checkpoint {path} is corrupted: its contents do not match the checksum written with it "
                        "(altered since it was saved); use an earlier checkpoint or start over")


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
    verify(path, contents=with_tensors)  # the header is checked for every read, the bytes before tensors are used
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
                  epoch: int, protocol_json: str, extra_meta: Optional[dict[str, str]] = None) -> None:
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    save_tensors(path, state, {
        "kind": KIND_BACKBONE, "arch": arch, "cifar_stem": json.dumps(cifar_stem), "method": method,
        "epoch": str(epoch), "protocol": protocol_json, **(extra_meta or {}),
    })


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
               if k.startswith(prefix) and torch.is_tensor(v) and not k[len(prefix):].startswith("fc.")}
    if arch is None:
        arch = obj.get("arch") if isinstance(obj, dict) and isinstance(obj.get("arch"), str) else None
        if arch not in RESNETS:
            raise UserError(f"{src} does not name its arch; give --arch (one of {', '.join(RESNETS)})")
    elif arch not in RESNETS:
        raise UserError(f"unknown arch '{arch}'; choose one of {', '.join(RESNETS)}")
    cifar_stem = tensors["conv1.weight"].shape[-1] == 3
    model = build_backbone(arch, cifar_stem=cifar_stem)
    load_fitting(model, tensors, src, arch, prefix)
    epoch = obj.get("epoch", 0) if isinstance(obj, dict) else 0
    save_backbone(out, model, arch=arch, cifar_stem=cifar_stem, method="imported",
                  epoch=int(epoch) if isinstance(epoch, int) else 0, protocol_json="{}",
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


def load_backbone(path: Path, expect_arch: Optional[str] = None) -> tuple[torch.nn.Module, dict[str, str]]:
    """Build the torchvision ResNet named in the header and load the weights strictly (fc excepted)."""

    tensors, meta = load_tensors(path, KIND_BACKBONE)
    arch = meta.get("arch", "")
    if expect_arch is not None and arch != expect_arch:
        raise UserError(f"checkpoint {path} is a {arch} backbone, but {expect_arch} is needed here")
    try:
        model = build_backbone(arch, cifar_stem=json.loads(meta.get("cifar_stem", "false")))
    except ValueError:
        raise UserError(f"checkpoint {path} names an unknown arch '{arch}'") from None
    load_fitting(model, tensors, path, arch)
    return model, meta


def load_fitting(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, arch: str,
                 prefix: str = "") -> None:
    """Load ``tensors`` into ``model`` strictly; the first missing, unexpected or misshapen key
    (shown with ``prefix``, its name in the file) is one sentence."""
    expected = model.state_dict()
    for key, val in expected.items():
        if key not in tensors:
            raise UserError(f"{path} does not match a {arch}: missing key '{prefix}{key}'")
        if tensors[key].shape != val.shape:
            raise UserError(f"{path} does not match a {arch}: '{prefix}{key}' has shape {tuple(tensors[key].shape)}, "
                            f"a {arch} needs {tuple(val.shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise UserError(f"{path} does not match a {arch}: unexpected key '{prefix}{extra[0]}'")
    model.load_state_dict(tensors, strict=True)


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
    theirs, ours = (without_runtime(json.loads(text)) for text in (meta["protocol"], protocol_json))
    if theirs != ours:
        diff = first_difference(theirs, ours)
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
    extra = json.loads(meta.get("extra", "{}"))
    extra["step"] = int(meta.get("step", "0"))
    extra["tensors"] = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return int(meta["epoch"]), extra


#: protocol fields that set how fast a run goes, not what it computes: a resume may change them
RUNTIME_FIELDS = ("threads",)


def without_runtime(protocol: Any) -> Any:
    return {k: v for k, v in protocol.items() if k not in RUNTIME_FIELDS} if isinstance(protocol, dict) else protocol


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "(root)"


_STATE_NAME = re.compile(r"state_e(\d+)(?:_s(\d+))?\.safetensors")


def state_path(run_dir: Path, epoch: int, step: int = 0) -> Path:
    """``state_eNNNN`` after NNNN epochs; ``state_eNNNN_sSSSSSS`` after SSSSSS more steps of the next."""
    name = f"state_e{epoch:04d}" + (f"_s{step:06d}" if step else "") + ".safetensors"
    return Path(run_dir) / "checkpoints" / name


def list_states(run_dir: Path) -> list[Path]:
    """The run's training states, oldest first (by epoch, then step; temporary files excluded)."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("state_e*.safetensors"):
        m = _STATE_NAME.fullmatch(path.name)
        if m:
            found.append(((int(m[1]), int(m[2] or 0)), path))
    return [path for _, path in sorted(found)]


def latest_state(run_dir: Path) -> Optional[Path]:
    found = list_states(run_dir)
    return found[-1] if found else None


def prune_states(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` states; also remove temporary files left by a killed write."""
    for old in list_states(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    remove_temporaries(Path(run_dir) / "checkpoints")


def random_backbone_file(spec: str, seed: int, path: Path) -> Path:
    """Write the random-init backbone ``spec`` of ``seed`` (torch.manual_seed(seed), then the torchvision init)
    to ``path`` as a backbone.safetensors with method ``random-init``; an existing file of the same spec and seed
    is reused as it is."""
    arch, cifar_stem = parse_random(spec)
    path = Path(path)
    if path.is_file():
        meta = read_metadata(path, KIND_BACKBONE)
        if (meta.get("method"), meta.get("arch"), meta.get("cifar_stem"), meta.get("seed")) != \
                ("random-init", arch, json.dumps(cifar_stem), str(seed)):
            raise UserError(f"{path} exists and is not the {spec} backbone of seed {seed}; move it or choose "
                            "another --out")
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(arch, cifar_stem=cifar_stem)
    save_backbone(path, model, arch=arch, cifar_stem=cifar_stem, method="random-init", epoch=0,
                  protocol_json=json.dumps({"kind": "random-init", "seed": seed,
                                            "model": {"arch": arch, "cifar_stem": cifar_stem}}),
                  extra_meta={"seed": str(seed)})
    return path
