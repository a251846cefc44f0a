"""Run directories: the unit of exchange between subcommands.

A run directory holds ``protocol.yaml`` (written before the first step), ``env.json``,
``metrics.jsonl``, ``checkpoints/`` and, once finished, the result files. :class:`RunDir` is the one
place that names them: every runner writes through it and ``leoclr report`` reads through it. An
existing run directory is never overwritten without ``--resume`` or ``--force``.

One writer per run directory: every command that writes one takes an advisory ``fcntl.flock`` on
``RUN/.lock`` (:meth:`RunDir.lock`) before it writes anything, and keeps it until the command ends; the
OS releases it when the process dies, so a ``kill -9`` never leaves it stuck. A second writer (another
run, a ``--resume``, a ``--force`` that would delete it or a run directory nested in it such as
``RUN/linear-eval``) is refused at once with one sentence naming the process that holds it. Reading a
finished run takes no lock.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import functools
import json
import os
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
from ..config import first_difference, load_protocol, protocol_json, safe_yaml, without_runtime, write_protocol
from ..errors import UserError
from . import preempt, threads
from .atomic import atomic_write_text, remove_temporaries
from .results import RESULT_FILE, RunResult, parse_result
from .tensorfile import KIND_STATE, file_sha256, read_metadata, verify


def _identity(f: Path | str) -> dict[str, Optional[str]]:
    """What names an input file: its path and SHA-256 (a name that is not a file, ``random:ARCH``: no hash)."""
    return {"path": str(f), "sha256": file_sha256(Path(f)) if Path(f).is_file() else None}


def _check_inputs(recorded: Path, inputs: dict[str, Path | str]) -> None:
    """Refuse a resume whose inputs are not those its run was started on (runs of earlier versions, which
    recorded none, are not checked)."""
    if not recorded.is_file():
        return
    try:
        was = json.loads(recorded.read_text())
    except (OSError, ValueError):
        raise UserError(f"{recorded} is not readable JSON; start the run over with --force") from None
    for name, f in inputs.items():
        old, new = was.get(name), _identity(f)
        # a file is known by its content (it may have moved since), a name such as random:ARCH by itself
        if isinstance(old, dict) and (old.get("sha256") or old.get("path")) != (new["sha256"] or new["path"]):
            raise UserError(f"the run in {recorded.parent} was started on the {name} {old.get('path')}, not on "
                            f"{new['path']} (another file); give another --out, or start the run over with --force")


class RunDir:
    """One run directory: the path of each of its files, its protocol and result, and whether a run
    in it starts fresh or resumes."""

    PROTOCOL = "protocol.yaml"
    ENV = "env.json"
    INPUTS = "inputs.json"  # the files a run was started on (an evaluation's backbone), by SHA-256
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
    LOCK = ".lock"  # the writer's lock (:meth:`lock`): its pid and start time while a command writes here
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
            tree = safe_yaml(self.protocol_file.read_text())
        except (OSError, ValueError, yaml.YAMLError):
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

    # -------------------------------------------------------------------- one writer

    def lock(self) -> None:
        """Take this run directory's writer lock (creating the directory) until the command ends
        (:func:`command`; the OS drops it if the process dies). Refused in one sentence while another
        process holds it; a no-op when this process already does."""
        _lock(self.path)

    def _has_files(self) -> bool:
        """Whether this directory holds anything besides its lock file."""
        return self.path.is_dir() and any(p.name != self.LOCK for p in self.path.iterdir())

    def _clear(self) -> None:
        """Delete this run's files (held locked by this process), refusing first if a run directory nested
        in it (RUN/linear-eval) is being written by another process; the lock file stays."""
        for nested in sorted(self.path.rglob(self.LOCK)):
            if nested.parent != self.path:
                _lock(nested.parent)  # held until the command ends, so no writer starts in it meanwhile
        for child in self.path.iterdir():
            if child.name == self.LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    # -------------------------------------------------------------------- fresh or resumed

    def resume_or_fresh(self, force: bool) -> tuple[Optional[str], bool]:
        """(``--resume``, ``--force``) that continue this run from its last checkpoint, or start it
        over when it has none (or ``force``)."""
        if not force and self.path.exists() and latest_state(self.path) is not None:
            return "auto", False
        return None, True

    def prepare(self, protocol: BaseModel, *, resume: Optional[str], force: bool,
                inputs: Optional[dict[str, Path | str]] = None) -> Optional[Path]:
        """Create (or reopen) this run directory; returns the state file to resume from, if any.

        ``resume="auto"`` on a run that holds no checkpoint yet (killed before its first one, or never
        started) starts it from scratch, provided its ``protocol.yaml`` is this protocol. Temporary
        files left by a killed write are removed whenever a run (re)starts. ``inputs`` (name -> file, or a
        name such as ``random:resnet18``) are recorded in ``inputs.json`` when the run starts, and a resume
        on other inputs is refused naming the one that differs."""
        run_dir = self.path
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"run directory {run_dir} is a file, not a directory")
        if not run_dir.exists():
            _created.append(run_dir)
        self.lock()
        resume_from: Optional[Path] = None
        if resume == "auto":
            resume_from = latest_state(run_dir)
            if resume_from is None:
                self._check_restart(protocol)
                self._clear()
                _created.append(run_dir)
        elif resume is not None:
            resume_from = Path(resume)
            if resume_from.is_dir():
                found = latest_state(resume_from)
                if found is None:
                    raise UserError(f"--resume {resume}: that directory holds no checkpoint")
                resume_from = found
            elif not resume_from.is_file():
                raise UserError(f"--resume {resume}: no such checkpoint file")
        elif self._has_files():
            if not force:
                raise UserError(f"run directory {run_dir} already exists; use --resume auto to continue it "
                                "or --force to start over")
            self._clear()
            _created.append(run_dir)
        if resume_from is not None:  # a damaged or foreign file is refused before any work starts
            verify(resume_from)
            read_metadata(resume_from, KIND_STATE)
            if inputs:
                _check_inputs(resume_from.parent.parent / self.INPUTS, inputs)
        for folder in (run_dir, self.checkpoints):
            remove_temporaries(folder)
        if resume_from is None:
            write_protocol(protocol, self.protocol_file)
            write_json(self.env_file, environment())
            if inputs:
                write_json(self.path / self.INPUTS, {name: _identity(f) for name, f in inputs.items()})
        return resume_from

    def _check_restart(self, protocol: BaseModel) -> None:
        """``--resume auto`` without a checkpoint may start this run over only if it is missing, empty,
        or an unfinished run of this very protocol."""
        run_dir = self.path
        if not self._has_files():
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

    def reopen(self, protocol: BaseModel, *, resume: Optional[str], force: bool,
               inputs: Optional[dict[str, Path | str]] = None) -> bool:
        """:meth:`prepare` for a run made of parts, each resumed on its own (transfer's grid cells and refit,
        detect's trials: :meth:`resume_part`); returns whether the parts already there are continued.

        ``resume`` is ``auto`` or the run directory itself: an existing run continues in place when its
        ``protocol.yaml`` is this protocol (else the differing field is named); a missing or empty one starts
        from scratch. Without ``resume`` it is :meth:`prepare`'s fresh start (``force`` to replace a run).
        ``inputs`` as for :meth:`prepare`: recorded at the start, and a continuation on others refused."""
        run_dir = self.path
        if resume not in (None, "auto") and Path(resume).expanduser().resolve() != run_dir.resolve():
            raise UserError(f"--resume {resume}: this command continues its own run directory; use --resume auto "
                            f"(with --out {run_dir}) or --resume {run_dir}")
        if resume is None or not self._has_files():
            self.prepare(protocol, resume=None, force=force, inputs=inputs)
            return False
        self.lock()
        if not self.protocol_file.is_file():
            raise UserError(f"--resume {resume}: {run_dir} holds no {self.PROTOCOL}, so it is no run to continue; "
                            "use --force to start over in it")
        field = self.protocol_difference(protocol)
        if field is not None:
            raise UserError(f"--resume {resume}: {run_dir} was started with a different protocol (field '{field}' "
                            "differs); use the same protocol, or --force to start over")
        if inputs:
            _check_inputs(self.path / self.INPUTS, inputs)
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


def command(fn: Optional[Callable] = None, *, resumable: bool = True) -> Any:
    """Decorates a long command's runner: SIGTERM/SIGINT stop it within one step
    (:func:`~leoclr_cli.core.preempt.preemptible`; ``resumable=False``: the command has no ``--resume``,
    so its stop message suggests none), the run directory locks it takes are released when it ends, and
    if it fails, the run directories it created that hold no progress (no checkpoint, metrics or result
    anywhere inside) are removed, so that the corrected command needs no --force."""
    if fn is None:
        return functools.partial(command, resumable=resumable)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark, held = len(_created), len(_held)
        try:
            with preempt.preemptible(), preempt.resumable(resumable):
                return fn(*args, **kwargs)
        except BaseException:
            for run_dir in _created[mark:]:
                if run_dir.is_dir() and not any(next(run_dir.rglob(name), None) for name in RunDir.PROGRESS):
                    shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            del _created[mark:]
            _release(held)

    return wrapper


# --------------------------------------------------------------------------- the writer's lock


#: the run directories this process holds locked: (resolved path, the lock file's descriptor), in order
_held: list[tuple[Path, int]] = []


def _lock(run_dir: Path) -> None:
    key = Path(run_dir).resolve()
    if any(path == key for path, _ in _held):
        return
    lock_file = key / RunDir.LOCK
    try:
        key.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"run directory {run_dir} is in use by {_holder(lock_file)}; wait for it to end, "
                                "or stop it, before writing here") from None
            try:  # the file may have been removed (or replaced) by its last holder between open and flock
                same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.EEXIST):
            raise UserError(f"run directory {run_dir} cannot be created: {e.strerror or e}") from None
        raise UserError(f"run directory {run_dir} cannot be created or locked: {e.strerror or e}") from None
    _held.append((key, fd))
    try:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {started}\n".encode())
    except OSError:
        pass  # a full disk: the lock holds all the same, its holder is just not named


def _holder(lock_file: Path) -> str:
    """``process PID (started TIME)`` from a held lock file (what its holder wrote there)."""
    try:
        pid, started = lock_file.read_text().split(maxsplit=1)
        return f"process {int(pid)} (started {started.strip()})"
    except (OSError, ValueError):
        return "another process"


def _release(keep: int) -> None:
    """Release the locks taken after the first ``keep``, newest first; each lock file is removed."""
    while len(_held) > keep:
        path, fd = _held.pop()
        try:
            (path / RunDir.LOCK).unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)


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
