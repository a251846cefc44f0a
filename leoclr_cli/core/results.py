"""What each run writes as its result: one Pydantic model per kind, written by the runner through
:meth:`~.rundir.RunDir.write_result` and read back by ``leoclr report``, ``crop-test``, ``ablate`` and the
sweeps. The evaluations of a backbone share its provenance (:class:`FromBackbone`): the file, its
architecture and method, and the pretraining epochs its header records.

A model writes exactly the keys it was given (``exclude_unset``): fields with no default are always
written (``None`` included); the few with a default (``None``) are written only by the runs they
belong to (a probe's SGD or L-BFGS diagnostics, Birdsnap's image counts, rank 0's pretraining outcome).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import UserError

#: the file a run's result is written to
RESULT_FILE = "result.json"


class RunResult(BaseModel):
    """Base of every result: its ``kind`` and the file it is written to."""

    model_config = ConfigDict(extra="forbid")
    file: ClassVar[str] = RESULT_FILE

    def __init__(self, **data: Any) -> None:
        if "kind" in type(self).model_fields:  # always written, though it has a default
            data.setdefault("kind", type(self).model_fields["kind"].default)
        super().__init__(**data)

    def record(self) -> dict[str, Any]:
        """The result as written: the keys given, with their values."""
        return self.model_dump(exclude_unset=True)


class FromBackbone(RunResult):
    """An evaluation of a backbone file: which file, and what its header says it is."""

    backbone: str
    arch: Optional[str]
    method: Optional[str]

    @classmethod
    def provenance(cls, backbone: Path, meta: dict[str, str]) -> dict[str, Any]:
        """The provenance fields of this kind for the backbone file ``backbone`` with header ``meta``."""
        known = {"backbone": str(backbone), "arch": meta.get("arch"), "method": meta.get("method"),
                 "pretrain_epoch": int(meta.get("epoch", 0))}
        return {k: v for k, v in known.items() if k in cls.model_fields}


class FromPretraining(FromBackbone):
    """A backbone evaluation that also records the pretraining epochs behind the backbone."""

    pretrain_epoch: int


class PretrainResult(RunResult):
    kind: Literal["pretrain"] = "pretrain"
    method: str
    arch: str
    epochs: int
    rank: int
    world_size: int
    global_batch: int
    lr: float
    # rank 0 only
    final_loss: Optional[float] = None
    knn_top1: Optional[float] = None
    # with the monitors on (monitor.*): the online probe's last top-1, the kNN monitor's top-1 of the
    # random-init backbone of the run's arch and seed, and the number of classes of the monitors' data
    linear_top1: Optional[float] = None
    knn_top1_random_init: Optional[float] = None
    monitor_classes: Optional[int] = None
    wall_s_this_invocation: Optional[float] = None
    device: Optional[str] = None
    backbone: Optional[str] = None


class LinearResult(FromPretraining):
    kind: Literal["linear-eval"] = "linear-eval"
    num_classes: int
    epochs: Optional[int]
    dataset: str
    pretrain_dataset: Optional[str]
    pretrain_batch_size: Optional[int]
    pretrain_schedule: Optional[str]
    probe: str
    feature_norm: Optional[str]
    selected_on: str
    num_fit: int
    num_val: int
    top1: float
    top5: float
    num_test: Optional[int] = None  # images top1/top5 are measured on (their standard error follows from it)
    val_top1: Optional[float]
    top1_test_best: float
    backbone_unchanged: bool
    # the SGD probe: the epoch chosen, the best test epoch and the last one
    selected_epoch: Optional[int] = None
    top5_test_best: Optional[float] = None
    test_best_epoch: Optional[int] = None
    top1_last: Optional[float] = None
    top5_last: Optional[float] = None
    # the L-BFGS probe: the L2 strength chosen and the best one on test
    selected_c: Optional[float] = None
    selected_wd: Optional[float] = None
    test_best_c: Optional[float] = None


class KnnResult(FromBackbone):
    kind: Literal["knn"] = "knn"
    k: int
    t: float
    bank: int
    test: int
    top1: float
    top5: float


class CropTestResult(FromPretraining):
    kind: Literal["crop-test"] = "crop-test"
    linear_run: str
    dataset: str
    num_classes: int
    test_images: int
    repeats: int
    center_top1: float
    center_top5: float
    random_top1: float
    random_top5: float
    random_top1_each: list[float]
    drop: float


class FinetuneResult(FromPretraining):
    kind: Literal["finetune"] = "finetune"
    dataset: str
    labels: float
    fraction: float
    top1: float
    top5: float
    epochs: int
    num_classes: int
    num_labelled: int
    num_test: int
    subset: str
    subset_file: str


class FinetuneSweepResult(RunResult):
    """``summary.json`` of a sweep of label fractions: one row per fraction's run directory."""

    file: ClassVar[str] = "summary.json"
    kind: Literal["finetune-sweep"] = "finetune-sweep"
    backbone: str
    runs: list[dict[str, Any]]


class TransferResult(FromPretraining):
    kind: Literal["transfer"] = "transfer"
    dataset: str
    mode: str
    metric: str
    value: float
    top1: float
    val: float
    best_lr: Optional[float]
    best_wd: float
    best_c: Optional[float]
    epochs: Optional[int]
    num_classes: int
    num_train: int
    num_fit: int
    num_val: int
    num_test: int
    # Birdsnap: of the images its lists name, how many could be downloaded
    images_listed: Optional[int] = None
    images_present: Optional[int] = None


class DetectTrialResult(RunResult):
    """One detection trial's ``trial-N/result.json``: its seed and AP (and what its backend adds)."""

    model_config = ConfigDict(extra="allow")
    seed: int
    AP: float
    AP50: float
    AP75: float


class DetectResult(FromPretraining):
    kind: Literal["detect"] = "detect"
    dataset: str
    backend: str
    trials: int
    gpus: int
    solver: dict[str, Any]
    test_images: int
    per_trial: list[dict[str, Any]]
    AP: float
    AP_std: float
    AP50: float
    AP50_std: float
    AP75: float
    AP75_std: float


class AblateResult(RunResult):
    kind: Literal["ablate"] = "ablate"
    method: str
    arch: str
    pretrain_epochs: int
    dataset: str
    num_classes: int
    removed: list[str]
    removed_fields: list[str]
    already_off: list[str]
    metric: str
    top1: float
    top5: float
    selected_on: str
    baseline: Optional[str]
    baseline_top1: Optional[float]
    drop: Optional[float]
    differs_from_baseline: list[str]
    pretrain_dir: str
    linear_dir: str


class QuickstartResult(RunResult):
    """``quickstart.json``: every run of every seed and the summary rows."""

    file: ClassVar[str] = "quickstart.json"
    methods: list[str]
    seeds: int
    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    crop_coverage: Optional[dict[str, float]] = None  # built-in data: % of crops that miss / cut / hold the digit


#: every result model by its kind: the one name a kind has in result.json, the report and the docs
RESULT_KINDS: dict[str, type[RunResult]] = {
    model.model_fields["kind"].default: model
    for model in (PretrainResult, LinearResult, KnnResult, CropTestResult, FinetuneResult, FinetuneSweepResult,
                  TransferResult, DetectResult, AblateResult)}
#: kinds written under another name by earlier versions
FORMER_KINDS = {"detection": "detect"}


def parse_result(record: Any, where: str, model: Optional[type[RunResult]] = None) -> RunResult:
    """``record`` (a result file's JSON) validated by ``model``, or by the model its ``kind`` names; one
    sentence naming ``where`` when it is none of them or breaks a field's type."""
    if model is None:
        kind = record.get("kind") if isinstance(record, dict) else None
        kind = FORMER_KINDS.get(kind, kind)
        model = RESULT_KINDS.get(kind)  # type: ignore[arg-type]
        if model is None:
            raise UserError(f"{where} is no leoclr result (kind {kind!r})")
        record = {**record, "kind": kind}
    try:
        return model.model_validate(record)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{where} is not a valid {getattr(model, '__name__', model)}: field '{field}': "
                        f"{first['msg']}") from None
