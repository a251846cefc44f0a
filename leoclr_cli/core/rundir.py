"""Run directories: the unit of exchange between subcommands.

A run directory holds ``protocol.yaml`` (written before the first step), ``env.json``,
``metrics.jsonl``, ``checkpoints/`` and, once finished, the result files. An existing run
directory is never overwritten without ``--resume`` or ``--force``.
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from pydantic import BaseModel

from .. import __version__
from ..config import load_protocol, protocol_json, write_protocol
from ..errors import UserError
from . import preempt, threads
from .atomic import atomic_write_text, remove_temporaries
from .checkpoint import KIND_STATE, first_difference, latest_state, read_metadata, verify, without_runtime


#: run directories this process created (fresh, not resumed), for :func:`command`
_created: list[Path] = []


def prepare(run_dir: Path, protocol: BaseModel, *, resume: Optional[str], force: bool) -> Optional[Path]:
    """Create (or reopen) ``run_dir``; returns the state file to resume from, if any.

    ``resume="auto"`` on a run that holds no checkpoint yet (killed before its first one, or never
    started) starts it from scratch, provided its ``protocol.yaml`` is this protocol. Temporary
    files left by a killed write are removed whenever a run (re)starts."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file, not a directory")
    resume_from: Optional[Path] = None
    if resume == "auto":
        resume_from = latest_state(run_dir)
        if resume_from is None:
            _check_restart(run_dir, protocol)
            shutil.rmtree(run_dir, ignore_errors=True)
    elif resume is not None:
        resume_from = Path(resume)
        if resume_from.is_dir():
            found = latest_state(resume_from)
            if found is None:
                raise UserError(f"--resume {resume}: that directory holds no checkpoint")
            resume_from = found
        elif not resume_from.is_file():
            raise UserError(f"--resume {resume}: no such checkpoint file")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise UserError(f"run directory {run_dir} already exists; use --resume auto to continue it "
                            "or --force to start over")
        shutil.rmtree(run_dir)
    if resume_from is not None:  # a damaged or foreign file is refused before any work starts
        verify(resume_from)
        read_metadata(resume_from, KIND_STATE)
    fresh = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"run directory {run_dir} cannot be created: {e.strerror or e}") from None
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_temporaries(folder)
    if resume_from is None:
        if fresh:
            _created.append(run_dir)
        write_protocol(protocol, run_dir / "protocol.yaml")
        write_json(run_dir / "env.json", environment())
    return resume_from


def _check_restart(run_dir: Path, protocol: BaseModel) -> None:
    """``--resume auto`` without a checkpoint may start ``run_dir`` over only if it is missing, empty,
    or an unfinished run of this very protocol."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    saved = run_dir / "protocol.yaml"
    if not saved.is_file():
        raise UserError(f"--resume auto: {run_dir} holds neither a checkpoint nor a protocol.yaml; "
                        "use --force to start over in it")
    kept = next((f for name in ("result.json", "state_e*.safetensors") for f in run_dir.rglob(name)), None)
    if kept is not None:  # a finished run whose checkpoints were deleted, or runs nested in it
        raise UserError(f"--resume auto: {run_dir} holds no checkpoint of its own but holds {kept}; "
                        "use --force to start over in it")
    kind = protocol.kind  # type: ignore[attr-defined]
    theirs = without_runtime(json.loads(protocol_json(load_protocol(kind, saved))))
    ours = without_runtime(json.loads(protocol_json(protocol)))
    if theirs != ours:
        raise UserError(f"--resume auto: {run_dir} holds no checkpoint and was started with a different protocol "
                        f"(field '{first_difference(theirs, ours)}' differs); use the same protocol, or --force to "
                        "start over")


def command(fn: Callable) -> Callable:
    """Decorates a long command's runner: SIGTERM/SIGINT stop it within one step
    (:func:`~leoclr_cli.core.preempt.preemptible`), and if it fails, the run directories it created that
    hold no progress (no checkpoint, metrics or result anywhere inside) are removed, so that the
    corrected command needs no --force."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark = len(_created)
        try:
            with preempt.preemptible():
                return fn(*args, **kwargs)
        except BaseException:
            for run_dir in _created[mark:]:
                if run_dir.is_dir() and not any(next(run_dir.rglob(name), None) for name in PROGRESS):
                    shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            del _created[mark:]

    return wrapper


#: files whose presence means a run made progress worth keeping
PROGRESS = ("state_e*.safetensors", "metrics.jsonl", "result.json")


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None


def environment() -> dict[str, Any]:
    import torchvision

    return {
        "leoclr": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        **threads.recorded(),
    }
