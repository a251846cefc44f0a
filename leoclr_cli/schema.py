"""Pydantic protocol models: one per subcommand, sub-models shared.

A protocol is a YAML file (see ``protocols/``) plus CLI overrides. :func:`load_protocol` merges
them, validates the result and turns any validation error into one :class:`UserError` sentence
that names the field and the rule. Every value of the paper's protocol, and every choice we made
where the paper is silent, is a field here with its default documented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .atomic import atomic_write_text
from .errors import UserError

SourceName = Literal["builtin", "builtin-textures", "imagefolder", "cifar10", "cifar100", "stl10", "cars", "pets",
                     "birdsnap"]
# pretraining also streams WebDataset tar shards (data/shards.py)
PretrainSourceName = Literal[get_args(SourceName) + ("webdataset",)]  # type: ignore[misc]
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2")

# Per-dataset normalisation constants (mean, std).
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "builtin": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
Triple = tuple[float, float, float]
#: a normalisation: a name of NORMALIZATION, or (mean, std) per RGB channel on the 0..1 scale
Norm = Union[str, tuple[Triple, Triple]]


def norm_stats(norm: Norm) -> tuple[Triple, Triple]:
    """(mean, std) of a normalisation given by name or as the pair itself."""
    return NORMALIZATION[norm] if isinstance(norm, str) else norm


def stat_field(which: str) -> Any:
    return Field(None, description=f"per-channel (R, G, B) {which} on the 0..1 scale, given with "
                                   f"{'std' if which == 'mean' else 'mean'} (normalize custom or auto)")


class Normalized(BaseModel):
    """The ``normalize`` / ``mean`` / ``std`` fields shared by the augmentation and the test transforms.

    ``normalize`` names a set of constants (``imagenet``, ``cifar``, ``builtin``) or is ``custom`` with
    ``mean`` and ``std`` given (giving them alone implies ``custom``); pretraining also takes ``auto``,
    which measures them on the train split before the first step and writes them into ``mean``/``std``.
    Each model declares the three fields itself (:func:`stat_field`), so they stay together in its YAML."""

    @model_validator(mode="before")
    @classmethod
    def _custom_when_given(cls, data: Any) -> Any:
        if isinstance(data, dict) and "normalize" not in data and (data.get("mean") or data.get("std")):
            data = {**data, "normalize": "custom"}
        return data

    @model_validator(mode="after")
    def _stats_fit(self) -> Any:
        given = self.mean is not None, self.std is not None
        if any(given) and not all(given):
            raise ValueError(f"{'std' if given[0] else 'mean'} is missing: mean and std are given together")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"every std must be > 0 (got {list(self.std)})")
        if self.normalize == "custom" and self.mean is None:
            raise ValueError("normalize 'custom' needs mean and std")
        if self.mean is not None and self.normalize not in ("custom", "auto"):
            raise ValueError(f"mean and std are given, but normalize is '{self.normalize}'; set normalize: custom")
        return self

    @property
    def norm(self) -> Norm:
        """What the transforms take: the constants' name, or (mean, std)."""
        if self.mean is not None and self.std is not None:
            return tuple(self.mean), tuple(self.std)  # type: ignore[return-value]
        if self.normalize == "auto":
            raise RuntimeError("augment.normalize 'auto' is measured by pretraining before it is used")
        return self.normalize  # type: ignore[attr-defined,no-any-return]

    def norm_fields(self) -> dict[str, Any]:
        """The test transforms' ``normalize``/``mean``/``std`` that reproduce this normalisation."""
        if self.mean is not None:
            return {"normalize": "custom", "mean": list(self.mean), "std": list(self.std or ())}
        return {"normalize": self.normalize}  # type: ignore[attr-defined]


def _require_root(cfg: Any) -> Any:
    if not cfg.source.startswith("builtin") and not cfg.root:
        raise ValueError(f"data source '{cfg.source}' needs a path: give --data PATH or data.root")
    return cfg


def ordered_pair(v: tuple[float, float]) -> tuple[float, float]:
    if not (0 < v[0] <= v[1]):
        raise ValueError("must be two numbers with 0 < low <= high")
    return v


def area_fraction(v: tuple[float, float]) -> tuple[float, float]:
    if v[1] > 1:
        raise ValueError("crop scale is a fraction of the image area, at most 1")
    return v


# (low, high) with 0 < low <= high; an area range also has high <= 1
PositiveRange = Annotated[tuple[float, float], AfterValidator(ordered_pair)]
AreaRange = Annotated[tuple[float, float], AfterValidator(ordered_pair), AfterValidator(area_fraction)]


def threads_field() -> Any:
    """The ``threads`` field of every protocol that runs a long loop (see leoclr_cli/threads.py)."""
    return Field(None, ge=1, description="CPU threads of the training process (--threads); default: the cores "
                                         "this process may use, divided among torchrun ranks and less one per "
                                         "loader worker; OMP_NUM_THREADS, when set, is kept")


FeatureNorm = Literal["bn", "none"]
# The linear probe's default lr per feature normalisation: MoCo's 30 on raw features; 0.03 on BN-standardised ones
# (a step of 30 on unit-variance features sends the training cross-entropy into the hundreds).
PROBE_LR = {"none": 30.0, "bn": 0.03}


def _logspace(lo: float, hi: float, n: int) -> list[float]:
    return [float(10 ** (lo + (hi - lo) * i / (n - 1))) for i in range(n)] if n > 1 else [float(10 ** lo)]


def _all_positive(v: list[float]) -> list[float]:
    if any(x <= 0 for x in v):
        raise ValueError("every value must be > 0")
    return v


class Strict(BaseModel):
    """Base: unknown keys are errors (a typo in a protocol must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    """Which images to read. ``root`` is required for every source but ``builtin`` (webdataset: the shard
    list, e.g. ``train-{000000..000099}.tar``, local paths or URLs)."""

    source: PretrainSourceName = "builtin"
    root: Optional[str] = None
    split: str = Field("train", description="split to pretrain on (stl10: unlabeled, train+unlabeled, ...)")
    verify_checksums: bool = Field(True, description="check torchvision's MD5s of CIFAR/STL-10 files")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    shuffle: bool = Field(True, description="reshuffle the pretraining images every epoch (off: a fixed order, "
                                            "for reproducibility checks)")
    builtin_train: int = Field(4000, ge=16, description="images in the built-in dataset's train split")
    builtin_test: int = Field(1000, ge=16, description="images in the built-in dataset's test split")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="an image file that cannot be decoded: stop naming it (error), or replace it by "
                             "the next readable image and count it in metrics.jsonl as bad_images_skipped (skip)")
    shard_samples: Optional[int] = Field(
        None, ge=1, description="webdataset: the number of samples in all shards (default: counted from the tar "
                                "headers, which needs every shard to be a local file)")

    _root_needed = model_validator(mode="after")(lambda self: _require_root(self))


class ContrastiveCropConfig(Strict):
    """ContrastiveCrop (Peng et al. 2022): crops placed within a per-image box that the query encoder
    localised. Defaults: the paper's ImageNet values (warm-up 20 of 100 epochs, boxes every 20 epochs,
    threshold 0.1, alpha 0.6); the reference small-data configs use 100 / 100 of 500 epochs."""

    warmup_epochs: int = Field(20, ge=0, description="epochs of plain random crops before the first boxes")
    loc_interval: int = Field(20, ge=1, description="epochs between box updates after the warm-up")
    threshold: float = Field(0.1, ge=0, lt=1, description="k: heat-map pixels above it are inside the box")
    alpha: float = Field(0.6, gt=0, description="Beta(alpha, alpha) draws the crop position in the box")


class AugmentConfig(Normalized, Strict):
    """The MoCo-v2 augmentation with every part switchable (ablations remove parts)."""

    size: int = Field(224, ge=8, description="output size of every view")
    crop: bool = True
    crop_scale: AreaRange = (0.2, 1.0)
    crop_ratio: PositiveRange = (3 / 4, 4 / 3)
    color_jitter: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale: bool = True
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur: bool = True
    blur_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: PositiveRange = (0.1, 2.0)
    flip: bool = True
    normalize: Literal["imagenet", "cifar", "builtin", "custom", "auto"] = Field(
        "imagenet", description="imagenet, cifar, builtin constants; custom: mean and std given; auto: measured on "
                                "a seeded sample of the train split before the first step (written to mean/std)")
    mean: Optional[Triple] = stat_field("mean")
    std: Optional[Triple] = stat_field("std")
    normalize_sample: int = Field(2000, ge=1, description="normalize auto: images drawn (seeded) from the train "
                                                          "split to measure mean and std")
    original: Literal["resize", "pad"] = Field(
        "resize", description="LeOCLR original view: squash the whole image (resize) or keep aspect and pad"
    )
    backend: Literal["pil", "tensor"] = Field(
        "pil", description="pil: every view made by PIL in the DataLoader workers; tensor: the workers decode each "
                           "image once to a fixed-size uint8 tensor and the views are made batched on the training "
                           "device (data/gpu_views.py), the choice for a GPU")
    hue: Literal["hsv", "yiq", "fused"] = Field(
        "hsv", description="colour-jitter hue: hsv = torchvision's exact HSV shift; yiq = a rotation of the "
                           "chroma plane in YIQ space, one 3x3 colour matrix (cheaper, about the same effect); "
                           "fused = yiq, and all four jitter steps composed into one affine colour matrix applied "
                           "in one pass (no clamping between the steps)")
    direct: bool = Field(False, description="backend pil: draw each view's parameters once (with the tensor "
                                            "backend's samplers) and apply them by direct PIL calls: crop and resize "
                                            "in one pass, the jitter as one colour matrix (as hue: fused), the blur "
                                            "as the tensor backend's Gaussian on the float view, no per-transform "
                                            "dispatch (ContrastiveCrop's box crops take the regular path)")
    draft: bool = Field(True, description="decode JPEGs at a reduced scale (1/2, 1/4, 1/8) when the result still "
                                          "has at least size/sqrt(min crop scale) pixels on each side")
    decode_size: Optional[int] = Field(None, ge=8, description="backend tensor: the side of the uint8 image the "
                                                               "workers decode to (default 2 x size)")
    crops: Literal["random", "contrastive", "center-box"] = Field(
        "random", description="random: RandomResizedCrop; contrastive: ContrastiveCrop boxes from the query "
                              "encoder; center-box: one fixed box (0.25, 0.25, 0.75, 0.75) for every image")
    ccrop: ContrastiveCropConfig = ContrastiveCropConfig()

    @model_validator(mode="after")
    def _crops_need_crop(self) -> "AugmentConfig":
        if self.crops != "random" and not self.crop:
            raise ValueError(f"augment.crops '{self.crops}' places crops, but augment.crop is false")
        return self


class ModelConfig(Strict):
    arch: str = "resnet50"
    cifar_stem: bool = Field(False, description="3x3 stride-1 conv1 and no maxpool (small images)")
    dim: int = Field(128, ge=1, description="projection output dimension")
    mlp: bool = Field(True, description="MoCo-v2 MLP head (feat -> feat -> dim, no BN); False: one linear layer")
    bn_splits: int = Field(8, ge=1, description="SplitBatchNorm splits on one device (1 = plain BN)")
    shuffle_bn: bool = Field(True, description="shuffle the key encoder's batch (MoCo's shuffle-BN)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in RESNETS:
            raise ValueError(f"unknown arch '{v}'; choose one of {', '.join(RESNETS)}")
        return v


MethodName = Literal["mocov2", "leoclr", "simclr", "leoclr-e2e", "leoclr-random-original", "leoclr-attract-all"]


class MethodConfig(Strict):
    """``queue_size``, ``momentum``, ``enqueue``, ``key_forward`` and ``queue_init`` belong to the momentum
    methods; the end-to-end ones (simclr, leoclr-e2e) have no key encoder and no queue and ignore them."""

    name: MethodName = "leoclr"
    queue_size: int = Field(65536, ge=1, description="K, keys in the queue")
    momentum: float = Field(0.999, ge=0, lt=1, description="m of the key encoder's EMA")
    temperature: float = Field(0.2, gt=0, description="T of InfoNCE / NT-Xent")
    enqueue: Literal["both", "k1"] = Field("both", description="LeOCLR: enqueue both crop keys or only k1")
    key_forward: Literal["separate", "joint"] = Field(
        "separate", description="LeOCLR: the two crops through f_k as two forwards (per-view BN) or one"
    )
    queue_init: Literal["random", "keys"] = Field(
        "random",
        description="random unit vectors (MoCo) or keys of the first K/B batches, computed before the first "
                    "step; with random negatives the first steps only pull, and on small low-diversity data "
                    "the projection head collapses before the queue fills",
    )


class OptimConfig(Strict):
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.03, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"


class DistributedConfig(Strict):
    """Choices for a torchrun / SLURM data-parallel run (ignored in one process)."""

    bn: Literal["shuffle", "sync"] = Field(
        "shuffle", description="shuffle: per-rank BN with the key encoder's batch shuffled across ranks "
                               "(MoCo, when model.shuffle_bn); sync: SyncBatchNorm in both encoders (CUDA)")
    batch_size: Literal["global", "per_rank"] = Field(
        "global", description="global: optim.batch_size is split over the ranks, lr unchanged; per_rank: every "
                              "rank takes optim.batch_size, and the lr is scaled linearly by the number of ranks")


class MonitorConfig(Strict):
    """Periodic weighted-kNN accuracy of the query backbone during pretraining."""

    knn_every: int = Field(0, ge=0, description="epochs between kNN monitors (0 = off)")
    k: int = Field(200, ge=1)
    t: float = Field(0.1, gt=0)
    max_bank: int = Field(10000, ge=1, description="at most this many labelled train images in the bank")
    max_test: int = Field(2000, ge=1, description="at most this many test images")


class TrackingConfig(Strict):
    """Experiment tracking besides ``metrics.jsonl`` (rank 0 only): per-step loss and lr, per-epoch
    records (samples/s, kNN monitor, ...), the protocol as parameters, and a grid of the views. The
    packages are the optional extra ``leoclr[tracking]``."""

    tensorboard: bool = Field(False, description="write TensorBoard event files to RUN/tensorboard/")
    mlflow: Optional[str | bool] = Field(
        None, description="an MLflow tracking URI, or true for a local file store in RUN/mlruns/")
    mlflow_experiment: str = Field("leoclr", description="the MLflow experiment the run is logged under")
    wandb: Optional[Literal["offline", "online"]] = Field(
        None, description="Weights & Biases: offline (files in RUN/wandb/, `wandb sync` uploads them) or online")
    wandb_project: str = Field("leoclr", description="the W&B project")

    @field_validator("mlflow")
    @classmethod
    def _mlflow(cls, v: Optional[str | bool]) -> Optional[str | bool]:
        if v is False or v == "":
            return None
        return v


class PretrainProtocol(Strict):
    kind: Literal["pretrain"] = "pretrain"
    name: str = "pretrain"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = threads_field()
    deterministic: bool = Field(False, description="torch deterministic algorithms (bit-exact resume on GPU)")
    checkpoint_every: int = Field(10, ge=1, description="epochs between resumable checkpoints")
    checkpoint_every_steps: int = Field(
        0, ge=0, description="also a resumable checkpoint every this many training steps, mid-epoch too (0 = off)")
    keep_checkpoints: int = Field(2, ge=1, description="resumable checkpoints kept (oldest deleted)")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision: auto = bf16 on a CUDA device that supports it, else fp16 with a "
                            "gradient scaler on CUDA, off on the CPU")
    channels_last: bool = Field(True, description="channels-last memory format on CUDA, used when model.bn_splits is 1 "
                                      "(SplitBatchNorm regroups channels, which needs the default layout)")
    compile: Literal["off", "default", "max-autotune-no-cudagraphs"] = Field(
        "off", description="torch.compile the encoders (inductor) with this mode: faster steps once compiled, "
                           "minutes of compiling first (off by default for that reason)")
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    optim: OptimConfig = OptimConfig()
    monitor: MonitorConfig = MonitorConfig()
    distributed: DistributedConfig = DistributedConfig()
    log: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _stream_fits(self) -> "PretrainProtocol":
        if self.data.source == "webdataset" and self.augment.crops != "random":
            raise ValueError(f"augment.crops '{self.augment.crops}' keeps a box per image, which needs an indexed "
                             "source; data.source webdataset streams its images (use augment.crops random)")
        if self.data.source == "webdataset" and self.monitor.knn_every:
            raise ValueError("monitor.knn_every needs the labelled train and test splits of an indexed source; "
                             "data.source webdataset has none (set monitor.knn_every=0, then leoclr knn RUN --data ...)")
        return self

    @model_validator(mode="after")
    def _ccrop_fits(self) -> "PretrainProtocol":
        if self.augment.crops == "contrastive" and self.augment.ccrop.warmup_epochs >= self.optim.epochs:
            raise ValueError(f"augment.ccrop.warmup_epochs ({self.augment.ccrop.warmup_epochs}) must be less than "
                             f"optim.epochs ({self.optim.epochs}) for augment.crops 'contrastive'")
        return self

    @model_validator(mode="after")
    def _splits_fit(self) -> "PretrainProtocol":
        if self.model.bn_splits > 1 and self.optim.batch_size < 2 * self.model.bn_splits:
            raise ValueError(f"optim.batch_size ({self.optim.batch_size}) must be at least twice model.bn_splits "
                             f"({self.model.bn_splits}): each BN split needs two samples")
        if self.model.bn_splits > 1 and self.optim.batch_size % self.model.bn_splits:
            raise ValueError(
                f"optim.batch_size ({self.optim.batch_size}) must be a multiple of model.bn_splits "
                f"({self.model.bn_splits})"
            )
        return self


class EvalDataConfig(Strict):
    """Labelled data for evaluation: a train split (fit / kNN bank) and a test split."""

    source: SourceName = "builtin"
    root: Optional[str] = None
    train_split: str = "train"
    test_split: str = "test"
    verify_checksums: bool = True
    num_workers: int = Field(0, ge=0)
    builtin_train: int = Field(4000, ge=16)
    builtin_test: int = Field(1000, ge=16)

    _root_needed = model_validator(mode="after")(lambda self: _require_root(self))


class EvalTransformConfig(Normalized, Strict):
    """Test-time transform: ``resize-center-crop`` (Resize(resize) + CenterCrop(size)) or ``none``
    (Resize(size) only, e.g. 32 px images are used as they are)."""

    size: int = Field(224, ge=8)
    resize: int = Field(256, ge=8)
    test: Literal["resize-center-crop", "none"] = "resize-center-crop"
    normalize: Literal["imagenet", "cifar", "builtin", "custom"] = Field(
        "imagenet", description="default: the backbone's pretraining normalisation (custom: mean and std)")
    mean: Optional[Triple] = stat_field("mean")
    std: Optional[Triple] = stat_field("std")


class LinearEvalProtocol(Strict):
    kind: Literal["linear-eval"] = "linear-eval"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = threads_field()
    data: EvalDataConfig = EvalDataConfig()
    transform: EvalTransformConfig = EvalTransformConfig()
    train_augment: Literal["random-resized-crop", "none"] = Field(
        "random-resized-crop",
        description="RandomResizedCrop + flip per epoch, or none: features computed once and cached",
    )
    probe: Literal["sgd", "lbfgs"] = Field(
        "sgd", description="sgd: MoCo's SGD schedule on a new fc; lbfgs: multinomial logistic regression fitted with "
                           "L-BFGS over the L2 grid cs (cached features only, train_augment none)")
    feature_norm: Optional[FeatureNorm] = Field(
        None, description="bn: BatchNorm1d without affine on the features before the fc (MAE's linear probe; its "
                          "statistics are part of the saved classifier, frozen at evaluation); none: the raw features "
                          "(MoCo's recipe, the paper's protocol files). Default: bn for train_augment none, else none")
    selection: Literal["val", "test"] = Field(
        "val", description="val: a seeded, class-balanced val_fraction of train is held out and chooses the epoch "
                           "(sgd) or the L2 strength (lbfgs); the chosen classifier is scored once on test. test: "
                           "trained on all of train, the best test epoch / C is reported (MoCo's convention)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of each class of train held out (selection val)")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: Optional[float] = Field(None, gt=0, description=f"default: {PROBE_LR['none']:g} with feature_norm none "
                                                        f"(MoCo), {PROBE_LR['bn']:g} with feature_norm bn")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [60, 80])
    gamma: float = Field(0.1, gt=0, le=1)
    eval_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    cs: list[float] = Field(default_factory=lambda: _logspace(-6, 5, 45), min_length=1,
                            description="probe lbfgs: inverse L2 strengths C swept (Kornblith et al.)")
    lbfgs_max_iter: int = Field(1000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _probe_defaults(cls, data: Any) -> Any:
        """feature_norm follows train_augment, lr follows feature_norm, unless given."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("feature_norm") is None:
            data["feature_norm"] = "bn" if data.get("train_augment") == "none" else "none"
        if data.get("lr") is None and data["feature_norm"] in PROBE_LR:
            data["lr"] = PROBE_LR[data["feature_norm"]]
        return data

    @field_validator("probe")
    @classmethod
    def _lbfgs_on_cached_features(cls, v: str, info: ValidationInfo) -> str:
        if v == "lbfgs" and info.data.get("train_augment") != "none":
            raise ValueError("lbfgs fits on cached features: set train_augment to none")
        return v

    @field_validator("cs")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        return _all_positive(v)


class KnnProtocol(Strict):
    kind: Literal["knn"] = "knn"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = threads_field()
    data: EvalDataConfig = EvalDataConfig()
    transform: EvalTransformConfig = EvalTransformConfig()
    k: int = Field(200, ge=1)
    t: float = Field(0.1, gt=0)
    batch_size: int = Field(256, ge=1)


# Detection schedules (MoCo's VOC 24k; Detectron2's COCO 1x / 2x): (iterations, lr steps, warm-up iterations)
DETECT_SCHEDULES = {"24k": (24000, [18000, 22000], 100), "1x": (90000, [60000, 80000], 1000),
                    "2x": (180000, [120000, 160000], 1000)}
DETECT_TRAIN_SIZES = {"voc": list(range(480, 801, 32)), "coco": [640, 672, 704, 736, 768, 800]}


class DetectProtocol(Strict):
    """Faster R-CNN R50-C4 transfer with MoCo's Detectron2 recipe (``Base-RCNN-C4-BN`` + ``*_moco``).

    Solver values are for ``reference_gpus`` (8) GPUs with 2 images each; with fewer GPUs
    :meth:`solver` rescales linearly (half the GPUs: half the batch and lr, twice the iterations,
    steps and warm-up), as Detectron2's ``REFERENCE_WORLD_SIZE``.
    """

    kind: Literal["detect"] = "detect"
    dataset: Literal["voc", "coco"] = "voc"
    root: Optional[str] = Field(None, description="VOCdevkit (or its parent) for voc; the coco folder for coco")
    backend: Literal["auto", "detectron2", "torchvision"] = Field(
        "auto", description="auto: detectron2 when it can be imported, else torchvision")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = threads_field()
    seed: int = 0
    trials: int = Field(1, ge=1, description="independent runs with seeds seed, seed+1, ...; mean and std reported")
    num_workers: int = Field(4, ge=0)
    voc_train: list[str] = Field(default_factory=lambda: ["2007-trainval", "2012-trainval"])
    voc_test: str = "2007-test"
    coco_train: str = "train2017"
    coco_test: str = "val2017"
    schedule: Optional[Literal["24k", "1x", "2x"]] = Field(None, description="default: 24k for voc, 1x for coco")
    gpus: Optional[int] = Field(None, ge=1, description="GPUs (processes); default all visible, 1 without CUDA")
    reference_gpus: int = Field(8, ge=1, description="the GPU count the solver values are for")
    rescale: bool = Field(True, description="rescale batch, lr and schedule linearly to the GPUs used")
    ims_per_batch: int = Field(16, ge=1)
    base_lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    weight_decay_norm: float = Field(0.0, ge=0)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_factor: float = Field(0.001, gt=0, le=1)
    max_iter: Optional[int] = Field(None, ge=1, description="default: from the schedule")
    steps: Optional[list[int]] = Field(None, description="lr steps; default: from the schedule")
    warmup_iters: Optional[int] = Field(None, ge=0, description="default: from the schedule")
    min_size_train: Optional[list[int]] = Field(None, description="shorter side drawn per image; default 480..800 "
                                                                  "step 32 (voc), 640..800 step 32 (coco)")
    max_size_train: int = Field(1333, ge=16)
    min_size_test: int = Field(800, ge=16)
    max_size_test: int = Field(1333, ge=16)
    flip: bool = True
    norm: Literal["naiveSyncBN", "SyncBN", "BN"] = Field(
        "naiveSyncBN", description="norm in the backbone and res5 head (naiveSyncBN = BN on one device)")
    extra_norm: bool = Field(True, description="MoCo's extra norm after res5 (Res5ROIHeadsExtraNorm)")
    freeze_at: int = Field(0, ge=0, le=5, description="Detectron2 FREEZE_AT (0: nothing frozen)")
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    rpn_batch_size_per_image: int = Field(256, ge=1)
    rpn_pre_nms_topk_train: int = Field(12000, ge=1)
    rpn_post_nms_topk_train: int = Field(2000, ge=1)
    rpn_pre_nms_topk_test: int = Field(6000, ge=1)
    rpn_post_nms_topk_test: int = Field(1000, ge=1)
    roi_batch_size_per_image: int = Field(512, ge=1)
    detections_per_image: int = Field(100, ge=1)
    precise_bn: bool = Field(True, description="recompute BN statistics before testing (Detectron2 PreciseBN)")
    precise_bn_iters: int = Field(200, ge=1)
    period: int = Field(1000, ge=1, description="iterations per metrics record (torchvision backend)")
    max_test_images: Optional[int] = Field(None, ge=1, description="test on the first N images only (smoke runs)")

    @model_validator(mode="after")
    def _fits(self) -> "DetectProtocol":
        if not self.root:
            raise ValueError(f"{self.dataset} detection needs its dataset: give --data PATH or root")
        if self.dataset == "voc" and self.schedule not in (None, "24k"):
            raise ValueError(f"schedule {self.schedule} is a COCO schedule; VOC uses 24k")
        if self.dataset == "coco" and self.schedule == "24k":
            raise ValueError("schedule 24k is the VOC schedule; COCO uses 1x or 2x")
        if self.steps is not None and sorted(self.steps) != self.steps:
            raise ValueError("steps must be increasing")
        return self

    def solver(self, gpus: int) -> dict[str, Any]:
        """Batch, lr, iterations, steps, warm-up for ``gpus`` GPUs (the rescale rule applied when asked)."""
        it, steps, warmup = DETECT_SCHEDULES[self.schedule or ("24k" if self.dataset == "voc" else "1x")]
        it = self.max_iter or it
        steps = self.steps if self.steps is not None else steps
        warmup = self.warmup_iters if self.warmup_iters is not None else warmup
        scale = gpus / self.reference_gpus if self.rescale else 1.0
        batch = max(1, round(self.ims_per_batch * scale))
        scale = batch / self.ims_per_batch  # the scale actually applied
        return {"ims_per_batch": batch, "base_lr": self.base_lr * scale, "max_iter": max(1, round(it / scale)),
                "steps": [round(s / scale) for s in steps], "warmup_iters": round(warmup / scale), "scale": scale}

    def train_sizes(self) -> list[int]:
        return self.min_size_train or DETECT_TRAIN_SIZES[self.dataset]


# --------------------------------------------------------------------------- finetune, transfer


class FinetuneProtocol(Strict):
    """Semi-supervised fine-tuning (SimCLR's protocol, Table 2 / Figure 3): all layers tuned, a new fc,
    RandomResizedCrop + flip only, no weight decay, top-1/top-5 on the full test/val split."""

    kind: Literal["finetune"] = "finetune"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = threads_field()
    data: EvalDataConfig = EvalDataConfig()
    transform: EvalTransformConfig = EvalTransformConfig()
    labels: float = Field(10.0, gt=0, le=100, description="percent of the labelled train split used")
    subset_file: Optional[str] = Field(
        None, description="a list of the train images to use: file names, one per line (SimCLR's 1percent.txt / "
                          "10percent.txt; class from the prefix before '_', or '<class>/<file>'), or image indices "
                          "for array datasets (CIFAR, STL-10, builtin); None: a class-balanced subset drawn with "
                          "subset_seed")
    subset_seed: int = Field(0, description="seed of the class-balanced draw")
    epochs: Optional[int] = Field(
        None, ge=1, description="None: 60 epochs below 10% labels, 30 from 10% up (SimCLR: 60 for 1%, 30 for 10%)")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.05, gt=0, description="SimCLR's SGD-Nesterov rule 0.05 x batch/256 at batch 256")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(1, ge=1)

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (60 if self.labels < 10 else 30)


TRANSFER_DATASETS = ("cifar10", "cifar100", "cars", "pets", "birdsnap")


class TransferProtocol(Strict):
    """Transfer (Kornblith et al. 2019, Table 3): a grid over lr x wd on a seeded 20% validation split of
    train, refit on train+val with the best cell, one test evaluation; or (mode linear) L-BFGS logistic
    regression on frozen features over an L2 grid."""

    kind: Literal["transfer"] = "transfer"
    dataset: Literal["cifar10", "cifar100", "cars", "pets", "birdsnap"] = "cifar10"
    mode: Literal["finetune", "linear"] = "finetune"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = threads_field()
    root: Optional[str] = Field(None, description="dataset root in its official layout")
    verify_checksums: bool = True
    num_workers: int = Field(0, ge=0)
    transform: EvalTransformConfig = EvalTransformConfig()
    val_fraction: float = Field(0.2, gt=0, lt=1, description="random share of train held out to pick the cell")
    split_seed: int = Field(0, description="seed of the train/val split")
    # fine-tuning
    lrs: list[float] = Field(default_factory=lambda: _logspace(-4, -1, 7), min_length=1)
    wds: list[float] = Field(default_factory=lambda: [0.0] + _logspace(-6, -3, 7), min_length=1)
    wd_over_lr: bool = Field(True, description="weight decay divided by lr (Kornblith's parametrisation)")
    steps: int = Field(20000, ge=1, description="optimizer steps, rounded up to whole epochs over the fit set")
    batch_size: int = Field(256, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    # linear (L-BFGS logistic regression on frozen features)
    cs: list[float] = Field(default_factory=lambda: _logspace(-6, 5, 45), min_length=1,
                            description="inverse L2 strengths C (sklearn's: C x summed loss + |W|^2 / 2)")
    lbfgs_max_iter: int = Field(1000, ge=1)
    feature_norm: FeatureNorm = Field("bn", description="mode linear: standardise the features (BatchNorm1d "
                                                         "statistics of the fit set) before the regression, or none")

    @field_validator("lrs", "cs")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        return _all_positive(v)

    @field_validator("wds")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v):
            raise ValueError("every value must be >= 0")
        return v

    @model_validator(mode="after")
    def _root_given(self) -> "TransferProtocol":
        if not self.root:
            raise ValueError(f"dataset '{self.dataset}' needs a path: give --data PATH or root")
        return self


PROTOCOLS: dict[str, type[Strict]] = {
    "pretrain": PretrainProtocol,
    "linear-eval": LinearEvalProtocol,
    "knn": KnnProtocol,
    "detect": DetectProtocol,
}
PROTOCOLS.update({"finetune": FinetuneProtocol, "transfer": TransferProtocol})


# --------------------------------------------------------------------------- crop test, ablations (Table 7, Figure 4)


class CropTestProtocol(Normalized, Strict):
    """Table 7: one trained linear classifier tested with a) Resize(resize, shorter side) + CenterCrop(size)
    and b) Resize((resize, resize)) + RandomResizedCrop(size, random_scale, random_ratio). The paper names
    no scale range for b); the default is torchvision's (0.08, 1), the crop the linear classifier was
    trained with. Values default to the linear-eval run's protocol."""

    kind: Literal["crop-test"] = "crop-test"
    seed: int = Field(0, description="seeds the random crops (image i of repeat r: seed + r, i)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = threads_field()
    data: EvalDataConfig = EvalDataConfig()
    size: int = Field(224, ge=8, description="crop size of both tests")
    resize: int = Field(256, ge=8, description="a) shorter side resized to this; b) image resized to resize x resize")
    normalize: Literal["imagenet", "cifar", "builtin", "custom"] = "imagenet"
    mean: Optional[Triple] = stat_field("mean")
    std: Optional[Triple] = stat_field("std")
    interpolation: Literal["bicubic", "bilinear"] = Field("bicubic", description="the paper: bicubic")
    random_scale: AreaRange = Field((0.08, 1.0), description="b) RandomResizedCrop area fraction")
    random_ratio: PositiveRange = (3 / 4, 4 / 3)
    repeats: int = Field(1, ge=1, description="b) passes over the test split with fresh crops; the mean is reported")
    batch_size: int = Field(256, ge=1)


# Figure 4: the names of the removable augmentation parts and the AugmentConfig switches each turns off.
AUGMENT_PARTS: dict[str, tuple[str, ...]] = {
    "color": ("color_jitter",),
    "grayscale": ("grayscale",),
    "blur": ("blur",),
    "flip": ("flip",),
    "all-but-crop": ("color_jitter", "grayscale", "blur", "flip"),
}
AugmentPart = Literal["color", "grayscale", "blur", "flip", "all-but-crop"]


class AblateProtocol(Strict):
    """Figure 4: pretrain with augmentation parts removed, linear-evaluate, compare with a baseline run.

    The pretraining and linear-eval protocols are the usual ones (written in the ablation's
    ``pretrain/`` and ``pretrain/linear-eval/`` directories); this records what the ablation adds."""

    kind: Literal["ablate"] = "ablate"
    remove: list[AugmentPart] = Field(min_length=1, description="augmentation parts removed from every view")
    baseline: Optional[str] = Field(None, description="the full-augmentation run the drop is measured against")
    metric: Literal["top1", "top1_last"] = Field(
        "top1", description="linear-eval top-1 compared: top1 (the classifier selected on validation) or top1_last")

    @field_validator("remove")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


PROTOCOLS.update({"crop-test": CropTestProtocol, "ablate": AblateProtocol})


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"protocol file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"protocol file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"protocol file {path} must hold a mapping of fields, not a {type(data).__name__}")
    return data


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating mappings on the way."""
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set a.b=VALUE`` items to a dotted mapping; VALUE is parsed as YAML (numbers, lists, bools)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r} must look like field.path=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    """The first error as one sentence: field path, the rule broken, the value given."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or "(protocol)"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown field '{loc}'"
    given = first.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: field '{loc}': {msg}{shown}{more}"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_protocol(kind: str, path: Optional[Path] = None, overrides: Optional[dict[str, Any]] = None,
                  defaults: Optional[dict[str, Any]] = None) -> Any:
    """Validate a protocol made of, in rising precedence: the model's defaults, dotted ``defaults``
    (e.g. derived from the pretraining run being evaluated), the file ``path``, dotted ``overrides``."""
    model = PROTOCOLS[kind]
    tree: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    file_kind = tree.get("kind")
    if file_kind is not None and file_kind != kind:
        raise UserError(f"protocol file {path} is a '{file_kind}' protocol, not a '{kind}' one")
    base: dict[str, Any] = {}
    for dotted, value in (defaults or {}).items():
        if value is not None:
            set_dotted(base, dotted, value)
    tree = _merge(base, tree)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise UserError(format_validation_error(e, str(path) if path else f"{kind} protocol")) from None


def protocol_json(protocol: BaseModel) -> str:
    return json.dumps(protocol.model_dump(mode="json"), sort_keys=True)


def write_protocol(protocol: BaseModel, path: Path) -> None:

    atomic_write_text(path, yaml.safe_dump(protocol.model_dump(mode="json"), sort_keys=False))
