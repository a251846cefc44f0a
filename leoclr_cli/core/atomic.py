"""Atomic file writes: a fsynced temporary file renamed over the target, so a kill leaves either the old
file or the new one, never half of one. A leaf module (it imports only errors.py): the protocol
loader, checkpoints, run directories and reports all write through it."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import UserError


def atomic_write_bytes(path: Path, *chunks: bytes | memoryview) -> None:
    """Write ``chunks`` to ``path`` via a fsynced temporary file and a rename; an OSError (disk full,
    read-only directory) becomes one UserError and the previous ``path`` is left untouched."""
    path = Path(path)
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise UserError(f"could not write {path}: {e.strerror or e} (nothing was overwritten; "
                            "the files written before are intact)") from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


#: the name :func:`atomic_write_bytes` gives its temporary file: ``.NAME.XXXXXXXX.tmp`` (mkstemp's 8 characters)
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files of writes that a kill interrupted (none is ever complete)."""
    if Path(folder).is_dir():
        for path in Path(folder).iterdir():
            if _TEMPORARY.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
