"""VOC and COCO detection readers, in Detectron2's dataset-dict format, and the training dataset.

A *record* is one image: ``{"file_name", "image_id", "height", "width", "annotations": [{"bbox":
[x1, y1, x2, y2] (absolute, 0-based continuous), "bbox_mode": 0 (XYXY_ABS), "category_id": 0..K-1,
"iscrowd": 0|1, "difficult": 0|1}]}``. Detectron2 takes these lists as they are; the torchvision
backend wraps them in :class:`DetectionTrainSet`.

VOC: ``VOCdevkit/VOC2007`` and ``VOC2012`` read through torchvision's ``VOCDetection``; boxes as
Detectron2's reader makes them (the XML's 1-based ``xmin``/``ymin`` minus 1), difficult objects kept
for training (as Detectron2) and ignored by the metric. COCO: ``ROOT/annotations/instances_SPLIT.json``
with images in ``ROOT/SPLIT/``, read through torchvision's ``CocoDetection`` (pycocotools).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree.ElementTree import ParseError, parse

import torch
from torchvision import tv_tensors
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms import v2

from ..errors import UserError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def voc_devkit(root: Path) -> Path:
    """The folder that holds ``VOCdevkit`` (torchvision's ``root``), given VOCdevkit itself or its parent."""
    root = Path(root).expanduser()
    if (root / "VOCdevkit").is_dir():
        return root
    if root.name == "VOCdevkit" and root.is_dir():
        return root.parent
    raise UserError(f"--data {root} is not a VOCdevkit folder (nor a folder holding one)")


def read_voc(root: Path, image_set: str) -> list[dict[str, Any]]:
    """Records of ``image_set`` = ``YEAR-SPLIT`` (e.g. 2007-trainval, 2012-trainval, 2007-test)."""
    from torchvision.datasets import VOCDetection

    year, _, split = image_set.partition("-")
    base = voc_devkit(root)
    folder = base / "VOCdevkit" / f"VOC{year}"
    try:
        ds = VOCDetection(str(base), year=year, image_set=split)
    except ValueError:
        raise UserError(f"VOC image set {image_set!r} is not one of YEAR-train, YEAR-val, YEAR-trainval, "
                        "2007-test (YEAR 2007..2012)") from None
    except RuntimeError:
        raise UserError(f"{folder} does not exist (VOC {image_set} needs VOCdevkit/VOC{year})") from None
    except FileNotFoundError:
        raise UserError(f"{folder / 'ImageSets' / 'Main' / (split + '.txt')} does not exist") from None
    records = []
    for image, xml in zip(ds.images, ds.targets):
        try:
            ann = ds.parse_voc_xml(parse(xml).getroot())["annotation"]
            size = ann["size"]
            objects = []
            for obj in ann.get("object", []) if isinstance(ann.get("object"), list) else []:
                if obj["name"] not in VOC_CLASSES:
                    raise UserError(f"{xml}: unknown VOC class {obj['name']!r}")
                box = [float(obj["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")]
                box[0] -= 1.0  # 1-based pixel indices -> continuous coordinates (as Detectron2)
                box[1] -= 1.0
                objects.append({"bbox": box, "bbox_mode": 0, "category_id": VOC_CLASSES.index(obj["name"]),
                                "iscrowd": 0, "difficult": int(obj.get("difficult", "0"))})
            records.append({"file_name": image, "image_id": Path(image).stem, "height": int(size["height"]),
                            "width": int(size["width"]), "annotations": objects})
        except FileNotFoundError:
            raise UserError(f"{xml} does not exist (listed in VOC {image_set})") from None
        except (ParseError, KeyError, TypeError, ValueError):
            raise UserError(f"{xml} is not a VOC annotation (needs size, object/name, object/bndbox)") from None
    return records


def coco_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(images folder, instances JSON) of a COCO ``split`` such as train2017 or val2017."""
    root = Path(root).expanduser()
    images, ann = root / split, root / "annotations" / f"instances_{split}.json"
    for path in (images, ann):
        if not path.exists():
            raise UserError(f"{path} does not exist (COCO {split} needs ROOT/{split}/ and "
                            f"ROOT/annotations/instances_{split}.json)")
    return images, ann


def read_coco(root: Path, split: str) -> tuple[list[dict[str, Any]], list[str], list[int]]:
    """(records, class names, COCO category id of each contiguous class) of ``split``."""
    import contextlib
    import io

    from torchvision.datasets import CocoDetection

    images, ann = coco_paths(root, split)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = CocoDetection(str(images), str(ann)).coco
        cat_ids = sorted(coco.getCatIds())
        names = [coco.cats[c]["name"] for c in cat_ids]
        contiguous = {c: i for i, c in enumerate(cat_ids)}
        records = []
        for img_id in sorted(coco.imgs):
            info = coco.imgs[img_id]
            objects = []
            for a in coco.imgToAnns.get(img_id, []):
                x, y, w, h = a["bbox"]
                objects.append({"bbox": [x, y, x + w, y + h], "bbox_mode": 0,
                                "category_id": contiguous[a["category_id"]], "iscrowd": int(a.get("iscrowd", 0)),
                                "difficult": 0})
            records.append({"file_name": str(images / info["file_name"]), "image_id": img_id,
                            "height": int(info["height"]), "width": int(info["width"]), "annotations": objects})
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{ann} is not a COCO instances file ({e!s:.80})") from None
    return records, names, cat_ids


def trainable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Images with at least one usable box (Detectron2's FILTER_EMPTY_ANNOTATIONS; crowd boxes dropped)."""
    def usable(a: dict[str, Any]) -> bool:
        x1, y1, x2, y2 = a["bbox"]
        return not a["iscrowd"] and x2 > x1 and y2 > y1

    out = [{**r, "annotations": [a for a in r["annotations"] if usable(a)]} for r in records]
    return [r for r in out if r["annotations"]]


def read_image(path: str) -> torch.Tensor:
    """(3, H, W) uint8 RGB."""
    try:
        with Image.open(path) as im:
            return pil_to_tensor(im.convert("RGB"))
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{path} is not a readable image") from None


class DetectionTrainSet(torch.utils.data.Dataset):
    """Training images as (float image in [0, 1], {"boxes", "labels" 1..K}); horizontal flip with p 0.5.

    Resizing (the shorter side drawn from the train sizes) happens in the model's transform.
    """

    def __init__(self, records: list[dict[str, Any]], flip: bool = True):
        self.records = trainable(records)
        self.flip = v2.RandomHorizontalFlip(0.5) if flip else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.records[i]
        image = read_image(rec["file_name"])
        boxes = tv_tensors.BoundingBoxes(torch.tensor([a["bbox"] for a in rec["annotations"]], dtype=torch.float32),
                                         format="XYXY", canvas_size=tuple(image.shape[-2:]))
        labels = torch.tensor([a["category_id"] + 1 for a in rec["annotations"]], dtype=torch.int64)
        if self.flip is not None:
            image, boxes = self.flip(tv_tensors.Image(image), boxes)
        return image.as_subclass(torch.Tensor).float() / 255, {"boxes": boxes.as_subclass(torch.Tensor),
                                                                "labels": labels}


def collate(batch: list) -> tuple[tuple, tuple]:
    """A batch of detection samples as (images, targets): images of different sizes stay separate."""
    return tuple(zip(*batch))
