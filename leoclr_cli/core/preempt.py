"""Stopping on a signal, and DataLoader workers that never outlive their command.

* :func:`preemptible`: while a long command runs, SIGTERM/SIGINT only record the signal (a second
  one exits at once, status 128 + signal); every loop over batches calls :func:`check` once per
  step, so the command stops within one step. The engine saves a resumable checkpoint first (see
  :class:`~leoclr_cli.core.engine.Engine`); loops with nothing to save (feature extraction, evaluation,
  L-BFGS) raise :class:`~leoclr_cli.errors.Preempted` (exit 75) directly. Long commands run in it
  (:func:`~leoclr_cli.core.rundir.command`); short ones keep the default (a signal ends them).
* :func:`worker_init`: DataLoader workers leave SIGTERM/SIGINT to the main process (a scheduler
  signals the whole process group; the main process checkpoints, then ends them), and die with
  their parent: on Linux the kernel kills them the moment it dies (``PR_SET_PDEATHSIG``), elsewhere
  a thread polls the parent every 0.2 s.
* At interpreter exit, daemonic children still alive (workers of a loader whose iterator a pending
  traceback kept) are killed with SIGKILL before :mod:`multiprocessing` joins them: they ignore the
  SIGTERM it would send, and the join would wait for ever.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import multiprocessing
import multiprocessing.util  # noqa: F401  (registers its exit hook first, so ours runs before it)
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

from ..errors import Preempted
from . import distributed

_received: Optional[int] = None  # the first signal of the current preemptible section
_installed = False
#: whether the running command continues with --resume auto (knn and crop-test have no --resume)
_resumable = [True]


def _handler(signum: int, frame: Any) -> None:
    global _received
    if _received is not None:
        os._exit(128 + signum)
    _received = signum
    os.write(2, f"\n{signal.Signals(signum).name}: stopping at the next step, saving what can be resumed "
                "(send it again to stop at once)\n".encode())


@contextmanager
def resumable(can: bool) -> Iterator[None]:
    """Within: whether a stop message may suggest ``--resume auto`` (the command has that flag)."""
    _resumable.append(can)
    try:
        yield
    finally:
        _resumable.pop()


@contextmanager
def preemptible() -> Iterator[None]:
    """SIGTERM/SIGINT are recorded for :func:`requested` instead of ending the process; nested
    sections share the outer one's handler (only the main thread can install it)."""
    global _received, _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    _received, _installed = None, True
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received, _installed = None, False


def requested() -> Optional[int]:
    """The signal that asked to stop, if any."""
    return _received


def check(what: str) -> None:
    """Raise Preempted if a signal asked to stop; for loops that hold nothing worth saving. Under
    DDP the engine stops all ranks together at its next step instead (one rank alone must not)."""
    if _received is not None and not distributed.active():
        hint = (" (with --resume auto, where the command writes a run directory, to keep what finished)"
                if _resumable[-1] else "")
        raise Preempted(f"{signal.Signals(_received).name} during {what}; nothing of it was kept, "
                        f"run the command again to redo it{hint}")


def each(batches: Iterable[Any], what: str) -> Iterator[Any]:
    """The items of ``batches``, with :func:`check` after each one."""
    for item in batches:
        yield item
        check(what)


# --------------------------------------------------------------------------- DataLoader workers


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux") and libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # it died before the call
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="leoclr-parent-watch").start()


def _init(parent: int, inner: Optional[Callable[[int], None]], worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent)
    if inner is not None:
        inner(worker_id)


def worker_init(inner: Optional[Callable[[int], None]] = None) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn``: ignore SIGTERM/SIGINT, die with this process, then ``inner``."""
    return functools.partial(_init, os.getpid(), inner)


def _kill_daemonic_children() -> None:
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # DataLoader's handler would raise about the kill
    for child in children:
        child.kill()
        child.join(timeout=5)


atexit.register(_kill_daemonic_children)
