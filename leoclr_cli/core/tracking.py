"""Experiment tracking: TensorBoard, MLflow and Weights & Biases, fed by the engine.

The engine emits every metric in one place (``metrics.jsonl``) and hands the same values to a
:class:`Tracker`, which fans them out to the tools a protocol's ``log`` section names (rank 0 only):
per-step loss and lr, each epoch's record (samples/s, kNN monitor, ...) at the global step where the
epoch ends, the protocol as parameters, and one image (the grid of :mod:`~..report.pictures`). Every
command that writes a result logs it at the end (:func:`finish`: ``result/...``); a sweep without the
engine (linear-eval's L-BFGS C values, transfer's grid) logs one row per cell (``sweep/...``,
``grid/...``); with ``log.artifacts`` the final backbone (pretraining) and the linear head (linear-eval)
are logged as artifacts by MLflow and W&B (TensorBoard has no artifacts).

The packages are optional (``leoclr[tracking]``); :func:`check` names the missing one before the
run directory is touched. Run ids are kept in ``RUN/tracking.json``, so ``--resume`` continues the
same MLflow / W&B run; TensorBoard drops the events past the resumed step (``purge_step``).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from ..config import TrackingConfig
from ..errors import UserError
from .atomic import atomic_write_text, writing
from .rundir import RunDir
from .tensorfile import read_metadata

EXTRA = "pip install 'leoclr[tracking]'"
# (field, module to import, the package that provides it)
NEEDS = (("tensorboard", "torch.utils.tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow (or mlflow-skinny)"),
         ("wandb", "wandb", "wandb"))


def _import(field: str) -> Any:
    module, package = next((m, p) for f, m, p in NEEDS if f == field)
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"log.{field} needs the {package} package, which is not installed: {EXTRA}") from None


def check(cfg: TrackingConfig) -> None:
    """Raise the one-sentence UserError for a tracker whose package is missing."""
    for field, _, _ in NEEDS:
        if getattr(cfg, field):
            _import(field)


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record (booleans and strings are not curves)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    def __init__(self, run_dir: Path, params: dict[str, Any], start_step: int):
        SummaryWriter = _import("tensorboard").SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step or None)
        if not start_step:
            self.writer.add_text("protocol", "\n".join(f"    {k}: {v}" for k, v in flat(params).items()), 0)

    def rows(self, section: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        for step, values in rows:
            for key, value in values.items():
                self.writer.add_scalar(f"{section}/{key}", value, step)

    def image(self, tag: str, hwc: np.ndarray) -> None:
        self.writer.add_image(tag, hwc, 0, dataformats="HWC")

    def artifact(self, path: Path) -> None:
        pass  # TensorBoard has no artifacts

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, run_dir: Path, cfg: TrackingConfig, params: dict[str, Any], name: str, run_id: Optional[str]):
        mlflow = _import("mlflow")
        uri = (run_dir / "mlruns").resolve().as_uri() if cfg.mlflow is True else str(cfg.mlflow)
        if uri.startswith("file:"):
            # MLflow 3 asks for this opt-in to its file store, the one store that needs no database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.entities = importlib.import_module("mlflow.entities")
        try:
            if run_id is None:
                exp = self.client.get_experiment_by_name(cfg.mlflow_experiment)
                exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.mlflow_experiment)
                run_id = self.client.create_run(exp_id, run_name=name).info.run_id
                items = [self.entities.Param(k, str(v)[:6000]) for k, v in flat(params).items()]
                for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                    self.client.log_batch(run_id, params=items[i:i + 100])
            else:
                self.client.update_run(run_id, status="RUNNING")
        except Exception as e:  # MLflow raises its own and its stores' errors alike
            raise UserError(f"log.mlflow: the MLflow tracking store {uri} could not be opened "
                            f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        self.run_id = run_id

    def rows(self, section: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Metrics named ``SECTION_KEY`` (``step_loss``, ``result_top1``); an epoch's by their own key."""
        prefix = "" if section == "epoch" else f"{section}_"
        now = int(time.time() * 1000)
        metrics = [self.entities.Metric(prefix + k, v, now, s) for s, values in rows for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def image(self, tag: str, hwc: np.ndarray) -> None:
        self.client.log_image(self.run_id, hwc, f"{tag}.png")

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    def __init__(self, run_dir: Path, cfg: TrackingConfig, params: dict[str, Any], name: str, run_id: Optional[str]):
        self.wandb = _import("wandb")
        self.run = self.wandb.init(mode=cfg.wandb, dir=str(run_dir), project=cfg.wandb_project, name=name,
                                   config=params, id=run_id, resume="allow" if run_id else None,
                                   settings=self.wandb.Settings(silent=True, console="off"))
        self.run_id = self.run.id

    def rows(self, section: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        """History at the rows' steps; the result goes to the run's summary (W&B's steps only grow)."""
        for step, values in rows:
            named = {f"{section}/{k}": v for k, v in values.items()}
            if section == "result":
                self.run.summary.update(named)
            else:
                self.run.log(named, step=step)

    def image(self, tag: str, hwc: np.ndarray) -> None:
        self.run.log({tag: self.wandb.Image(hwc)}, step=0)

    def artifact(self, path: Path) -> None:
        art = self.wandb.Artifact(path.stem, type="model")
        art.add_file(str(path))
        self.run.log_artifact(art)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """The trackers a protocol's ``log`` section names, called by the engine (rank 0 only) and, for a
    sweep, the result and the artifacts, by the command's runner. A local file a tracker fails to write (disk
    full, read-only) is one sentence naming it."""

    def __init__(self, sinks: list[Any], run_dir: Path = Path("."), artifacts: bool = False):
        self.sinks, self.run_dir, self.artifacts = sinks, run_dir, artifacts

    def rows(self, section: str, rows: list[tuple[int, dict[str, Any]]]) -> None:
        """``[(step, record), ...]`` under ``section`` (step, epoch, sweep, grid, result): the numeric values."""
        numeric = [(step, scalars(record)) for step, record in rows]
        with writing(self.run_dir):
            for sink in self.sinks:
                sink.rows(section, numeric)

    def steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Per-step values: ``[(global step, {"loss": ..., "lr": ...}), ...]``."""
        self.rows("step", rows)

    def epoch(self, step: int, record: dict[str, Any]) -> None:
        """An epoch's ``metrics.jsonl`` record, at the global step where the epoch ends."""
        self.rows("epoch", [(step, record)])

    def image(self, tag: str, hwc: np.ndarray) -> None:
        with writing(self.run_dir):
            for sink in self.sinks:
                sink.image(tag, hwc)

    def close(self) -> None:
        with writing(self.run_dir):
            for sink in self.sinks:
                sink.close()


def finish(tracker: Optional[Tracker], result: dict[str, Any], artifacts: Iterable[Path] = ()) -> None:
    """A finished run's ``result`` (its numeric fields, ``result/...``) to the trackers, if any, and with
    ``log.artifacts`` the ``artifacts`` files (MLflow, W&B)."""
    if tracker is None:
        return
    tracker.rows("result", [(0, result)])
    if tracker.artifacts:
        for path in artifacts:
            with writing(tracker.run_dir):
                for sink in tracker.sinks:
                    sink.artifact(Path(path))


@contextmanager
def closing(tracker: Optional[Tracker]) -> Iterator[Optional[Tracker]]:
    """``with closing(open_tracker(...)) as tracker``: the trackers closed however the run ends."""
    try:
        yield tracker
    finally:
        if tracker is not None:
            tracker.close()


def resumed_step(resume_from: Optional[Path], steps_per_epoch: int) -> int:
    """The global step a run resumed from the state ``resume_from`` starts at (0 for a new run)."""
    if resume_from is None:
        return 0
    meta = read_metadata(resume_from)
    return int(meta["epoch"]) * steps_per_epoch + int(meta.get("step", "0"))


def open_tracker(cfg: TrackingConfig, run_dir: Path, params: dict[str, Any], name: str,
                 start_step: int = 0) -> Optional[Tracker]:
    """The trackers ``cfg`` names for the run in ``run_dir`` (None: none asked for). ``start_step``:
    the global step a resumed run starts from (its MLflow / W&B runs are continued)."""
    run_dir = Path(run_dir)
    ids_path = RunDir(run_dir).tracking
    ids = json.loads(ids_path.read_text()) if start_step and ids_path.is_file() else {}
    sinks: list[Any] = []
    with writing(run_dir):
        _open_sinks(cfg, run_dir, params, name, start_step, ids, sinks)
    if ids:
        atomic_write_text(ids_path, json.dumps(ids, indent=2) + "\n")
    return Tracker(sinks, run_dir, cfg.artifacts) if sinks else None


def _open_sinks(cfg: TrackingConfig, run_dir: Path, params: dict[str, Any], name: str, start_step: int,
                ids: dict[str, Any], sinks: list[Any]) -> None:
    if cfg.tensorboard:
        sinks.append(TensorBoard(run_dir, params, start_step))
    if cfg.mlflow:
        sinks.append(MLflow(run_dir, cfg, params, name, ids.get("mlflow")))
        ids["mlflow"] = sinks[-1].run_id
    if cfg.wandb:
        sinks.append(WandB(run_dir, cfg, params, name, ids.get("wandb")))
        ids["wandb"] = sinks[-1].run_id
