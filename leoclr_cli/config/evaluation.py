"""The evaluation protocols: linear probe, kNN, semi-supervised fine-tuning, transfer and the crop
test (Table 7), with the labelled-data and test-transform sections they share."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .common import (AreaRange, BuiltinCount, Normalized, PositiveRange, Seed, SourceName, Strict, Threads,
                     TrackingConfig, Triple, require_root, stat_field, threads_field)

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


#: views at most this many pixels on a side are small: tested as they are, without a resize and center crop
SMALL_IMAGES = 96


def eval_transform_for(size: int) -> dict[str, Any]:
    """The test transform (``size``, ``resize``, ``test`` of :class:`EvalTransformConfig`) of a backbone
    pretrained on ``size``-px views: small ones as they are, larger ones Resize(size x 8/7) + CenterCrop(size)
    (224 -> 256, as MoCo tests)."""
    small = size <= SMALL_IMAGES
    return {"size": size, "resize": size if small else round(size * 8 / 7),
            "test": "none" if small else "resize-center-crop"}


class EvalDataConfig(Strict):
    """Labelled data for evaluation: a train split (fit / kNN bank) and a test split."""

    source: SourceName = "builtin"
    root: Optional[str] = None
    train_split: str = "train"
    test_split: str = "test"
    verify_checksums: bool = True
    num_workers: int = Field(0, ge=0)
    builtin_train: BuiltinCount = Field(4000)
    builtin_test: BuiltinCount = Field(1000)

    _root_needed = model_validator(mode="after")(lambda self: require_root(self))


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


class EvalOnData(Strict):
    """What a protocol that evaluates a backbone on a labelled dataset shares (linear-eval, finetune);
    each subclass gives ``kind`` its literal, which keeps its place first."""

    kind: str
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Threads = threads_field()
    data: EvalDataConfig = EvalDataConfig()
    transform: EvalTransformConfig = EvalTransformConfig()


class LinearEvalProtocol(EvalOnData):
    log: TrackingConfig = TrackingConfig()
    kind: Literal["linear-eval"] = "linear-eval"
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
    threads: Threads = threads_field()
    data: EvalDataConfig = EvalDataConfig()
    transform: EvalTransformConfig = EvalTransformConfig()
    k: int = Field(200, ge=1)
    t: float = Field(0.1, gt=0)
    batch_size: int = Field(256, ge=1)
    log: TrackingConfig = TrackingConfig()


# --------------------------------------------------------------------------- finetune, transfer


class FinetuneProtocol(EvalOnData):
    """Semi-supervised fine-tuning (SimCLR's protocol, Table 2 / Figure 3): all layers tuned, a new fc,
    RandomResizedCrop + flip only, no weight decay, top-1/top-5 on the full test/val split."""

    kind: Literal["finetune"] = "finetune"
    labels: float = Field(10.0, gt=0, le=100, description="percent of the labelled train split used")
    subset_file: Optional[str] = Field(
        None, description="a list of the train images to use: file names, one per line (SimCLR's 1percent.txt / "
                          "10percent.txt; class from the prefix before '_', or '<class>/<file>'), or image indices "
                          "for array datasets (CIFAR, STL-10, builtin); None: a class-balanced subset drawn with "
                          "subset_seed")
    subset_seed: Seed = Field(0, description="seed of the class-balanced draw")
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
    log: TrackingConfig = TrackingConfig()

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
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Threads = threads_field()
    root: Optional[str] = Field(None, description="dataset root in its official layout")
    verify_checksums: bool = True
    num_workers: int = Field(0, ge=0)
    transform: EvalTransformConfig = EvalTransformConfig()
    val_fraction: float = Field(0.2, gt=0, lt=1, description="random share of train held out to pick the cell")
    split_seed: Seed = Field(0, description="seed of the train/val split")
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
    log: TrackingConfig = TrackingConfig()

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


# --------------------------------------------------------------------------- crop test (Table 7)


class CropTestProtocol(Normalized, Strict):
    """Table 7: one trained linear classifier tested with a) Resize(resize, shorter side) + CenterCrop(size)
    and b) Resize((resize, resize)) + RandomResizedCrop(size, random_scale, random_ratio). The paper names
    no scale range for b); the default is torchvision's (0.08, 1), the crop the linear classifier was
    trained with. Values default to the linear-eval run's protocol."""

    kind: Literal["crop-test"] = "crop-test"
    seed: Seed = Field(0, description="seeds the random crops (image i of repeat r: seed + r, i)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Threads = threads_field()
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
