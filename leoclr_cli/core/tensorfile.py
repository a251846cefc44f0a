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
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

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
