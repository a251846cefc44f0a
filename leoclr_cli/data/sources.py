"""Local datasets in their official on-disk layouts, opened by name.

Every reader here is torchvision's own (``ImageFolder``, ``CIFAR10``, ``CIFAR100``, ``STL10``,
``StanfordCars``, ``OxfordIIITPet``, all with ``download=False``), except Birdsnap, which torchvision
does not have (:class:`BirdsnapReader` reads the official list files); this module only wraps them so that

* each sample is ``(PIL RGB image, int label)`` and every source exposes the same attributes
  (``classes``, ``num_classes``, ``targets``, ``name``, ``split``, ``root``);
* every failure a user can cause (a wrong path, a missing or modified file, a bad split) surfaces
  as one :class:`~leoclr_cli.errors.UserError` sentence that names the path and the layout
  expected there, never as a raw torchvision ``RuntimeError``/``FileNotFoundError``.

torchvision checks the MD5 of every CIFAR/STL-10 file against the official release. That check is
kept as is by default; ``verify_checksums=False`` opens the data through a subclass whose md5
entries are ``None``, so files must still exist but may differ from the release (a re-packed or
hand-made copy). Module globals of torchvision are never touched.

Note: CIFAR's official format is a pickle, which torchvision unpickles. With checksums verified
only the official files can be loaded; with ``verify_checksums=False`` every CIFAR file is first
read by a restricted unpickler (:func:`_refuse_code_in_pickles`) that accepts plain data only, so a
file that would run code when unpickled is refused before torchvision opens it.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, STL10, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity

from ..errors import BadImage, UserError

__all__ = ["SOURCES", "STL10_CLASSES", "Source", "open_source"]

SOURCES = ("imagefolder", "folder", "cifar10", "cifar100", "stl10", "cars", "pets", "birdsnap")

#: STL-10 class names in label order, used when ``class_names.txt`` is absent (torchvision then
#: sets no ``classes`` at all).
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

# What a torchvision reader raises on a file that exists but cannot be decoded: a bad pickle,
# a truncated binary that does not reshape, a batch dict without its keys, an unreadable file.
_READ_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    EOFError,
    pickle.UnpicklingError,
)

# The only globals a pickle of plain CIFAR data may name: numpy's rebuilders of arrays, dtypes and
# scalars (numpy 1 and 2 module paths; ``_frombuffer`` is what pickle protocol 5 uses for arrays),
# and ``_codecs.encode``, which Python 3 emits for every ``bytes`` object (an array's raw buffer)
# under pickle protocols 0-2. None of them can run arbitrary code.
_PLAIN_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class Source(Dataset):
    """A local dataset: ``source[i] -> (PIL RGB image, int label)``; label -1 means unlabeled.

    ``targets`` holds every label, so class-balanced subsets need no image decoding. ``files``
    (None for array datasets such as CIFAR) holds each image's path relative to the split's image
    folder (``<class>/<file>`` for ImageFolder), so a subset can be written as a list of file names.
    """

    def __init__(self, name: str, split: str, root: Path, reader: Dataset, classes: list[str], targets: list[int],
                 files: list[str] | None = None):
        self.name = name
        self.files = files
        self.split = split
        self.root = root
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.targets = targets
        self._reader = reader

    def __len__(self) -> int:
        return len(self.targets)

    def set_draft(self, min_side: Optional[int]) -> None:
        """Decode JPEG files at a reduced scale that keeps ``min_side`` pixels (imagefolder only:
        the other sources hold decoded pixels)."""
        loader = getattr(self._reader, "loader", None)
        if isinstance(loader, _LoadRGB):
            loader.min_side = min_side

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image, _ = self._reader[index]
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image, self.targets[index]

    def __repr__(self) -> str:
        return f"Source(name={self.name!r}, split={self.split!r}, root='{self.root}', len={len(self)}, num_classes={self.num_classes})"


def open_source(name: str, root: str | Path, split: str, *, verify_checksums: bool = True) -> Source:
    """Open the local dataset ``name`` at ``root`` (its official layout) and select ``split``.

    Raises :class:`UserError` for an unknown name, an invalid split, a missing root or file, a
    checksum mismatch (when ``verify_checksums``) or a file the reader cannot decode.
    """
    if name not in SOURCES:
        raise UserError(f"unknown data source {name!r}: expected one of {', '.join(SOURCES)}")
    root = Path(root).expanduser()
    if name == "imagefolder":
        return _open_imagefolder(root, split)
    if name == "folder":
        return _open_folder(root, split)
    if name in _FILE_READERS:
        return _FILE_READERS[name](root, split)
    return _open_official(_OFFICIAL[name], root, split, verify_checksums)


# --------------------------------------------------------------------------------------------
# common error wrapping


@contextmanager
def _reader_errors(what: str, expected: str) -> Iterator[None]:
    """Re-raise any decoding failure of a torchvision reader as one UserError sentence.

    ``what`` names the data and its path ("cifar10 data at /x"), ``expected`` the layout.
    """
    try:
        yield
    except UserError:
        raise
    except _READ_ERRORS as exc:
        reason = type(exc).__name__ + "".join(f": {line}" for line in str(exc).strip().splitlines()[:1])
        raise UserError(f"{what} could not be read ({reason}): expected {expected}") from exc


def _require_dir(name: str, root: Path, expected: str) -> None:
    """Raise the 'not found' UserError unless ``root`` is an existing directory."""
    if not root.is_dir():
        raise UserError(f"{name} data not found at {root}: expected {expected}")


# --------------------------------------------------------------------------------------------
# CIFAR-10, CIFAR-100, STL-10 (torchvision's readers of the official archives)


def _without_md5(reader: type) -> type:
    """A module-level subclass of a torchvision reader whose md5 entries are ``None``.

    torchvision's ``check_integrity(path, None)`` still requires each file to exist but skips the
    MD5 comparison. The class is picklable (DataLoader workers) because it is bound below by name.
    """
    attrs: dict = {
        "__module__": __name__,
        "__doc__": f"torchvision {reader.__name__} that requires its files but does not compare their MD5.",
        "train_list": [[filename, None] for filename, _ in reader.train_list],
        "test_list": [[filename, None] for filename, _ in reader.test_list],
    }
    if hasattr(reader, "meta"):
        attrs["meta"] = {**reader.meta, "md5": None}
    return type(f"_{reader.__name__}WithoutMD5", (reader,), attrs)


_CIFAR10WithoutMD5 = _without_md5(CIFAR10)
_CIFAR100WithoutMD5 = _without_md5(CIFAR100)
_STL10WithoutMD5 = _without_md5(STL10)


def _official_files(reader: type) -> list[tuple[str, str | None]]:
    """(file name, official md5) of every file torchvision's reader checks, meta file included."""
    files = [(filename, md5) for filename, md5 in reader.train_list + reader.test_list]
    if hasattr(reader, "meta"):
        files.append((reader.meta["filename"], reader.meta["md5"]))
    return files


def _refuse_code_in_pickles(name: str, paths: list[Path]) -> None:
    """Fully unpickle each file with an unpickler that only resolves :data:`_PLAIN_PICKLE_GLOBALS`.

    A pickle can only run code through a global it names (``os.system``, ``builtins.exec``, a
    class with ``__reduce__``), and every global passes through ``find_class``; so a file that
    names any other global is refused with a UserError before anything it names is imported or
    called. Decoding errors propagate as they are (the caller maps them to a UserError).
    """

    class PlainDataUnpickler(pickle.Unpickler):
        def find_class(self, module: str, global_name: str):
            if (module, global_name) not in _PLAIN_PICKLE_GLOBALS:
                raise UserError(
                    f"{name} file {path} refers to {module}.{global_name}; leoclr only reads pickles that hold "
                    "plain data (dicts, lists, numpy arrays)"
                )
            return super().find_class(module, global_name)

    for path in paths:
        with open(path, "rb") as f:
            PlainDataUnpickler(f, encoding="latin1").load()  # torchvision's encoding


def _open_cifar(reader: type, root: Path, split: str) -> tuple[Dataset, list[str], list[int]]:
    dataset = reader(str(root), train=split == "train", download=False)
    return dataset, list(dataset.classes), [int(t) for t in dataset.targets]


def _open_stl10(reader: type, root: Path, split: str) -> tuple[Dataset, list[str], list[int]]:
    dataset = reader(str(root), split=split, download=False)
    classes = list(getattr(dataset, "classes", STL10_CLASSES))
    return dataset, classes, [int(t) for t in dataset.labels]


@dataclass(frozen=True)
class _Official:
    """How to open one official dataset with torchvision and describe its layout."""

    name: str
    reader: type  # torchvision class, MD5 verified
    reader_without_md5: type
    open: Callable[[type, Path, str], tuple[Dataset, list[str], list[int]]]
    splits: tuple[str, ...]
    files_pattern: str  # the required files, shortened for messages
    release: str  # the official release's name

    def expected(self, root: Path) -> str:
        """The expected layout under ``root``, for messages."""
        return f"{root / self.reader.base_folder}/{self.files_pattern} (the official {self.release})"


_OFFICIAL = {
    "cifar10": _Official(
        "cifar10", CIFAR10, _CIFAR10WithoutMD5, _open_cifar, ("train", "test"),
        "{data_batch_1..5,test_batch,batches.meta}", "'CIFAR-10 python version'",
    ),
    "cifar100": _Official(
        "cifar100", CIFAR100, _CIFAR100WithoutMD5, _open_cifar, ("train", "test"),
        "{train,test,meta}", "'CIFAR-100 python version'",
    ),
    "stl10": _Official(
        "stl10", STL10, _STL10WithoutMD5, _open_stl10, ("train", "test", "unlabeled", "train+unlabeled"),
        "{train_X.bin,train_y.bin,test_X.bin,test_y.bin,unlabeled_X.bin}", "'STL-10 binary' release",
    ),
}


def _open_official(spec: _Official, root: Path, split: str, verify_checksums: bool) -> Source:
    """Open CIFAR-10/100 or STL-10 with torchvision's reader, mapping each failure to a UserError."""
    name = spec.name
    if split not in spec.splits:
        raise UserError(f"invalid split {split!r} for {name} data at {root}: expected one of {', '.join(spec.splits)}")
    expected = spec.expected(root)
    _require_dir(name, root, expected)
    folder = root / spec.reader.base_folder
    for filename, _ in _official_files(spec.reader):
        if not (folder / filename).is_file():
            raise UserError(f"{name} data not found at {root}: {folder / filename} is missing (expected {expected})")

    reader = spec.reader if verify_checksums else spec.reader_without_md5
    with _reader_errors(f"{name} data at {root}", expected):
        if not verify_checksums and spec.open is _open_cifar:
            # No MD5 vouches for these pickles: check every file torchvision is about to unpickle.
            batches = spec.reader.train_list if split == "train" else spec.reader.test_list
            _refuse_code_in_pickles(name, [folder / f for f, _ in batches] + [folder / spec.reader.meta["filename"]])
        try:
            dataset, classes, targets = spec.open(reader, root, split)
        except RuntimeError:
            # Every file exists (checked above), so torchvision's "not found or corrupted" is an MD5 mismatch.
            if not verify_checksums:
                raise
            differing = [f for f, md5 in _official_files(spec.reader) if not check_integrity(folder / f, md5)]
            raise UserError(
                f"{name} data at {root} failed the checksum check: the MD5 of {', '.join(differing) or 'the files'} "
                f"in {folder} differs from the official release (data.verify_checksums: false accepts a modified copy)"
            ) from None

    _check_consistent(name, root, expected, len(dataset), classes, targets)
    return Source(name, split, root, dataset, classes, targets)


def _check_consistent(name: str, root: Path, expected: str, length: int, classes: list[str], targets: list[int]) -> None:
    """Reject a (modified) copy whose labels do not match its images or its class list (-1: STL unlabeled)."""
    problem = None
    if len(targets) != length:
        problem = f"{len(targets)} labels for {length} images"
    elif targets and not (-1 if name == "stl10" else 0) <= min(targets) <= max(targets) < len(classes):
        problem = f"labels span {min(targets)}..{max(targets)} but there are {len(classes)} classes"
    if problem:
        raise UserError(f"{name} data at {root} is inconsistent ({problem}): expected {expected}")


# --------------------------------------------------------------------------------------------
# ImageFolder (ImageNet train/val layout)


def open_rgb(fp, min_side: Optional[int] = None) -> Image.Image:
    """Decode an image file into RGB; a JPEG at the smallest reduced scale (1/2, 1/4, 1/8) that
    keeps both sides at least ``min_side`` (PIL's ``draft``), when ``min_side`` is given."""
    image = Image.open(fp)
    if min_side:
        image.draft("RGB", (min_side, min_side))
    return image.convert("RGB")


class _LoadRGB:
    """ImageFolder's loader: :func:`open_rgb`, naming the file if it cannot be decoded."""

    def __init__(self, source: str = "imagefolder") -> None:
        self.min_side: Optional[int] = None
        self.source = source

    def __call__(self, path: str) -> Image.Image:
        try:
            with open(path, "rb") as f:
                return open_rgb(f, self.min_side)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise BadImage(f"{self.source} image {path} could not be decoded ({exc})") from exc


def _load_rgb(path: str) -> Image.Image:
    """:class:`_LoadRGB` at full scale, for the readers that do not draft."""
    return _LoadRGB()(path)


def _open_imagefolder(root: Path, split: str) -> Source:
    """Open ``root/<split>/<class>/<image>`` with torchvision's ImageFolder."""
    expected = f"{root}/<split>/<class>/<image>.jpg (the ImageNet train/val layout)"
    _require_dir("imagefolder", root, expected)
    split_dir = root / split
    if not split or split in (".", "..") or Path(split).name != split or not split_dir.is_dir():
        existing = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        raise UserError(
            f"invalid split {split!r} for imagefolder data at {root}: {split_dir} is not a directory (expected "
            f"{root}/<split>/<class>/<image>.jpg, the ImageNet train/val layout, with <split> one of: "
            f"{', '.join(existing) or 'none found'})"
        )
    expected = f"{split_dir}/<class>/<image>.jpg (the ImageNet train/val layout)"
    if not any(entry.is_dir() for entry in os.scandir(split_dir)):
        raise UserError(f"imagefolder split directory {split_dir} has no class folders: expected {expected}")

    with _reader_errors(f"imagefolder data at {split_dir}", expected):
        dataset = ImageFolder(str(split_dir), loader=_LoadRGB(), allow_empty=True)
    present = set(dataset.targets)
    empty = [c for i, c in enumerate(dataset.classes) if i not in present]
    if empty:
        raise UserError(
            f"imagefolder class folder {split_dir / empty[0]} has no images: expected files ending in "
            f"{', '.join(IMG_EXTENSIONS)}"
        )
    files = [os.path.relpath(path, split_dir) for path, _ in dataset.samples]
    return Source("imagefolder", split, root, dataset, dataset.classes, [int(t) for t in dataset.targets], files)


# --------------------------------------------------------------------------------------------
# folder: every image under a directory at any depth, unlabeled

#: the file endings ``folder`` reads (case-insensitive); every other file is counted and ignored
FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class FolderListing:
    """What :func:`list_folder` found under a directory: the image files (relative POSIX paths, sorted), and
    what it left out: files of other types (by ending), and symbolic links that lead outside the directory
    or back into a folder already listed."""

    files: list[str]
    other: dict[str, int]
    outside: int = 0
    looped: int = 0

    def ignored(self) -> str:
        """What was left out, for the line that says so ('' when nothing)."""
        parts = []
        if self.other:
            kinds = sorted(self.other, key=lambda k: (-self.other[k], k))
            shown = ", ".join(f"{k or '(none)'} {self.other[k]}" for k in kinds[:4])
            shown += ", ..." if len(kinds) > 4 else ""
            parts.append(f"{_count(sum(self.other.values()), 'file')} of other types ignored ({shown})")
        if self.outside:
            parts.append(f"{_count(self.outside, 'symbolic link')} that lead outside it ignored")
        if self.looped:
            parts.append(f"{_count(self.looped, 'symbolic link')} to a folder already read ignored")
        return "; ".join(parts)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def list_folder(root: Path) -> FolderListing:
    """Every file under ``root`` at any depth whose name ends in one of :data:`FOLDER_EXTENSIONS` (any case),
    sorted by relative path. Symbolic links are followed once: a linked folder is read unless its real
    folder was read already (no loops, no file twice), and a link whose target is outside ``root`` is ignored."""
    top = os.path.realpath(root)
    listing = FolderListing([], {})
    seen = {top}

    def inside(real: str) -> bool:
        return real == top or real.startswith(top.rstrip(os.sep) + os.sep)

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            path, name = entry.path, (f"{rel}/{entry.name}" if rel else entry.name)
            real = os.path.realpath(path) if entry.is_symlink() else None
            if real is not None and not inside(real):
                listing.outside += 1
            elif entry.is_dir():
                key = real or os.path.realpath(path)
                if key in seen:
                    listing.looped += 1
                    continue
                seen.add(key)
                walk(path, name)
            elif entry.is_file():
                ending = os.path.splitext(entry.name)[1].lower()
                if ending in FOLDER_EXTENSIONS:
                    listing.files.append(name)
                else:
                    listing.other[ending] = listing.other.get(ending, 0) + 1

    walk(str(root), "")
    listing.files.sort()
    return listing


class FolderReader(Dataset):
    """``root/<any depth>/<image>`` -> (PIL image, -1): the images of :func:`list_folder`, unlabeled."""

    def __init__(self, root: Path, files: list[str]):
        self.root, self.files, self.loader = root, files, _LoadRGB("folder")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.loader(str(self.root / self.files[index])), -1


def _open_folder(root: Path, split: str) -> Source:
    """Every image under ``root`` (``split`` is not used: the folder is one set of images), label -1.
    The order is the sorted relative paths, the same on every machine; what pretraining or ``views`` draws
    from it is seeded. Files of other types are counted and said once on stderr."""
    expected = f"image files ({', '.join(FOLDER_EXTENSIONS)}) under {root}, at any depth"
    _require_dir("folder", root, expected)
    listing = list_folder(root)
    if not listing.files:
        left = f" ({listing.ignored()})" if listing.ignored() else ""
        raise UserError(f"folder data at {root} holds no image file{left}: expected {expected}")
    if listing.ignored() and str(root) not in _SAID:
        _SAID.add(str(root))
        print(f"folder data at {root}: {len(listing.files)} images; {listing.ignored()}", file=sys.stderr)
    source = Source("folder", split, root, FolderReader(root, listing.files), [], [-1] * len(listing.files),
                    listing.files)
    source.ignored = listing.other  # type: ignore[attr-defined]
    return source


_SAID: set[str] = set()  # the folders whose ignored files were said already in this process


# --------------------------------------------------------------------------------------------
# Stanford Cars, Oxford-IIIT Pets (torchvision's readers), Birdsnap (the official list files)


def _check_split(name: str, root: Path, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise UserError(f"invalid split {split!r} for {name} data at {root}: expected one of {', '.join(splits)}")


def _require_files(name: str, root: Path, paths: list[Path], expected: str) -> None:
    for path in paths:
        if not path.exists():
            raise UserError(f"{name} data not found at {root}: {path} is missing (expected {expected})")


def _open_cars(root: Path, split: str) -> Source:
    """torchvision's StanfordCars: ``root/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat,
    cars_train/, cars_test_annos_withlabels.mat, cars_test/}`` (needs scipy)."""
    from torchvision.datasets import StanfordCars

    base = root / "stanford_cars"
    expected = (f"{base}/{{devkit/cars_meta.mat,devkit/cars_train_annos.mat,cars_train/*.jpg,"
                "cars_test_annos_withlabels.mat,cars_test/*.jpg}} (the Stanford Cars release with test labels)")
    _require_dir("cars", root, expected)
    _check_split("cars", root, split, ("train", "test"))
    annos = base / "devkit" / "cars_train_annos.mat" if split == "train" else base / "cars_test_annos_withlabels.mat"
    images = base / ("cars_train" if split == "train" else "cars_test")
    _require_files("cars", root, [base / "devkit" / "cars_meta.mat", annos, images], expected)
    with _reader_errors(f"cars data at {root}", expected):
        dataset = StanfordCars(str(root), split=split, download=False, loader=_load_rgb)
        samples = [(Path(path), int(target)) for path, target in dataset._samples]
        classes = [str(c) for c in dataset.classes]
    _require_files("cars", root, [path for path, _ in samples], expected)
    targets = [t for _, t in samples]
    _check_consistent("cars", root, expected, len(samples), classes, targets)
    return Source("cars", split, root, dataset, classes, targets, [path.name for path, _ in samples])


def _open_pets(root: Path, split: str) -> Source:
    """torchvision's OxfordIIITPet: ``root/oxford-iiit-pet/{images/<id>.jpg, annotations/{trainval,test}.txt}``."""
    from torchvision.datasets import OxfordIIITPet

    base = root / "oxford-iiit-pet"
    expected = f"{base}/{{images/<image_id>.jpg,annotations/{{trainval,test}}.txt}} (the Oxford-IIIT Pet release)"
    _require_dir("pets", root, expected)
    _check_split("pets", root, split, ("trainval", "test"))
    _require_files("pets", root, [base / "images", base / "annotations" / f"{split}.txt"], expected)
    with _reader_errors(f"pets data at {root}", expected):
        dataset = OxfordIIITPet(str(root), split=split, target_types="category", download=False)
        images, targets = [Path(p) for p in dataset._images], [int(t) for t in dataset._labels]
    _require_files("pets", root, images, expected)
    # torchvision names only the classes that occur in this split; a split must hold all 37
    _check_consistent("pets", root, expected, len(images), list(dataset.classes), targets)
    return Source("pets", split, root, dataset, list(dataset.classes), targets, [p.name for p in images])


class BirdsnapReader(Dataset):
    """Birdsnap (Berg et al. 2014) from a local copy: ``root/{species.txt, images.txt, test_images.txt}``
    (the official tab-separated list files, each with a header line) and the downloaded images under
    ``root/images/<path>`` (``get_birdsnap.py``'s output; ``root/download/images`` is also accepted).

    ``test`` is the 2,443 images of ``test_images.txt``, ``train`` every other image of ``images.txt``.
    Many of the original Flickr URLs are dead, so only images actually present are used:
    ``listed`` and ``present`` count them.
    """

    def __init__(self, root: Path, split: str):
        self.root = Path(root)
        self.images_dir = next((d for d in (self.root / "images", self.root / "download" / "images") if d.is_dir()),
                               self.root / "images")
        species = _read_table(self.root / "species.txt", ("id", "common"))
        self.classes = [row["common"] for row in sorted(species, key=lambda r: int(r["id"]))]
        ids = sorted(int(r["id"]) for r in species)
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError("species ids must run from 1 to the number of species")
        test = {row["path"] for row in _read_table(self.root / "test_images.txt", ("path",))}
        rows = [r for r in _read_table(self.root / "images.txt", ("path", "species_id")) if (r["path"] in test) == (split == "test")]
        self.listed = len(rows)
        kept = [r for r in rows if (self.images_dir / r["path"]).is_file()]
        self.present = len(kept)
        self.files = [r["path"] for r in kept]
        self.targets = [int(r["species_id"]) - 1 for r in kept]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return _load_rgb(str(self.images_dir / self.files[index])), self.targets[index]


def _read_table(path: Path, needed: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header line, as dicts; ``needed`` columns must exist."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path.name} is empty")
    header = lines[0].split("\t")
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(f"{path.name} has no '{missing[0]}' column in its header")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def _open_birdsnap(root: Path, split: str) -> Source:
    expected = (f"{root}/{{species.txt,images.txt,test_images.txt}} (the official Birdsnap list files) and the images "
                f"under {root}/images/<species dir>/<file>.jpg")
    _require_dir("birdsnap", root, expected)
    _check_split("birdsnap", root, split, ("train", "test"))
    _require_files("birdsnap", root, [root / f for f in ("species.txt", "images.txt", "test_images.txt")], expected)
    with _reader_errors(f"birdsnap data at {root}", expected):
        reader = BirdsnapReader(root, split)
    if reader.present == 0:
        raise UserError(f"birdsnap data at {root}: none of the {reader.listed} {split} images listed in images.txt is "
                        f"present under {reader.images_dir} (expected {expected})")
    _check_consistent("birdsnap", root, expected, len(reader), reader.classes, reader.targets)
    source = Source("birdsnap", split, root, reader, reader.classes, reader.targets, reader.files)
    source.listed, source.present = reader.listed, reader.present  # type: ignore[attr-defined]
    return source


_FILE_READERS: dict[str, Callable[[Path, str], Source]] = {"cars": _open_cars, "pets": _open_pets,
                                                           "birdsnap": _open_birdsnap}


# --------------------------------------------------------------------------------------------
# which source a directory holds (``--data DIR`` without ``--source``)

#: the folder each official release unpacks to, as the readers above expect it under the root
LAYOUT_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary",
                  "cars": "stanford_cars", "pets": "oxford-iiit-pet"}
_BIRDSNAP_FILES = ("species.txt", "images.txt", "test_images.txt")


def _has_image(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) for e in entries)


def _class_folders_of_images(folder: Path) -> bool:
    """Whether ``folder`` holds at least one sub-folder with an image file in it (an ImageFolder split)."""
    with os.scandir(folder) as entries:
        return any(e.is_dir() and _has_image(Path(e.path)) for e in entries)


#: split folder names that mark ``ROOT/<split>/<class>/<image>`` as an ImageFolder (``--data`` inference):
#: without one, folders of folders of images are photos nested by date or album, read as ``folder``
IMAGEFOLDER_SPLITS = ("train", "val", "valid", "validation", "test", "trainval", "unlabeled")


def _imagefolder_splits(root: Path, taken: set[str]) -> list[str]:
    """The sub-folders of ``root`` that hold class folders of images, sorted."""
    return sorted(e.name for e in os.scandir(root)
                  if e.is_dir() and e.name not in taken and _class_folders_of_images(Path(e.path)))


def _any_image(root: Path) -> bool:
    """Whether an image file of :data:`FOLDER_EXTENSIONS` lies anywhere under ``root`` (stops at the first)."""
    for _, _, names in os.walk(root, followlinks=False):
        if any(os.path.splitext(n)[1].lower() in FOLDER_EXTENSIONS for n in names):
            return True
    return False


def detect_layouts(root: Path) -> list[tuple[str, str]]:
    """(source, what was found) for every dataset layout of the data sources table found at ``root``; a
    folder of images that is none of them (flat, or nested by date) is ``folder``."""
    found = [(name, f"{folder}/") for name, folder in LAYOUT_FOLDERS.items() if (root / folder).is_dir()]
    taken = set(LAYOUT_FOLDERS.values())
    if all((root / f).is_file() for f in _BIRDSNAP_FILES):
        found.append(("birdsnap", "species.txt, images.txt and test_images.txt"))
        taken |= {"images", "download"}
    splits = _imagefolder_splits(root, taken)
    if any(s.lower() in IMAGEFOLDER_SPLITS for s in splits):
        found.append(("imagefolder", f"{', '.join(s + '/' for s in splits[:3])} of class folders of images"))
    if not found and root.name not in LAYOUT_FOLDERS.values() and _any_image(root):
        found.append(("folder", "image files with no <split>/<class>/ layout (unlabeled; a labelled ImageFolder "
                                "is ROOT/train/<class>/<image>)"))
    return found


def infer_source(root: str | Path, declared: Optional[str] = None) -> tuple[str, str]:
    """(source, why) for the dataset at ``root``, from its layout. ``declared``: the source a protocol names
    explicitly; it is kept when ``root`` holds it (or holds nothing recognisable: its reader then names the
    layout it expects; an ImageFolder whose splits have other names than :data:`IMAGEFOLDER_SPLITS`), refused
    when ``root`` holds only something else. One sentence for anything else."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--data {root} is not a directory")
    found = detect_layouts(root)
    names = [name for name, _ in found]
    if declared is not None and not declared.startswith("builtin"):
        if declared in names or not found or (declared == "imagefolder" and _imagefolder_splits(root, set())):
            return declared, dict(found).get(declared, "the protocol's source")
        raise UserError(f"--data {root} holds {' and '.join(names)} data, not the {declared} data the protocol "
                        f"names; give --source {names[0]} to use it")
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"--data {root} holds several datasets ({', '.join(names)}); choose one with --source")
    if root.name in LAYOUT_FOLDERS.values():
        raise UserError(f"--data {root} is the {root.name}/ folder itself; give the folder that holds it: "
                        f"--data {root.parent}")
    folders = "".join(f"{folder}/, " for folder in LAYOUT_FOLDERS.values())
    raise UserError(f"--data {root} holds none of the layouts leoclr reads ({folders}Birdsnap's list files, "
                    f"<split>/<class>/<image> folders, or image files at any depth); give --source and check the path")
