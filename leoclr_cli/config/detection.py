"""The detection protocol (``leoclr detect``): Faster R-CNN R50-C4 with MoCo's Detectron2 recipe."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from .common import Seed, Strict, Threads, TrackingConfig, threads_field

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
    threads: Threads = threads_field()
    seed: Seed = 0
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
    log: TrackingConfig = Field(TrackingConfig(), description="trackers of each trial (trial-N/): the torchvision "
                                "backend's steps and records, every trial's AP")

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
