"""MoCo's Detectron2 recipe (``Base-RCNN-C4-BN.yaml`` + ``pascal_voc_R_50_C4_24k_moco.yaml`` /
``coco_R_50_C4_2x_moco.yaml``), built as a config in code (``detectron2.model_zoo`` is not used).

One trial runs in :func:`trial_worker` through Detectron2's ``launch`` (one process per GPU).
The backbone is loaded in memory through ``DetectionCheckpointer`` with suffix matching, exactly
as the exported .pkl would be; Detectron2's periodic ``.pth`` checkpoints are not written (the
final model is saved as safetensors). Instead a hook (:func:`_checkpoints_hook`) writes the
project's train state (``checkpoints/state_e0000_sNNNNNN.safetensors`` after NNNNNN iterations:
model, optimizer, lr scheduler, RNGs) every ``period`` iterations and after the last one, and stops
the loop within one iteration of a SIGTERM/SIGINT after writing one (exit 75); a resume continues
from it. PreciseBN and the test pass run after the loop and stop within one batch of a signal.

The AP is Detectron2's own: ``PascalVOCDetectionEvaluator``
(VOC, the 2007 11-point metric for VOC2007) or ``COCOEvaluator`` (COCO), on the tested images
(:func:`test_evaluator`); the torchvision backend scores with the project's metrics
(``metrics.py``), which give the same AP on the same detections (a test checks it).
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any, Optional

import torch

from ..core import checkpoint as ckpt
from ..core import preempt
from ..core.atomic import atomic_write_text
from ..core.engine import read_metrics
from ..core.rundir import RunDir
from ..errors import Preempted
from .export import detectron2_checkpoint
from .trial import finish_trial


def import_error() -> Optional[str]:
    """None when Detectron2 can be imported, else why not (one line)."""
    try:
        import detectron2  # noqa: F401
        from detectron2.engine import DefaultTrainer  # noqa: F401
        from detectron2.modeling import build_model  # noqa: F401
    except Exception as e:  # any import-time failure means: not usable here
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def register_extra_norm() -> None:
    """``Res5ROIHeadsExtraNorm``: Res5ROIHeads with MoCo's norm appended to res5."""
    from detectron2.layers import get_norm
    from detectron2.modeling import ROI_HEADS_REGISTRY
    from detectron2.modeling.roi_heads import Res5ROIHeads

    if "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY:
        return

    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):  # noqa: F841 (registered by the decorator)
        @classmethod
        def _build_res5_block(cls, cfg):
            seq, out_channels = super()._build_res5_block(cfg)
            seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return seq, out_channels


def build_config(p, solver: dict[str, Any], num_classes: int, train_name: str, test_name: str, out_dir: Path,
                 device: str, seed: int):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    m = cfg.MODEL
    m.META_ARCHITECTURE, m.DEVICE, m.WEIGHTS, m.MASK_ON = "GeneralizedRCNN", device, "", False
    m.BACKBONE.NAME, m.BACKBONE.FREEZE_AT = "build_resnet_backbone", p.freeze_at
    m.RESNETS.DEPTH, m.RESNETS.OUT_FEATURES, m.RESNETS.NORM = 50, ["res4"], p.norm
    m.RESNETS.STRIDE_IN_1X1 = False
    m.PIXEL_MEAN, m.PIXEL_STD = list(p.pixel_mean), list(p.pixel_std)
    m.ANCHOR_GENERATOR.SIZES, m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[32, 64, 128, 256, 512]], [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES, m.RPN.BATCH_SIZE_PER_IMAGE = ["res4"], p.rpn_batch_size_per_image
    m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN = p.rpn_pre_nms_topk_train, p.rpn_post_nms_topk_train
    m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST = p.rpn_pre_nms_topk_test, p.rpn_post_nms_topk_test
    m.ROI_HEADS.NAME = "Res5ROIHeadsExtraNorm" if p.extra_norm else "Res5ROIHeads"
    m.ROI_HEADS.IN_FEATURES, m.ROI_HEADS.NUM_CLASSES = ["res4"], num_classes
    m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = p.roi_batch_size_per_image
    m.ROI_HEADS.SCORE_THRESH_TEST, m.ROI_HEADS.NMS_THRESH_TEST = 0.05, 0.5
    m.ROI_BOX_HEAD.POOLER_TYPE, m.ROI_BOX_HEAD.POOLER_RESOLUTION = "ROIAlignV2", 14
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = tuple(p.train_sizes()), "choice"
    cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = (
        p.max_size_train, p.min_size_test, p.max_size_test)
    cfg.INPUT.RANDOM_FLIP = "horizontal" if p.flip else "none"
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train_name,), (test_name,)
    cfg.DATALOADER.NUM_WORKERS = p.num_workers
    s = cfg.SOLVER
    s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER = solver["ims_per_batch"], solver["base_lr"], solver["max_iter"]
    s.STEPS, s.WARMUP_ITERS, s.WARMUP_FACTOR = tuple(solver["steps"]), solver["warmup_iters"], p.warmup_factor
    s.GAMMA, s.MOMENTUM, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM = p.gamma, p.momentum, p.weight_decay, p.weight_decay_norm
    s.CHECKPOINT_PERIOD = 10 ** 9  # the Checkpoints hook writes our own train states instead
    s.REFERENCE_WORLD_SIZE = 0  # the rescale rule is applied (and stated) by leoclr
    cfg.TEST.DETECTIONS_PER_IMAGE, cfg.TEST.EVAL_PERIOD = p.detections_per_image, 0
    # PreciseBN runs after the loop (trial_worker), where a signal can stop it and a resume finds it to do
    cfg.TEST.PRECISE_BN.ENABLED, cfg.TEST.PRECISE_BN.NUM_ITER = False, p.precise_bn_iters
    cfg.OUTPUT_DIR, cfg.SEED = str(out_dir), seed
    cfg.freeze()
    return cfg


def load_backbone_into(model: torch.nn.Module, backbone_state: dict[str, torch.Tensor]):
    """Load the backbone as Detectron2 loads the exported .pkl; returns fvcore's incompatible keys."""
    from detectron2.checkpoint import DetectionCheckpointer


    return DetectionCheckpointer(model)._load_model(detectron2_checkpoint(backbone_state))


def _register(name: str, records: list[dict[str, Any]], classes: list[str]) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(thing_classes=list(classes))


def test_evaluator(spec: dict[str, Any], name: str, work_dir: Path):
    """Detectron2's evaluator of the registered test set ``name``: ``PascalVOCDetectionEvaluator`` reading
    the VOC XML files, over an image list of the tested images written to ``work_dir/voc-eval`` (so
    ``max_test_images`` is honoured), or ``COCOEvaluator`` with pycocotools' COCOeval on the annotation
    file (``bbox`` only)."""
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    meta = MetadataCatalog.get(name)
    if spec["dataset"] == "voc":
        year = int(spec["protocol"].voc_test.partition("-")[0])
        voc_dir = Path(spec["test"][0]["file_name"]).parents[1]  # VOCdevkit/VOC<year>
        shadow = Path(work_dir) / "voc-eval"
        (shadow / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (shadow / "ImageSets" / "Main" / "test.txt").write_text("".join(r["image_id"] + "\n" for r in spec["test"]))
        if not (shadow / "Annotations").exists():
            (shadow / "Annotations").symlink_to((voc_dir / "Annotations").resolve(), target_is_directory=True)
        meta.set(dirname=str(shadow), year=year, split="test")
        return PascalVOCDetectionEvaluator(name)
    meta.set(json_file=spec["ann_file"], thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(spec["cat_ids"])})
    return COCOEvaluator(name, tasks=("bbox",), distributed=True, use_fast_impl=False)


def bbox_metrics(results: dict[str, Any]) -> dict[str, float]:
    """AP, AP50, AP75 (percent) of a Detectron2 evaluator's results (NaN, no detection at all: 0)."""
    bbox = results.get("bbox", {})
    values = {k: float(bbox.get(k, 0.0)) for k in ("AP", "AP50", "AP75")}
    return {k: 0.0 if math.isnan(v) else v for k, v in values.items()}


class _Stopped(BaseException):
    """Leaves Detectron2's loop at a signal: a BaseException, so that the loop does not log it as a failure
    (its ``finally`` still closes the writers); :func:`trial_worker` raises Preempted in its place."""


def _checkpoints_hook(spec: dict[str, Any], period: int):
    """Detectron2's trainer hook (built here: Detectron2 is imported lazily) that saves and stops; see the
    module docstring."""
    from detectron2.engine import HookBase
    from detectron2.utils import comm

    class Checkpoints(HookBase):
        def after_step(self):
            done = self.trainer.iter + 1
            signum = preempt.requested() or 0
            if comm.get_world_size() > 1:  # every process stops at the same iteration
                signum = max(comm.all_gather(signum))
            if signum or done % period == 0 or done == self.trainer.max_iter:
                path = _save(self.trainer, done, spec) if comm.is_main_process() else None
                if signum:
                    written = f"checkpoint {path} written" if path else "checkpoint written by rank 0"
                    raise _Stopped(f"{signal.Signals(signum).name} at iteration {done} of {self.trainer.max_iter}; "
                                   f"{written}; continue with --resume auto")

    return Checkpoints()


def _save(trainer, done: int, spec: dict[str, Any]) -> Path:
    """The train state after ``done`` iterations (only the newest is kept)."""
    trial_dir = Path(spec["trial_dir"])
    path = ckpt.state_path(trial_dir, 0, done)
    ckpt.save_train_state(path, model=trainer.checkpointer.model, optimizer=trainer.optimizer, epoch=0, step=done,
                          protocol_json=spec["protocol_json"], extra={"scheduler": trainer.scheduler.state_dict()})
    ckpt.prune_states(trial_dir, 1)
    return path


def _drop_metrics_after(path: Path, spec: dict[str, Any]) -> None:
    """Before a resume from the train state ``path`` (and before Detectron2 opens the file): drop the
    metrics.jsonl records of the iterations after that state."""
    metrics = RunDir(spec["trial_dir"]).metrics
    done = int(ckpt.read_metadata(path, ckpt.KIND_STATE)["step"])
    if metrics.is_file():
        kept = [m for m in read_metrics(metrics) if m.get("iteration", -1) < done]
        atomic_write_text(metrics, "".join(json.dumps(m) + "\n" for m in kept))


def _resume(trainer, path: Path, spec: dict[str, Any]) -> None:
    """Continue ``trainer`` from our train state ``path``: weights, optimizer, scheduler and RNGs, and the
    iteration to start at. Detectron2's data loader starts a new pass (as after its own
    ``resume_or_load``), so the run is not bit-identical to an uninterrupted one."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    _, extra = ckpt.load_train_state(path, model=trainer.checkpointer.model, optimizer=trainer.optimizer,
                                     protocol_json=spec["protocol_json"])
    trainer.scheduler.load_state_dict(extra["scheduler"])
    trainer.start_iter = extra["step"]
    if comm.get_world_size() > 1:  # the state holds rank 0's RNGs; each rank draws its own again
        seed_all_rng(spec["seed"] + comm.get_rank())


def _precise_bn(trainer, cfg, num_iter: int) -> None:
    """Detectron2's PreciseBN (its hook, run once after the loop) over a new train loader, stopping within
    one batch of a signal."""
    from detectron2.engine.hooks import PreciseBN

    loader_cfg = cfg.clone()
    loader_cfg.defrost()
    loader_cfg.DATALOADER.NUM_WORKERS = 0  # as DefaultTrainer builds it
    trainer.model.train()
    PreciseBN(0, trainer.model, preempt.each(trainer.build_train_loader(loader_cfg), "PreciseBN"),
              num_iter).update_stats()


class _Checked:
    """A test loader whose iteration stops within one batch of a signal (Detectron2's inference loop
    needs its length)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return preempt.each(self.loader, "detection on the test split")


def trial_worker(spec: dict[str, Any]) -> None:
    """Train and test one trial (run in each of Detectron2's processes); rank 0 writes the trial files."""
    with preempt.preemptible():  # a process Detectron2 started records its signals too
        _trial(spec)


def _trial(spec: dict[str, Any]) -> None:
    import detectron2.utils.comm as comm
    from detectron2.data import build_detection_test_loader
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.evaluation import inference_on_dataset
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter

    seed_all_rng(spec["seed"] + comm.get_rank())
    register_extra_norm()
    p, out_dir = spec["protocol"], Path(spec["trial_dir"])
    _register("leoclr_train", spec["train"], spec["classes"])
    _register("leoclr_test", spec["test"], spec["classes"])
    cfg = build_config(p, spec["solver"], len(spec["classes"]), "leoclr_train", "leoclr_test", out_dir,
                       spec["device"], spec["seed"])

    class Trainer(DefaultTrainer):
        def build_hooks(self):
            drop = (hooks.PeriodicCheckpointer, hooks.EvalHook)
            kept = [h for h in super().build_hooks() if not isinstance(h, drop)]
            return kept + [_checkpoints_hook(spec, p.period)]  # last: the scheduler has stepped, metrics written

        def build_writers(self):
            return [CommonMetricPrinter(self.max_iter), JSONWriter(str(RunDir(self.cfg.OUTPUT_DIR).metrics))]

    if spec["resume"] is not None and comm.is_main_process():
        _drop_metrics_after(spec["resume"], spec)
    trainer = Trainer(cfg)
    if spec["resume"] is not None:
        _resume(trainer, spec["resume"], spec)
    else:
        incompatible = load_backbone_into(trainer.checkpointer.model, spec["backbone_state"])
        if incompatible.unexpected_keys:
            raise RuntimeError(f"backbone weights not matched by Detectron2: {incompatible.unexpected_keys[:3]}")
    try:
        if trainer.start_iter < trainer.max_iter:  # else resumed from the state after the last iteration
            trainer.train()
    except _Stopped as stop:
        raise Preempted(str(stop)) from None
    if p.precise_bn:
        _precise_bn(trainer, cfg, p.precise_bn_iters)

    evaluator = test_evaluator(spec, "leoclr_test", out_dir)
    results = inference_on_dataset(trainer.model, _Checked(build_detection_test_loader(cfg, "leoclr_test")), evaluator)
    if comm.is_main_process():
        finish_trial(spec, bbox_metrics(results), trainer.checkpointer.model.state_dict())
