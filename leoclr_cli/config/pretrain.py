"""The pretraining protocol (``leoclr pretrain``) and its sections, and the augmentation ablation
(``leoclr ablate``, Figure 4) built on it."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from .common import (TIMM_PREFIX, AreaRange, BuiltinCount, Normalized, PositiveRange, PretrainSourceName, Seed,
                     Strict, Threads, TrackingConfig, Triple, check_arch, default_local_size, require_root, stat_field,
                     threads_field, timm_kwargs_problem)


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
    builtin_train: BuiltinCount = Field(4000, description="images in the built-in dataset's train split")
    builtin_test: BuiltinCount = Field(1000, description="images in the built-in dataset's test split")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="an image file that cannot be decoded: stop naming it (error), or replace it by "
                             "the next readable image and count it in metrics.jsonl as bad_images_skipped (skip)")
    shard_samples: Optional[int] = Field(
        None, ge=1, description="webdataset: the number of samples in all shards (default: counted from the tar "
                                "headers, which needs every shard to be a local file)")

    _root_needed = model_validator(mode="after")(lambda self: require_root(self))


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
    local_crops: int = Field(0, ge=0, description="LeOCLR's multi-crop: this many small crops per image besides the "
                                                  "two crops, each through the key encoder and pulled to the original "
                                                  "(docs/method.md); 0 = the paper's method")
    local_size: Optional[int] = Field(
        None, ge=4, description="side of the local crops; default 3/7 of size (96 at 224, 12 at 32), a multiple of 4 "
                                "or of a ViT's patch size")
    local_scale: AreaRange = Field((0.05, 0.4), description="area range of the local crops (DINO's)")

    @property
    def local_side(self) -> int:
        """The local crops' side: ``local_size``, or its default for ``size``."""
        return self.local_size or default_local_size(self.size)

    @model_validator(mode="after")
    def _crops_need_crop(self) -> "AugmentConfig":
        if self.crops != "random" and not self.crop:
            raise ValueError(f"augment.crops '{self.crops}' places crops, but augment.crop is false")
        return self


class ModelConfig(Strict):
    arch: str = Field("resnet50", description="a torchvision ResNet (resnet18 ... wide_resnet101_2) or timm:NAME, any "
                                              "timm model (the extra leoclr[timm]) without its classifier")
    timm_kwargs: Optional[dict[str, Any]] = Field(
        None, description="timm:NAME only: keyword arguments of timm.create_model; those not given are chosen for the "
                          "view size when pretraining starts (img_size, a patch size that fits, dynamic_img_size) and "
                          "written here")
    cifar_stem: bool = Field(False, description="3x3 stride-1 conv1 and no maxpool (small images)")
    dim: int = Field(128, ge=1, description="projection output dimension")
    mlp: bool = Field(True, description="MoCo-v2 MLP head (feat -> feat -> dim, no BN); False: one linear layer")
    bn_splits: int = Field(8, ge=1, description="SplitBatchNorm splits on one device (1 = plain BN)")
    shuffle_bn: bool = Field(True, description="shuffle the key encoder's batch (MoCo's shuffle-BN)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        return check_arch(v)

    @field_validator("timm_kwargs")
    @classmethod
    def _timm_kwargs_plain(cls, v: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        problem = timm_kwargs_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _timm_fields(self) -> "ModelConfig":
        timm = self.arch.startswith(TIMM_PREFIX)
        if timm and self.cifar_stem:
            raise ValueError(f"model.cifar_stem changes a torchvision ResNet's conv1; {self.arch} is a timm model "
                             "(set model.cifar_stem=false)")
        if not timm and self.timm_kwargs:
            raise ValueError(f"model.timm_kwargs apply to a timm:NAME arch, not to {self.arch}")
        return self


MethodName = Literal["mocov2", "leoclr", "simclr", "leoclr-e2e", "leoclr-random-original", "leoclr-attract-all"]
#: the methods that take ``augment.local_crops`` (LeOCLR's multi-crop: the anchor, two crops and N local crops)
LOCAL_CROP_METHODS = ("leoclr", "leoclr-random-original")


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
    """The optimizer of the query encoder. ``sgd`` with the defaults is MoCo's (the paper's protocols);
    ``adamw`` with a warm-up and no weight decay on norm and bias parameters is MoCo v3's / DINO's recipe for ViTs."""

    name: Literal["sgd", "adamw"] = Field("sgd", description="sgd (momentum) or adamw (betas 0.9, 0.999)")
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.03, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd's momentum (adamw ignores it)")
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(
        0, ge=0, description="linear warm-up of the lr from 0 over this many epochs; > 0 sets the lr every step "
                             "(warm-up, then the schedule over the rest); 0: the lr is set once per epoch (MoCo)")
    decay_norm_bias: Optional[bool] = Field(
        None, description="weight decay also on biases and norm parameters (every 1-D tensor); default: true with sgd "
                          "(MoCo decays every parameter), false with adamw (MoCo v3, DINO)")

    @property
    def decays_norm_bias(self) -> bool:
        return self.decay_norm_bias if self.decay_norm_bias is not None else self.name == "sgd"

    @model_validator(mode="after")
    def _warmup_fits(self) -> "OptimConfig":
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"optim.warmup_epochs ({self.warmup_epochs:g}) must be less than optim.epochs "
                             f"({self.epochs})")
        return self


class DistributedConfig(Strict):
    """Choices for a torchrun / SLURM data-parallel run (ignored in one process)."""

    bn: Literal["shuffle", "sync"] = Field(
        "shuffle", description="shuffle: per-rank BN with the key encoder's batch shuffled across ranks "
                               "(MoCo, when model.shuffle_bn); sync: SyncBatchNorm in both encoders (CUDA)")
    batch_size: Literal["global", "per_rank"] = Field(
        "global", description="global: optim.batch_size is split over the ranks, lr unchanged; per_rank: every "
                              "rank takes optim.batch_size, and the lr is scaled linearly by the number of ranks")


class MonitorConfig(Strict):
    """What pretraining measures of its query backbone on the source's labelled splits as it trains: a
    weighted kNN top-1 (``knn_every``) and an online linear probe (``linear_every``, solo-learn's online
    classifier: a BatchNorm1d-without-affine + linear head on the detached pooled features of a view the
    method already computes, trained on the pretraining split's labels at every step in its own optimizer
    group; the backbone's gradients and trajectory are unchanged). Both report top-1 (%) on the test split;
    on data without labels they are off, with one line saying so."""

    knn_every: int = Field(0, ge=0, description="epochs between kNN monitors (0 = off)")
    linear_every: int = Field(0, ge=0, description="epochs between test-split evaluations of the online linear "
                                                   "probe, which then trains at every step (0 = off)")
    linear_lr: float = Field(0.1, gt=0, description="the online probe's lr at the start; it follows the "
                                                    "pretraining lr schedule (weight decay 0)")
    k: int = Field(200, ge=1)
    t: float = Field(0.1, gt=0)
    max_bank: int = Field(10000, ge=1, description="at most this many labelled train images in the bank")
    max_test: int = Field(2000, ge=1, description="at most this many test images")


class PretrainProtocol(Strict):
    kind: Literal["pretrain"] = "pretrain"
    name: str = "pretrain"
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Threads = threads_field()
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
        for field in ("knn_every", "linear_every"):
            if self.data.source == "webdataset" and getattr(self.monitor, field):
                raise ValueError(f"monitor.{field} needs the labelled train and test splits of an indexed source; "
                                 f"data.source webdataset has none (set monitor.{field}=0, then leoclr knn or "
                                 "linear-eval RUN --data ...)")
        return self

    @model_validator(mode="after")
    def _local_crops_fit(self) -> "PretrainProtocol":
        if self.augment.local_crops and self.method.name not in LOCAL_CROP_METHODS:
            methods = " or ".join(LOCAL_CROP_METHODS)
            raise ValueError(f"augment.local_crops ({self.augment.local_crops}) is LeOCLR's multi-crop, which method "
                             f"'{self.method.name}' does not take; use method {methods}, or set augment.local_crops=0")
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


# --------------------------------------------------------------------------- ablations (Figure 4)


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
