"""Every file write of a run: atomic writes (a fsynced temporary file renamed over the target, so a kill
leaves either the old file or the new one, never half of one) and appends (:func:`append_text`, for
``metrics.jsonl``), each turning a full disk, a read-only mount or a denied permission into one
:class:`UserError` sentence. A leaf module (it imports only errors.py): the protocol loader,
checkpoints, run directories, the engine and reports all write through it.

A temporary file carries the id of the process writing it (``.NAME.PID.XXXXXXXX.tmp``), so
:func:`remove_temporaries` removes only those of this process or of a process that is gone, never those
of a writer still at work. Every file is written with the same mode, ``0o666`` less the umask (what
``open()`` gives), whether it was renamed into place or appended to."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..errors import UserError

#: the errno values a write meets when the disk is full, the mount read-only or the permission denied
WRITE_FAULTS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM, errno.EFBIG)


def write_failure(path: Path | str, e: OSError, kept: str = "the files written before are intact") -> UserError:
    """The one sentence for a write of ``path`` that failed with ``e``."""
    return UserError(f"could not write {path}: {e.strerror or e} (nothing was overwritten; {kept})")


def as_user_error(e: BaseException) -> UserError:
    """``e`` itself if it is a UserError, the one sentence of a failed write if it is one (disk full, read-only
    mount, permission denied); anything else is raised again."""
    if isinstance(e, UserError):
        return e
    if isinstance(e, OSError) and e.errno in WRITE_FAULTS:
        return write_failure(e.filename or "a file", e)
    raise e


@contextmanager
def writing(what: Path | str) -> Iterator[None]:
    """Turn a failed write inside (disk full, read-only mount, permission denied) into one sentence
    naming the file (``what`` when the error names none); other errors pass."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_FAULTS:
            raise
        raise write_failure(e.filename or what, e) from None


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the umask (read without changing it where
    /proc tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, *chunks: bytes | memoryview) -> None:
    """Write ``chunks`` to ``path`` via a fsynced temporary file and a rename; an OSError (disk full,
    read-only directory) becomes one UserError and the previous ``path`` is left untouched."""
    path = Path(path)
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())  # mkstemp's 0o600 would make this file unlike the run's others
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
            raise write_failure(path, e) from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


#: the name :func:`atomic_write_bytes` gives its temporary file: ``.NAME.PID.XXXXXXXX.tmp`` (mkstemp's 8
#: characters); files of earlier versions have no PID
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_OWNED = re.compile(r"\..+\.(\d+)\.[a-z0-9_]{8}\.tmp")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files of writes that a kill interrupted (none is ever complete): this
    process's own and those of processes that are gone; a live writer's are left to it."""
    if Path(folder).is_dir():
        for path in Path(folder).iterdir():
            if not _TEMPORARY.fullmatch(path.name) or not path.is_file():
                continue
            owner = _OWNED.fullmatch(path.name)
            pid = int(owner[1]) if owner else None
            if pid is None or pid == os.getpid() or not process_alive(pid):
                path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (created with :func:`file_mode`) and fsync it. A failed write (disk
    full, read-only mount, no permission) cuts the file back to its length before, so no half line
    is left, and is one :class:`UserError`."""
    path = Path(path)
    fd: Optional[int] = None
    size = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
        size = os.fstat(fd).st_size
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError as e:
        if fd is not None:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
        raise write_failure(path, e, "the lines written before are intact") from None
    finally:
        if fd is not None:
            os.close(fd)
