"""Detection metrics, in percent.

VOC (:func:`voc_ap`): Detectron2's ``PascalVOCDetectionEvaluator`` on VOC07 test: for each IoU
threshold 0.50, 0.55, ..., 0.95 and each class, detections in falling score order are true
positives when their best-overlapping ground truth box has IoU > threshold, is not ``difficult``
and is not taken yet; a match to a difficult box counts neither way; AP is the 2007 11-point
interpolated average precision. ``AP`` is the mean over thresholds of the mean over classes,
``AP50`` and ``AP75`` the values at 0.50 and 0.75. Classes without a non-difficult ground truth box
are left out of the class mean (on VOC07 test every class has some, so this only matters on subsets).
The IoU is the continuous one, which equals Detectron2's ``+1`` pixel formula on its shifted boxes.

COCO (:func:`coco_ap`): pycocotools' ``COCOeval`` for ``bbox``: AP (0.50:0.95), AP50, AP75.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

IOU_THRESHOLDS = [t / 100 for t in range(50, 100, 5)]


def voc07_11point(rec: np.ndarray, prec: np.ndarray) -> float:
    """The VOC2007 11-point interpolated AP of a precision/recall curve."""
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = prec[rec >= t].max() if np.any(rec >= t) else 0.0
        ap += p / 11.0
    return float(ap)


def voc_ap(gts: list[dict[str, Any]], dets: list[dict[str, Any]], num_classes: int) -> dict[str, float]:
    """AP, AP50, AP75 (percent) and per-threshold mAP.

    ``gts[i]``: ``{"boxes": (N, 4), "labels": (N,) 0..K-1, "difficult": (N,) bool}`` of image i;
    ``dets[i]``: ``{"boxes": (M, 4), "scores": (M,), "labels": (M,) 0..K-1}`` of the same image.
    """
    per_threshold: dict[float, list[float]] = {t: [] for t in IOU_THRESHOLDS}
    for c in range(num_classes):
        gt_boxes, gt_difficult, det_image, det_score, det_iou = [], [], [], [], []
        for i, (gt, det) in enumerate(zip(gts, dets)):
            g = torch.as_tensor(gt["labels"]) == c
            gb = torch.as_tensor(gt["boxes"], dtype=torch.float64).reshape(-1, 4)[g]
            gt_boxes.append(gb)
            gt_difficult.append(torch.as_tensor(gt["difficult"], dtype=torch.bool)[g].numpy())
            d = torch.as_tensor(det["labels"]) == c
            db = torch.as_tensor(det["boxes"], dtype=torch.float64).reshape(-1, 4)[d]
            det_image += [i] * len(db)
            det_score.append(torch.as_tensor(det["scores"], dtype=torch.float64)[d].numpy())
            det_iou += list(box_iou(db, gb).numpy()) if len(gb) else [np.zeros(0)] * len(db)
        npos = int(sum((~dif).sum() for dif in gt_difficult))
        if npos == 0:
            continue
        order = np.argsort(-np.concatenate(det_score), kind="stable") if det_image else np.zeros(0, int)
        for t in IOU_THRESHOLDS:
            taken = [np.zeros(len(b), bool) for b in gt_boxes]
            tp, fp = np.zeros(len(order)), np.zeros(len(order))
            for rank, k in enumerate(order):
                ious, img = det_iou[k], det_image[k]
                j = int(np.argmax(ious)) if len(ious) else -1
                if j >= 0 and ious[j] > t:
                    if gt_difficult[img][j]:
                        continue
                    if not taken[img][j]:
                        tp[rank], taken[img][j] = 1, True
                    else:
                        fp[rank] = 1
                else:
                    fp[rank] = 1
            tp, fp = np.cumsum(tp), np.cumsum(fp)
            rec = tp / npos
            prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            per_threshold[t].append(voc07_11point(rec, prec) * 100)
    maps = {t: float(np.mean(v)) if v else 0.0 for t, v in per_threshold.items()}
    return {"AP": float(np.mean(list(maps.values()))), "AP50": maps[0.5], "AP75": maps[0.75],
            "AP_per_iou": {f"{t:.2f}": v for t, v in maps.items()}}


def voc_ground_truth(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metric's ground truth of VOC records (difficult flags kept)."""
    return [{"boxes": torch.tensor([a["bbox"] for a in r["annotations"]], dtype=torch.float64).reshape(-1, 4),
             "labels": torch.tensor([a["category_id"] for a in r["annotations"]], dtype=torch.int64),
             "difficult": torch.tensor([bool(a["difficult"]) for a in r["annotations"]], dtype=torch.bool)}
            for r in records]


def coco_ap(ann_file: Path, records: list[dict[str, Any]], dets: list[dict[str, Any]],
            cat_ids: list[int]) -> dict[str, float]:
    """pycocotools' bbox AP, AP50, AP75 (percent) of ``dets`` (per record, labels contiguous) on those images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for rec, det in zip(records, dets):
        for box, score, label in zip(torch.as_tensor(det["boxes"]).tolist(), torch.as_tensor(det["scores"]).tolist(),
                                     torch.as_tensor(det["labels"]).tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": rec["image_id"], "category_id": cat_ids[int(label)],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.imgIds = [r["image_id"] for r in records]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0] * 100), "AP50": float(ev.stats[1] * 100), "AP75": float(ev.stats[2] * 100)}
