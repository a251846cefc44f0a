"""Run directories: the unit of exchange between subcommands.

A run directory holds ``protocol.yaml`` (written before the first step), ``env.json``,
``metrics.jsonl``, ``checkpoints/`` and, once finished, the result files. An existing run
directory is never overwritten without ``--resume`` or ``--force``.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import BaseModel

from . import __version__, threads
from .checkpoint import KIND_STATE, atomic_write_text, latest_state, read_metadata, verify
from .errors import UserError
from .schema import write_protocol


def prepare(run_dir: Path, protocol: BaseModel, *, resume: Optional[str], force: bool) -> Optional[Path]:
    """Create (or reopen) ``run_dir``; returns the state file to resume from, if any."""
    run_dir = Path(run_dir)
    resume_from: Optional[Path] = None
    if resume is not None:
        if resume == "auto":
            resume_from = latest_state(run_dir)
            if resume_from is None:
                raise UserError(f"--resume auto: {run_dir} holds no checkpoint to resume from")
        else:
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
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        write_protocol(protocol, run_dir / "protocol.yaml")
        write_json(run_dir / "env.json", environment())
    return resume_from


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
