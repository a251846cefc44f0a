"""Run directories: the unit of exchange between subcommands.

A run directory holds ``protocol.yaml`` (written before the first step), ``env.json``,
``metrics.jsonl``, ``checkpoints/`` and, once finished, the result files. :class:`RunDir` is the one
place that names them: every runner writes through it and ``leoclr report`` reads through it. An
existing run directory is never overwritten without ``--resume`` or ``--force``.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torchvision
import yaml
from pydantic import BaseModel

from .. import __version__
from ..config import first_difference, load_protocol, protocol_json, without_runtime, write_protocol
from ..errors import UserError
from . import preempt, threads
from .atomic import atomic_write_text, remove_temporaries
from .results import RESULT_FILE, RunResult, parse_result
from .tensorfile import KIND_STATE, read_metadata, verify


class RunDir:
    """One run directory: the path of each of its files, its protocol and result, and whether a run
    in it starts fresh or resumes."""

    PROTOCOL = "protocol.yaml"
    ENV = "env.json"
    METRICS = "metrics.jsonl"
    CHECKPOINTS = "checkpoints"
    RESULT = RESULT_FILE
    BACKBONE = "backbone.safetensors"
    BOXES = "boxes.safetensors"  # ContrastiveCrop's boxes
    CLASSIFIER = "linear.safetensors"  # a linear probe, or transfer's logistic regression
    DETECTOR = "model.safetensors"  # a detection trial's final detector
    GRID = "grid.json"  # the cells of a hyper-parameter grid
    SUBSET = "subset.txt"  # fine-tuning's labelled images
    TRACKING = "tracking.json"  # the experiment trackers' run ids
    LINEAR_EVAL = "linear-eval"  # a pretraining run's own linear evaluation, a run directory inside it
    #: training states: ``state_eNNNN`` after NNNN epochs, ``state_eNNNN_sSSSSSS`` after SSSSSS more steps
    STATES = "state_e*.safetensors"
    STATE_NAME = re.compile(r"state_e(\d+)(?:_s(\d+))?\.safetensors")
    #: files whose presence means a run made progress worth keeping (training states and the other files a
    #: resume reads, such as transfer's cached features, live in checkpoints/)
    PROGRESS = (f"{CHECKPOINTS}/*.safetensors", METRICS, RESULT)

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def protocol_file(self) -> Path:
        return self.path / self.PROTOCOL

    @property
    def env_file(self) -> Path:
        return self.path / self.ENV

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def result(self) -> Path:
        return self.path / self.RESULT

    @property
    def backbone(self) -> Path:
        return self.path / self.BACKBONE

    @property
    def boxes(self) -> Path:
        return self.path / self.BOXES

    @property
    def classifier(self) -> Path:
        return self.path / self.CLASSIFIER

    @property
    def detector(self) -> Path:
        return self.path / self.DETECTOR

    @property
    def grid(self) -> Path:
        return self.path / self.GRID

    @property
    def subset(self) -> Path:
        return self.path / self.SUBSET

    @property
    def tracking(self) -> Path:
        return self.path / self.TRACKING

    @property
    def linear_eval(self) -> "RunDir":
        return RunDir(self.path / self.LINEAR_EVAL)

    @staticmethod
    def backbone_of(target: Path) -> Path:
        """The backbone file ``target`` names: a run directory's backbone.safetensors, or ``target`` itself."""
        if not target.is_dir():
            return target
        backbone = RunDir(target).backbone
        if not backbone.is_file():
            raise UserError(f"{target} holds no {RunDir.BACKBONE} (is pretraining finished?)")
        return backbone

    # -------------------------------------------------------------------- protocol and result

    def read_protocol(self, kind: str) -> Any:
        """The validated ``kind`` protocol this run was started with."""
        return load_protocol(kind, self.protocol_file)

    def protocol_tree(self) -> dict[str, Any]:
        """``protocol.yaml`` as a plain mapping, unvalidated ({} when it is missing or unreadable)."""
        try:
            tree = yaml.safe_load(self.protocol_file.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return tree if isinstance(tree, dict) else {}

    def write_result(self, result: RunResult) -> dict[str, Any]:
        """Write ``result`` to its file here; returns it as written."""
        record = result.record()
        write_json(self.path / result.file, record)
        return record

    def read_result(self, model: Optional[type[RunResult]] = None) -> dict[str, Any]:
        """``result.json`` read back through the model that wrote it (``model``, or the one its ``kind`` names):
        the keys as written, each checked; one sentence when it is missing, not JSON or not a valid result."""
        return parse_result(read_json(self.result), str(self.result), model).record()

    # -------------------------------------------------------------------- fresh or resumed

    def resume_or_fresh(self, force: bool) -> tuple[Optional[str], bool]:
        """(``--resume``, ``--force``) that continue this run from its last checkpoint, or start it
        over when it has none (or ``force``)."""
        if not force and self.path.exists() and latest_state(self.path) is not None:
            return "auto", False
        return None, True

    def prepare(self, protocol: BaseModel, *, resume: Optional[str], force: bool) -> Optional[Path]:
        """Create (or reopen) this run directory; returns the state file to resume from, if any.

        ``resume="auto"`` on a run that holds no checkpoint yet (killed before its first one, or never
        started) starts it from scratch, provided its ``protocol.yaml`` is this protocol. Temporary
        files left by a killed write are removed whenever a run (re)starts."""
        run_dir = self.path
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"run directory {run_dir} is a file, not a directory")
        resume_from: Optional[Path] = None
        if resume == "auto":
            resume_from = latest_state(run_dir)
            if resume_from is None:
                self._check_restart(protocol)
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
        for folder in (run_dir, self.checkpoints):
            remove_temporaries(folder)
        if resume_from is None:
            if fresh:
                _created.append(run_dir)
            write_protocol(protocol, self.protocol_file)
            write_json(self.env_file, environment())
        return resume_from

    def _check_restart(self, protocol: BaseModel) -> None:
        """``--resume auto`` without a checkpoint may start this run over only if it is missing, empty,
        or an unfinished run of this very protocol."""
        run_dir = self.path
        if not run_dir.is_dir() or not any(run_dir.iterdir()):
            return
        if not self.protocol_file.is_file():
            raise UserError(f"--resume auto: {run_dir} holds neither a checkpoint nor a {self.PROTOCOL}; "
                            "use --force to start over in it")
        kept = next((f for name in (self.RESULT, self.STATES) for f in run_dir.rglob(name)), None)
        if kept is not None:  # a finished run whose checkpoints were deleted, or runs nested in it
            raise UserError(f"--resume auto: {run_dir} holds no checkpoint of its own but holds {kept}; "
                            "use --force to start over in it")
        field = self.protocol_difference(protocol)
        if field is not None:
            raise UserError(f"--resume auto: {run_dir} holds no checkpoint and was started with a different "
                            f"protocol (field '{field}' differs); use the same protocol, or --force to start over")

    def protocol_difference(self, protocol: BaseModel) -> Optional[str]:
        """The first field in which this run's protocol.yaml differs from ``protocol`` (runtime fields
        such as ``threads`` aside); None when they agree."""
        kind = protocol.kind  # type: ignore[attr-defined]
        theirs = without_runtime(json.loads(protocol_json(self.read_protocol(kind))))
        ours = without_runtime(json.loads(protocol_json(protocol)))
        return None if theirs == ours else first_difference(theirs, ours)

    # -------------------------------------------------------------------- runs made of parts

    def reopen(self, protocol: BaseModel, *, resume: Optional[str], force: bool) -> bool:
        """:meth:`prepare` for a run made of parts, each resumed on its own (transfer's grid cells and refit,
        detect's trials: :meth:`resume_part`); returns whether the parts already there are continued.

        ``resume`` is ``auto`` or the run directory itself: an existing run continues in place when its
        ``protocol.yaml`` is this protocol (else the differing field is named); a missing or empty one starts
        from scratch. Without ``resume`` it is :meth:`prepare`'s fresh start (``force`` to replace a run)."""
        run_dir = self.path
        if resume not in (None, "auto") and Path(resume).expanduser().resolve() != run_dir.resolve():
            raise UserError(f"--resume {resume}: this command continues its own run directory; use --resume auto "
                            f"(with --out {run_dir}) or --resume {run_dir}")
        if resume is None or not run_dir.is_dir() or not any(run_dir.iterdir()):
            self.prepare(protocol, resume=None, force=force)
            return False
        if not self.protocol_file.is_file():
            raise UserError(f"--resume {resume}: {run_dir} holds no {self.PROTOCOL}, so it is no run to continue; "
                            "use --force to start over in it")
        field = self.protocol_difference(protocol)
        if field is not None:
            raise UserError(f"--resume {resume}: {run_dir} was started with a different protocol (field '{field}' "
                            "differs); use the same protocol, or --force to start over")
        for folder in (run_dir, self.checkpoints):
            remove_temporaries(folder)
        return True

    def resume_part(self, resuming: bool) -> Optional[Path]:
        """The state this part of a :meth:`reopen`-ed run continues from: its newest checkpoint when the run
        is resumed. A part without one (not started, or killed before its first checkpoint) starts over in
        an emptied directory; temporary files a kill left are removed either way."""
        found = latest_state(self.path) if resuming else None
        if found is None:
            shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.path, self.checkpoints):
            remove_temporaries(folder)
        return found


# --------------------------------------------------------------------------- training states


def state_path(run_dir: Path, epoch: int, step: int = 0) -> Path:
    """``state_eNNNN`` after NNNN epochs; ``state_eNNNN_sSSSSSS`` after SSSSSS more steps of the next."""
    name = f"state_e{epoch:04d}" + (f"_s{step:06d}" if step else "") + ".safetensors"
    return RunDir(run_dir).checkpoints / name


def list_states(run_dir: Path) -> list[Path]:
    """The run's training states, oldest first (by epoch, then step; temporary files excluded)."""
    found = []
    for path in RunDir(run_dir).checkpoints.glob(RunDir.STATES):
        m = RunDir.STATE_NAME.fullmatch(path.name)
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
    remove_temporaries(RunDir(run_dir).checkpoints)


# --------------------------------------------------------------------------- long commands


#: run directories this process created (fresh, not resumed), for :func:`command`
_created: list[Path] = []


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
                if run_dir.is_dir() and not any(next(run_dir.rglob(name), None) for name in RunDir.PROGRESS):
                    shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            del _created[mark:]

    return wrapper


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON") from None


def git_commit(package: Path = Path(__file__).resolve().parents[2]) -> Optional[str]:
    """The commit of the checkout leoclr runs from (``-dirty`` when its tracked files changed); None for an
    installed copy or without git."""
    if not (package / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict[str, Any]:
    return {
        "argv": list(sys.argv), "git_commit": git_commit(),
        "leoclr": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        **threads.recorded(),
    }
