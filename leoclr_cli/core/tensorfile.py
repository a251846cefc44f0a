"""The safetensors file format of every file the project writes or reads as weights.

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
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from pydantic import ValidationError

from ..config import PROTOCOLS, RESNETS, TIMM_PREFIX, format_validation_error, timm_kwargs_problem, without_runtime
from ..errors import UserError
from .atomic import atomic_write_bytes

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
        parsed = _json(header)
        if not isinstance(parsed, dict):
            raise UserError(f"checkpoint {path} is not a readable safetensors file (its header is not a JSON object)")
        problem = _header_problem(parsed)
        if problem is not None:
            raise UserError(f"checkpoint {path} is not a readable safetensors file ({problem})")
        ends = [e["data_offsets"][1] for k, e in parsed.items() if k != "__metadata__"]
        expected = 8 + n + max(ends, default=0)
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


#: safetensors' dtype names and their sizes in bytes
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
#: the dtypes a weight (a floating-point parameter or buffer) may have in a file we read
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: the deepest JSON a header or a metadata value may nest (a safetensors header nests 3 deep, a protocol 4)
MAX_JSON_DEPTH = 32


def _json(text: bytes | str) -> Any:
    """``json.loads`` of a header or a metadata value; None when it is not JSON or nests deeper than
    :data:`MAX_JSON_DEPTH` (checked before parsing, so a hostile depth costs one pass over the bytes)."""
    raw = text.encode() if isinstance(text, str) else text
    if _depth(raw) > MAX_JSON_DEPTH:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _depth(raw: bytes) -> int:
    """The bracket nesting of JSON text (brackets inside strings are skipped), stopping past the bound."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _header_problem(parsed: dict[str, Any]) -> Optional[str]:
    """What is malformed in a parsed safetensors header (None: nothing): the metadata must map strings to
    strings, every tensor entry name a known dtype, a shape of non-negative integers and ``data_offsets``
    [begin, end] of exactly its bytes, the entries tiling the data without overlap."""
    meta = parsed.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return "its __metadata__ is not a mapping of strings to strings"
    spans = []
    for key, entry in parsed.items():
        if key == "__metadata__":
            continue
        name = key if len(key) <= 60 else key[:57] + "..."
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            return f"the entry of '{name}' is not a mapping of dtype, shape and data_offsets"
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            return f"'{name}' has an unknown dtype"
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                type(d) is int and 0 <= d < 2**40 for d in shape):
            return f"'{name}' has a shape that is not a list of at most 8 non-negative integers"
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
                type(o) is int and 0 <= o < 2**50 for o in offsets) or offsets[0] > offsets[1]:
            return f"'{name}' has data_offsets that are not two integers [begin, end] with begin <= end"
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * DTYPE_BYTES[dtype]:
            return f"'{name}' has data_offsets that do not span its shape's bytes"
        spans.append((offsets[0], offsets[1]))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            return "its tensors' data_offsets leave gaps or overlap"
        end = stop
    return None


def require_weights(tensors: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor], path: Path,
                    prefix: str = "") -> None:
    """Refuse, naming the key (shown with ``prefix``), a tensor whose dtype is not its model's kind (a
    floating-point weight must be float16, bfloat16, float32 or float64; an integer buffer such as BN's
    ``num_batches_tracked`` an integer) or a weight that is NaN or infinite."""
    for key, want in model_state.items():
        got = tensors.get(key)
        if got is None:
            continue
        if want.is_floating_point():
            if got.dtype not in FLOAT_DTYPES:
                raise UserError(f"{path}: '{prefix}{key}' is {str(got.dtype).replace('torch.', '')}, a weight must "
                                "be float16, bfloat16, float32 or float64")
            if not bool(torch.isfinite(got).all()):
                what = "NaN" if bool(torch.isnan(got).any()) else "infinite"
                raise UserError(f"{path}: '{prefix}{key}' holds {what} values; these weights cannot be trained or "
                                "evaluated (a diverged run?)")
        elif got.dtype != want.dtype:
            raise UserError(f"{path}: '{prefix}{key}' is {str(got.dtype).replace('torch.', '')}, "
                            f"{str(want.dtype).replace('torch.', '')} is needed")


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
        raise UserError(f"checkpoint {path} holds a '{_short(meta['kind'])}', but a '{expect_kind}' is needed here")
    problem = _metadata_problem(meta)
    if problem is not None:
        if not with_tensors:
            verify(path)  # damage has its own sentence
        raise UserError(f"checkpoint {path} has malformed metadata: {problem}")
    return tensors, meta


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: metadata fields that hold JSON, and those that hold a count
_JSON_FIELDS = ("protocol", "cifar_stem", "optimizer", "rng", "extra", "cells", "normalize_mean", "normalize_std",
                "timm_kwargs")
_COUNT_FIELDS = ("epoch", "step", "num_classes", "seed")


def _metadata_problem(meta: dict[str, str]) -> Optional[str]:
    """What is malformed in the metadata of a leoclr file (None: nothing): counts must be decimal integers,
    JSON fields JSON, ``arch`` a known one, and ``protocol`` a protocol of the kind it claims, valid as the
    run that wrote it would have been (the same schema, :data:`~..config.PROTOCOLS`)."""
    for key in _COUNT_FIELDS:
        value = meta.get(key)
        if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 12):
            return f"'{key}' is {_short(repr(value))}, not a non-negative integer"
    for key in _JSON_FIELDS:
        if key in meta and _json(meta[key]) is None and meta[key] != "null":
            return f"'{key}' is not JSON"
    if "cifar_stem" in meta and meta["cifar_stem"] not in ("true", "false"):
        return "'cifar_stem' is neither true nor false"
    if "arch" in meta and meta["arch"] not in RESNETS:
        if not meta["arch"].startswith(TIMM_PREFIX):
            return f"'arch' is {_short(repr(meta['arch']))}, not one of {', '.join(RESNETS)} or timm:NAME"
        problem = timm_kwargs_problem(_json(meta.get("timm_kwargs", "{}")))
        if problem:
            return f"'timm_kwargs': {problem}"
    protocol = _json(meta["protocol"]) if "protocol" in meta else {}
    if not isinstance(protocol, dict):
        return "'protocol' is not a JSON object"
    kind = protocol.get("kind")
    if kind in PROTOCOLS:
        try:
            PROTOCOLS[kind].model_validate(without_runtime(protocol))
        except ValidationError as e:
            return f"'protocol' is not a valid {kind} protocol ({format_validation_error(e, 'protocol')})"
    elif kind is not None and kind != "random-init":
        return f"'protocol' names no known kind of run ({_short(repr(kind))})"
    return None
