"""Tiny copies of CIFAR-10, CIFAR-100, STL-10, an ImageNet-style ImageFolder, VOC and COCO, in EXACTLY the
official on-disk layouts that torchvision's readers expect.

Pixels are not random: image ``index`` of ``split`` is :func:`pattern` (HWC uint8), and its label
is :func:`label`, so tests can check that a reader returns exactly what was written (CHW
flattening for CIFAR, the column-major storage of STL-10). The ImageFolder copy is JPEG (lossy),
so its images are flat colours (:func:`imagefolder_colour`), one of them greyscale.

The files differ from the official release, so torchvision's MD5 check refuses them; open them
with ``verify_checksums=False``.
"""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]

_SPLIT_KEY = {"train": 0, "val": 50_000, "test": 100_000, "unlabeled": 200_000}


def _key(split: str, index: int, seed: int) -> int:
    offset = _SPLIT_KEY[split] if split in _SPLIT_KEY else 1000 * (zlib.crc32(split.encode()) % 1000)
    return offset + index + 7919 * seed


def pattern(split: str, index: int, size: int, seed: int = 0) -> np.ndarray:
    """The (size, size, 3) uint8 HWC image number ``index`` of ``split``, as a reader must return it.

    Row, column and channel have different slopes, so a transposed or channel-shuffled read fails.
    """
    h = np.arange(size)[:, None, None]
    w = np.arange(size)[None, :, None]
    c = np.arange(3)[None, None, :]
    return ((_key(split, index, seed) * 37 + 3 * h + 7 * w + 85 * c) % 256).astype(np.uint8)


def label(split: str, index: int, num_classes: int, seed: int = 0) -> int:
    """The 0-based label of image ``index`` of ``split`` (cycles through all classes)."""
    return _key(split, index, seed) % num_classes


def _images(split: str, n: int, size: int, seed: int) -> np.ndarray:
    return np.stack([pattern(split, i, size, seed) for i in range(n)]) if n else np.zeros((0, size, size, 3), np.uint8)


def _labels(split: str, n: int, num_classes: int, seed: int) -> list[int]:
    return [label(split, i, num_classes, seed) for i in range(n)]


def _cifar_rows(split: str, n: int, size: int, seed: int) -> np.ndarray:
    """(N, 3*size*size) uint8 rows, each the image's R plane then G then B (CHW flattened)."""
    return np.ascontiguousarray(_images(split, n, size, seed).transpose(0, 3, 1, 2).reshape(n, -1))


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(root: Path, n_train: int = 50, n_test: int = 20, size: int = 32, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; return ``root``.

    ``size`` other than 32 writes rows of the wrong length: a malformed copy for error tests.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = _cifar_rows("train", n_train, size, seed), _labels("train", n_train, 10, seed)
    for b, idx in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _pickle(folder / f"data_batch_{b}", {
            "batch_label": f"training batch {b} of 5",
            "labels": [labels[i] for i in idx],
            "data": rows[idx],
            "filenames": [f"train_{i:05d}.png" for i in idx],
        })
    _pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1",
        "labels": _labels("test", n_test, 10, seed),
        "data": _cifar_rows("test", n_test, size, seed),
        "filenames": [f"test_{i:05d}.png" for i in range(n_test)],
    })
    _pickle(folder / "batches.meta", {
        "num_cases_per_batch": max(1, n_train // 5), "label_names": CIFAR10_CLASSES, "num_vis": 3 * size * size,
    })
    return Path(root)


def make_cifar100(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}``; return ``root``."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = _labels(split, n, 100, seed)
        _pickle(folder / split, {
            "filenames": [f"{split}_{i:05d}.png" for i in range(n)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "data": _cifar_rows(split, n, 32, seed),
        })
    _pickle(folder / "meta", {
        "fine_label_names": [f"fine_{k:02d}" for k in range(100)],
        "coarse_label_names": [f"coarse_{k:02d}" for k in range(20)],
    })
    return Path(root)


def _stl_bytes(split: str, n: int, seed: int) -> bytes:
    """STL-10 ``*_X.bin`` content: per image, per channel, the 96x96 plane stored column-major."""
    return np.ascontiguousarray(_images(split, n, 96, seed).transpose(0, 3, 2, 1)).tobytes()


def make_stl10(root: Path, n_train: int = 20, n_test: int = 10, n_unlabeled: int = 30, seed: int = 0) -> Path:
    """Write ``root/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt,
    fold_indices.txt``; labels are stored 1..10 as in the release. Return ``root``."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        (folder / f"{split}_X.bin").write_bytes(_stl_bytes(split, n, seed))
        (folder / f"{split}_y.bin").write_bytes(bytes(y + 1 for y in _labels(split, n, 10, seed)))
    (folder / "unlabeled_X.bin").write_bytes(_stl_bytes("unlabeled", n_unlabeled, seed))
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    rng = np.random.default_rng(seed)
    fold_size = min(n_train, max(1, n_train // 5))
    folds = [" ".join(map(str, sorted(rng.choice(n_train, fold_size, replace=False)))) + " " for _ in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    return Path(root)


def imagefolder_class(k: int) -> str:
    """Name of class folder ``k`` (an ImageNet-style WordNet id; sorted order = index order)."""
    return f"n{k:08d}"


def imagefolder_colour(split: str, k: int, j: int, seed: int = 0) -> tuple[int, int, int]:
    """Flat RGB colour of image ``j`` of class ``k``; image 0 of class 0 is a greyscale JPEG."""
    base = _key(split, 1000 * k + j, seed)
    r, g, b = (base * 53) % 200 + 20, (base * 97 + 60) % 200 + 20, (base * 29 + 120) % 200 + 20
    return (r, r, r) if k == 0 and j == 0 else (r, g, b)


def make_imagefolder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40,
                     splits=("train", "val"), seed: int = 0) -> Path:
    """Write ``root/<split>/<wnid>/<wnid>_<j>.JPEG`` flat-colour JPEGs (ImageNet layout); return ``root``."""
    for split in splits:
        for k in range(classes):
            folder = Path(root) / split / imagefolder_class(k)
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                colour = imagefolder_colour(split, k, j, seed)
                image = Image.new("L", (size, size), colour[0]) if k == 0 and j == 0 else Image.new("RGB", (size, size), colour)
                image.save(folder / f"{imagefolder_class(k)}_{j}.JPEG", format="JPEG", quality=95)
    return Path(root)


def make_digits(root: Path, n_val: int = 400, size: int = 32, seed: int = 0, permute_val_labels: bool = False) -> Path:
    """scikit-learn's bundled handwritten digits (1,797 scanned 8x8 images: real pixels) as an ImageFolder of
    ``size`` px JPEGs, ``root/{train,val}/digit<k>/<i>.jpg``, a seeded ``n_val`` of them in val. With
    ``permute_val_labels`` every val image is filed under the next digit's folder (wrong test labels, the same
    train split). Return ``root``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "train"
        k = (digits.target[i] + 1) % 10 if permute_val_labels and split == "val" else digits.target[i]
        img = (digits.images[i] * (255 / 16)).astype(np.uint8)
        folder = Path(root) / split / f"digit{k}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR).convert("RGB").save(folder / f"{i}.jpg")
    return Path(root)


# --------------------------------------------------------------------------- detection (VOC XML, COCO JSON)


def detection_scene(key: int, width: int, height: int, names: list[str]) -> tuple[Image.Image, list[tuple]]:
    """An RGB image with 1-2 drawn objects on a gradient background, and its boxes.

    Object class ``k`` is a filled shape of one colour (rectangle for even k, ellipse for odd k);
    returns ``(image, [(name, x1, y1, x2, y2) in 0-based pixel corners, x2/y2 exclusive])``.
    """
    from PIL import ImageDraw

    rng = np.random.default_rng(key)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([(xx * 200 // width), (yy * 200 // height), np.full_like(xx, 90)], -1).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    objects = []
    for j in range(1 + key % 2):
        k = int(rng.integers(len(names)))
        w, h = int(rng.integers(width // 4, width // 2)), int(rng.integers(height // 4, height // 2))
        x1 = int(rng.integers(0, width - w)) if j == 0 else max(0, width - w - 1)
        y1 = int(rng.integers(0, height - h))
        colour = ((70 * k + 40) % 256, (150 * k + 200) % 256, (90 * k + 10) % 256)
        (draw.rectangle if k % 2 == 0 else draw.ellipse)([x1, y1, x1 + w - 1, y1 + h - 1], fill=colour)
        objects.append((names[k], x1, y1, x1 + w, y1 + h))
    return image, objects


def _voc_xml(stem: str, width: int, height: int, objects: list[tuple], difficult_last: bool) -> str:
    parts = [f"<annotation><folder>VOC</folder><filename>{stem}.jpg</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segmented>0</segmented>"]
    for n, (name, x1, y1, x2, y2) in enumerate(objects):
        difficult = int(difficult_last and n == len(objects) - 1 and n > 0)
        # VOC stores 1-based inclusive pixel indices: xmin = x1 + 1, xmax = x2
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>\n"


VOC_FAKE_CLASSES = ["cat", "dog", "car"]


def make_voc(root: Path, per_split: dict | None = None, width: int = 96, height: int = 72) -> Path:
    """Write ``root/VOCdevkit/VOC2007`` (trainval, test) and ``VOC2012`` (trainval) with JPEGs, XML
    (pose, truncated, difficult, bndbox in 1-based pixels) and ImageSets/Main lists; return the
    VOCdevkit folder. The second object of every other test image is marked difficult."""
    per_split = per_split or {"2007-trainval": 3, "2012-trainval": 2, "2007-test": 2}
    for image_set, n in per_split.items():
        year, split = image_set.split("-")
        base = Path(root) / "VOCdevkit" / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        stems = []
        for i in range(n):
            stem = f"{year}_{split}_{i:04d}"
            image, objects = detection_scene(zlib.crc32(stem.encode()), width, height, VOC_FAKE_CLASSES)
            image.save(base / "JPEGImages" / f"{stem}.jpg", quality=95)
            (base / "Annotations" / f"{stem}.xml").write_text(
                _voc_xml(stem, width, height, objects, difficult_last=split == "test" and i % 2 == 0))
            stems.append(stem)
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return Path(root) / "VOCdevkit"


COCO_FAKE_CATEGORIES = [(3, "car"), (17, "cat"), (18, "dog")]  # COCO's ids are not contiguous


def make_coco(root: Path, per_split: dict | None = None, width: int = 96, height: int = 72) -> Path:
    """Write ``root/{train2017,val2017}/*.jpg`` and ``root/annotations/instances_{split}.json``; return root."""
    import json

    per_split = per_split or {"train2017": 4, "val2017": 2}
    names = [n for _, n in COCO_FAKE_CATEGORIES]
    ids = {n: c for c, n in COCO_FAKE_CATEGORIES}
    (Path(root) / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, n in per_split.items():
        folder = Path(root) / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            image_id = 1000 + i if split == "val2017" else 1 + i
            image, objects = detection_scene(zlib.crc32(f"{split}{i}".encode()), width, height, names)
            name = f"{image_id:012d}.jpg"
            image.save(folder / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for cname, x1, y1, x2, y2 in objects:
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": ids[cname],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                    "iscrowd": 0, "segmentation": []})
                ann_id += 1
        (Path(root) / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n, "supercategory": "thing"} for c, n in COCO_FAKE_CATEGORIES]}))
    return Path(root)


# --------------------------------------------------------------------------- transfer datasets


def _flat_jpeg(path: Path, split: str, k: int, j: int, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), imagefolder_colour(split, k, j, seed)).save(path, format="JPEG", quality=95)


def make_stanford_cars(root: Path, classes: int = 3, n_train: int = 12, n_test: int = 6, size: int = 40,
                       seed: int = 0) -> Path:
    """Write torchvision's StanfordCars layout: ``root/stanford_cars/{devkit/cars_meta.mat,
    devkit/cars_train_annos.mat, cars_train/*.jpg, cars_test_annos_withlabels.mat, cars_test/*.jpg}``.

    The .mat files hold a (1, N) struct array ``annotations`` (bbox_x1..bbox_y2, 1-based ``class``,
    ``fname``) and a (1, C) cell array ``class_names``, as in the release. Image ``i`` of a split has
    class ``i % classes``. Return ``root``.
    """
    import scipy.io as sio

    base = Path(root) / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.array([f"Make{k} Model{k} 20{10 + k}" for k in range(classes)], dtype=object).reshape(1, -1)
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    fields = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    for split, n, mat in (("train", n_train, base / "devkit" / "cars_train_annos.mat"),
                          ("test", n_test, base / "cars_test_annos_withlabels.mat")):
        rows = []
        for i in range(n):
            fname = f"{i + 1:05d}.jpg"
            _flat_jpeg(base / f"cars_{split}" / fname, split, i % classes, i, size, seed)
            rows.append((1, 1, size - 1, size - 1, i % classes + 1, fname))
        sio.savemat(mat, {"annotations": np.array(rows, dtype=fields).reshape(1, -1)})
    return Path(root)


PET_BREEDS = ["Abyssinian", "american_bulldog", "Bengal", "german_shorthaired"]
PET_SPECIES = [1, 2, 1, 2]  # 1 = cat, 2 = dog


def make_pets(root: Path, classes: int = 3, per_class_trainval: int = 4, per_class_test: int = 2, size: int = 40,
              seed: int = 0) -> Path:
    """Write torchvision's OxfordIIITPet layout: ``root/oxford-iiit-pet/images/<Breed>_<n>.jpg`` and
    ``annotations/{trainval,test}.txt`` with lines ``<image_id> <class 1..C> <species> <breed id>``.
    Return ``root``."""
    base = Path(root) / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    number = 0
    for split, per_class in (("trainval", per_class_trainval), ("test", per_class_test)):
        lines = []
        for k in range(classes):
            for j in range(per_class):
                number += 1
                image_id = f"{PET_BREEDS[k]}_{number}"
                _flat_jpeg(base / "images" / f"{image_id}.jpg", split, k, j, size, seed)
                lines.append(f"{image_id} {k + 1} {PET_SPECIES[k]} {j + 1}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return Path(root)


BIRDSNAP_SPECIES = [("Blue Jay", "Cyanocitta cristata", "Blue_Jay"), ("Bald Eagle", "Haliaeetus leucocephalus",
                    "Bald_Eagle"), ("Snow Goose", "Anser caerulescens", "Snow_Goose")]


def make_birdsnap(root: Path, per_class_train: int = 4, per_class_test: int = 2, missing: int = 1, size: int = 40,
                  seed: int = 0) -> Path:
    """Write a local Birdsnap copy: the official tab-separated list files ``species.txt``,
    ``images.txt`` and ``test_images.txt`` (each with a header line) and the images under
    ``root/images/<dir>/<n>.jpg``. The last ``missing`` listed train images of each species are not
    written (dead URLs). Return ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    species = ["id\tcommon\tscientific\tdir"] + [f"{k + 1}\t{c}\t{s}\t{d}" for k, (c, s, d) in enumerate(BIRDSNAP_SPECIES)]
    (root / "species.txt").write_text("\n".join(species) + "\n")
    header = "url\tmd5\tpath\tspecies_id\tbb_x1\tbb_y1\tbb_x2\tbb_y2\tback_x\tback_y"
    images, tests, number = [header], ["path"], 0
    for k, (_, _, folder) in enumerate(BIRDSNAP_SPECIES):
        for j in range(per_class_train + per_class_test):
            number += 1
            path = f"{folder}/{number}.jpg"
            images.append(f"http://example.invalid/{number}.jpg\t{'0' * 32}\t{path}\t{k + 1}\t1\t1\t{size - 1}\t{size - 1}\t5\t5")
            is_test = j >= per_class_train
            if is_test:
                tests.append(path)
            if is_test or j < per_class_train - missing:
                _flat_jpeg(root / "images" / path, "test" if is_test else "train", k, j, size, seed)
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "test_images.txt").write_text("\n".join(tests) + "\n")
    return root


#: scikit-image's bundled photographs that the unlabeled photo folders are cut from
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def make_photos(root: Path, n: int = 10, size: int = 32, seed: int = 0,
                others: tuple[str, ...] = ("notes.txt",)) -> Path:
    """Write ``n`` unlabeled photos, crops of scikit-image's bundled photographs, nested by date as a phone
    export is (``root/2023/01-05/IMG_0001.jpg``, some ``.PNG`` and ``.jpeg``, one flat in ``root``), plus the
    non-image files ``others`` (``root/<name>``). Crops are ``size`` x ``size`` (some 1.5 x wider). Return ``root``."""
    import skimage.data

    rng = np.random.default_rng(seed)
    root = Path(root)
    pictures = [np.asarray(getattr(skimage.data, name)())[..., :3] for name in PHOTOS]
    for i in range(n):
        pic = pictures[i % len(pictures)]
        h, w = size, size * 3 // 2 if i % 3 == 0 else size
        scale = int(rng.integers(1, max(2, min(6, pic.shape[0] // h, pic.shape[1] // w) + 1)))
        top = int(rng.integers(0, pic.shape[0] - h * scale))
        left = int(rng.integers(0, pic.shape[1] - w * scale))
        crop = Image.fromarray(np.ascontiguousarray(pic[top: top + h * scale, left: left + w * scale]))
        crop = crop.resize((w, h), Image.Resampling.BILINEAR)
        folder = root if i == 0 else root / f"202{3 + i % 2}" / f"0{1 + i % 3}-{10 + i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        ending = (".PNG", ".jpeg", ".jpg")[i % 3]
        crop.save(folder / f"IMG_{i:04d}{ending}", format="PNG" if ending == ".PNG" else "JPEG", quality=92)
    for name in others:
        (root / name).write_text("not an image\n")
    return root
