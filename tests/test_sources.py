"""leoclr_cli.data.sources: torchvision's readers on tiny copies in the official layouts."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakedata import (
    CIFAR10_CLASSES,
    STL10_CLASSES,
    imagefolder_class,
    imagefolder_colour,
    label,
    make_cifar10,
    make_cifar100,
    make_imagefolder,
    make_stl10,
    pattern,
)
from leoclr_cli.data.sources import SOURCES, open_source
from leoclr_cli.errors import UserError


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """One fake copy of each source, shared read-only by the tests of this module."""
    base = tmp_path_factory.mktemp("sources")
    return {
        "cifar10": make_cifar10(base / "cifar10", n_train=50, n_test=20),
        "cifar100": make_cifar100(base / "cifar100", n_train=50, n_test=20),
        "stl10": make_stl10(base / "stl10", n_train=20, n_test=10, n_unlabeled=30),
        "imagefolder": make_imagefolder(base / "imagenet", classes=3, per_class=4, size=40),
    }


def _open(data, name, split, **kw):
    return open_source(name, data[name], split, verify_checksums=kw.pop("verify_checksums", False), **kw)


def _raises(match: str, *args, **kw) -> str:
    """Call open_source, expect a one-line UserError containing ``match``; return its message."""
    with pytest.raises(UserError) as info:
        open_source(*args, **kw)
    message = str(info.value)
    assert match in message, message
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------ every source and split

CASES = [  # name, split, length, num_classes, image side
    ("cifar10", "train", 50, 10, 32),
    ("cifar10", "test", 20, 10, 32),
    ("cifar100", "train", 50, 100, 32),
    ("cifar100", "test", 20, 100, 32),
    ("stl10", "train", 20, 10, 96),
    ("stl10", "test", 10, 10, 96),
    ("stl10", "unlabeled", 30, 10, 96),
    ("stl10", "train+unlabeled", 50, 10, 96),
    ("imagefolder", "train", 12, 3, 40),
    ("imagefolder", "val", 12, 3, 40),
]


@pytest.mark.parametrize("name,split,length,num_classes,side", CASES)
def test_every_split_loads(data, name, split, length, num_classes, side):
    source = _open(data, name, split)
    assert (source.name, source.split, source.root) == (name, split, data[name])
    assert len(source) == length == len(source.targets)
    assert source.num_classes == num_classes == len(source.classes)
    assert all(isinstance(t, int) for t in source.targets)
    labelled = [t for t in source.targets if t != -1]
    assert all(0 <= t < num_classes for t in labelled)
    for i in (0, length - 1):
        image, target = source[i]
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (side, side)
        assert type(target) is int and target == source.targets[i]


@pytest.mark.parametrize("name,split,num_classes", [
    ("cifar10", "train", 10), ("cifar10", "test", 10), ("cifar100", "train", 100), ("cifar100", "test", 100),
    ("stl10", "train", 10), ("stl10", "test", 10),
])
def test_labels_are_those_written(data, name, split, num_classes):
    source = _open(data, name, split)
    assert source.targets == [label(split, i, num_classes) for i in range(len(source))]


@pytest.mark.parametrize("name,split,side", [
    ("cifar10", "train", 32), ("cifar10", "test", 32), ("cifar100", "train", 32),
    ("stl10", "train", 96), ("stl10", "test", 96), ("stl10", "unlabeled", 96),
])
def test_pixels_round_trip(data, name, split, side):
    """CIFAR rows are CHW-flattened, STL-10 planes column-major: a wrong read fails here."""
    source = _open(data, name, split)
    for i in (0, 1, len(source) - 1):
        got = np.asarray(source[i][0])
        assert got.shape == (side, side, 3)
        np.testing.assert_array_equal(got, pattern(split, i, side))


def test_pixel_pattern_detects_transposition():
    """The check above is only meaningful if a transposed or channel-swapped image differs."""
    image = pattern("train", 0, 96)
    assert not np.array_equal(image, image.transpose(1, 0, 2))
    assert not np.array_equal(image, image[..., ::-1])


def test_class_names(data):
    assert _open(data, "cifar10", "test").classes == CIFAR10_CLASSES
    assert _open(data, "cifar100", "test").classes[:2] == ["fine_00", "fine_01"]
    assert _open(data, "imagefolder", "train").classes == [imagefolder_class(k) for k in range(3)]
    for split in ("train", "unlabeled"):
        assert _open(data, "stl10", split).classes == STL10_CLASSES


def test_stl10_unlabeled_and_combined(data):
    train, unlabeled = _open(data, "stl10", "train"), _open(data, "stl10", "unlabeled")
    both = _open(data, "stl10", "train+unlabeled")
    assert unlabeled.targets == [-1] * 30 and unlabeled[5][1] == -1
    assert len(both) == len(train) + len(unlabeled)
    assert both.targets == train.targets + unlabeled.targets
    np.testing.assert_array_equal(np.asarray(both[len(train) + 2][0]), pattern("unlabeled", 2, 96))


def test_stl10_class_names_fall_back_without_class_names_txt(data, tmp_path):
    root = tmp_path / "stl"
    shutil.copytree(data["stl10"], root)
    (root / "stl10_binary" / "class_names.txt").unlink()
    assert open_source("stl10", root, "test", verify_checksums=False).classes == STL10_CLASSES


def test_imagefolder_colours_and_greyscale_to_rgb(data):
    source = _open(data, "imagefolder", "val")
    assert source.targets == [k for k in range(3) for _ in range(4)]
    for i, (k, j) in enumerate((k, j) for k in range(3) for j in range(4)):
        image, target = source[i]
        assert target == k and image.mode == "RGB"
        mean = np.asarray(image, dtype=float).reshape(-1, 3).mean(0)
        np.testing.assert_allclose(mean, imagefolder_colour("val", k, j), atol=3)
    grey = np.asarray(source[0][0])
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_source_pickles_for_dataloader_workers(data):
    source = pickle.loads(pickle.dumps(_open(data, "stl10", "test")))
    np.testing.assert_array_equal(np.asarray(source[3][0]), pattern("test", 3, 96))


# ------------------------------------------------------------------------ checksums


@pytest.mark.parametrize("name,split,bad_file", [
    ("cifar10", "train", "cifar-10-batches-py"), ("cifar100", "test", "cifar-100-python"),
    ("stl10", "test", "stl10_binary"),
])
def test_checksums_refuse_a_modified_copy(data, name, split, bad_file):
    message = _raises("MD5", name, data[name], split)  # verify_checksums defaults to True
    assert str(data[name] / bad_file) in message
    assert "official release" in message and "data.verify_checksums: false" in message


def test_checksum_message_names_the_differing_files(data):
    message = _raises("MD5", "cifar10", data["cifar10"], "test", verify_checksums=True)
    assert "data_batch_1" in message and "batches.meta" in message


# ------------------------------------------------------------------------ user errors


def test_unknown_source_lists_valid_ones(data):
    message = _raises("'imagenet'", "imagenet", data["imagefolder"], "train")
    assert all(name in message for name in SOURCES)


@pytest.mark.parametrize("name,split,valid", [
    ("cifar10", "val", "train, test"), ("cifar100", "unlabeled", "train, test"),
    ("stl10", "val", "train, test, unlabeled, train+unlabeled"),
])
def test_wrong_split_lists_valid_ones(data, name, split, valid):
    message = _raises(f"invalid split '{split}'", name, data[name], split, verify_checksums=False)
    assert valid in message and str(data[name]) in message


@pytest.mark.parametrize("split", ["test", "../imagenet", ""])
def test_imagefolder_missing_split_lists_existing_ones(data, split):
    message = _raises(f"invalid split '{split}'", "imagefolder", data["imagefolder"], split)
    assert "train, val" in message and str(data["imagefolder"]) in message


@pytest.mark.parametrize("name", SOURCES)
def test_missing_root(tmp_path, name):
    root = tmp_path / "nowhere"
    message = _raises(f"{name} data not found at {root}", name, root, "train", verify_checksums=False)
    assert "expected" in message


def test_missing_root_message_shows_the_official_layout(tmp_path):
    root = tmp_path / "x"
    message = _raises("", "cifar10", root, "train")
    assert message == (
        f"cifar10 data not found at {root}: expected {root}/cifar-10-batches-py/"
        "{data_batch_1..5,test_batch,batches.meta} (the official 'CIFAR-10 python version')"
    )


@pytest.mark.parametrize("name,folder,missing,split", [
    ("cifar10", "cifar-10-batches-py", "data_batch_3", "test"),
    ("cifar10", "cifar-10-batches-py", "batches.meta", "train"),
    ("cifar100", "cifar-100-python", "meta", "train"),
    ("stl10", "stl10_binary", "unlabeled_X.bin", "test"),  # torchvision needs every file for any split
    ("stl10", "stl10_binary", "test_y.bin", "test"),
])
@pytest.mark.parametrize("verify", [True, False])
def test_missing_file(data, tmp_path, name, folder, missing, split, verify):
    root = tmp_path / name
    shutil.copytree(data[name], root)
    (root / folder / missing).unlink()
    message = _raises(f"{root / folder / missing} is missing", name, root, split, verify_checksums=verify)
    assert f"{name} data not found at {root}" in message


def test_wrong_top_folder_is_reported_as_missing_layout(data, tmp_path):
    """Pointing at the inner folder instead of its parent is the usual mistake."""
    inner = data["cifar10"] / "cifar-10-batches-py"
    message = _raises("is missing", "cifar10", inner, "train", verify_checksums=False)
    assert str(inner / "cifar-10-batches-py") in message


def test_malformed_cifar_rows_are_a_user_error(tmp_path):
    root = make_cifar10(tmp_path / "c", n_train=10, n_test=5, size=16)  # 768-byte rows
    _raises(f"cifar10 data at {root} could not be read", "cifar10", root, "train", verify_checksums=False)


def test_truncated_stl_binary_is_a_user_error(data, tmp_path):
    root = tmp_path / "stl"
    shutil.copytree(data["stl10"], root)
    path = root / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    _raises(f"stl10 data at {root} could not be read", "stl10", root, "test", verify_checksums=False)


def test_labels_not_matching_images_are_a_user_error(data, tmp_path):
    root = tmp_path / "stl"
    shutil.copytree(data["stl10"], root)
    (root / "stl10_binary" / "test_y.bin").write_bytes(bytes([1, 2, 3]))
    _raises("3 labels for 10 images", "stl10", root, "test", verify_checksums=False)


def test_not_a_pickle_is_a_user_error(data, tmp_path):
    root = tmp_path / "c100"
    shutil.copytree(data["cifar100"], root)
    (root / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    _raises(f"cifar100 data at {root} could not be read", "cifar100", root, "test", verify_checksums=False)


def test_imagefolder_split_without_class_folders(tmp_path):
    root = make_imagefolder(tmp_path / "in", splits=("train",))
    (root / "val").mkdir()
    (root / "val" / "stray.JPEG").write_bytes(b"")
    _raises(f"imagefolder split directory {root / 'val'} has no class folders", "imagefolder", root, "val")


def test_imagefolder_empty_class_folder_is_named(tmp_path):
    root = make_imagefolder(tmp_path / "in", splits=("train",))
    empty = root / "train" / imagefolder_class(1)
    for image in empty.iterdir():
        image.unlink()
    (empty / "notes.txt").write_text("not an image")
    message = _raises(f"imagefolder class folder {empty} has no images", "imagefolder", root, "train")
    assert ".jpg" in message


def test_imagefolder_undecodable_image_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path / "in", splits=("train",), classes=2, per_class=2)
    bad = root / "train" / imagefolder_class(0) / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    source = open_source("imagefolder", root, "train")  # opening lists files, it decodes none
    assert len(source) == 5
    with pytest.raises(UserError, match="broken.jpg could not be decoded"):
        source[0]  # files are sorted: "broken.jpg" < "n00000000_0.JPEG"


def test_label_outside_the_class_list_is_a_user_error(tmp_path):
    root = make_cifar10(tmp_path / "c", n_train=5, n_test=3)
    path = root / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch["labels"][1] = 10
    path.write_bytes(pickle.dumps(batch, protocol=2))
    _raises("labels span 0..10 but there are 10 classes", "cifar10", root, "test", verify_checksums=False)


# ------------------------------------------------------------------------ pickles that would run code


class _RunsCode:
    """Unpickling this calls ``func(arg)``: what a hostile 'CIFAR' file can do to a plain unpickler."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _payload(kind: str, sentinel: Path) -> _RunsCode:
    if kind == "os.system":
        return _RunsCode(os.system, f"touch '{sentinel}'")
    return _RunsCode(exec, f"open({str(sentinel)!r}, 'w').close()")


@pytest.mark.parametrize("name,split,filename,kind,nested,protocol", [
    ("cifar10", "train", "data_batch_3", "os.system", False, 2),
    ("cifar10", "test", "test_batch", "builtins.exec", True, 4),  # STACK_GLOBAL, inside a valid batch
    ("cifar10", "train", "batches.meta", "os.system", True, 0),
    ("cifar100", "test", "meta", "builtins.exec", False, 5),
    ("cifar100", "train", "train", "os.system", True, 2),
])
def test_pickle_that_would_run_code_is_refused_unrun(data, tmp_path, name, split, filename, kind, nested, protocol):
    root = tmp_path / name
    shutil.copytree(data[name], root)
    path = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python") / filename
    sentinel = tmp_path / "SENTINEL"
    payload = _payload(kind, sentinel)
    content = {**pickle.loads(path.read_bytes()), "extra": [payload]} if nested else payload
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    refused = f"{payload.func.__module__}.{payload.func.__name__}"  # os.system pickles as posix.system

    message = _raises(f"{name} file {path} refers to {refused};", name, root, split, verify_checksums=False)
    assert message.endswith("leoclr only reads pickles that hold plain data (dicts, lists, numpy arrays)")
    assert not sentinel.exists()

    # The payload is live: a plain unpickler (what torchvision uses) runs it.
    with open(path, "rb") as f:
        pickle.load(f, encoding="latin1")
    assert sentinel.exists()


@pytest.mark.parametrize("protocol", [0, 1, 3, 4, 5])  # the fake copy itself is protocol 2
def test_plain_cifar_pickles_of_every_protocol_load(data, tmp_path, protocol):
    """Re-packed copies are plain data whatever the pickle protocol (bytes, numpy arrays, scalars)."""
    root = tmp_path / "c10"
    shutil.copytree(data["cifar10"], root)
    for path in (root / "cifar-10-batches-py").iterdir():
        content = pickle.loads(path.read_bytes())
        if "num_vis" in content:
            content["num_vis"] = np.int64(content["num_vis"])  # a numpy scalar
        path.write_bytes(pickle.dumps(content, protocol=protocol))
    source = open_source("cifar10", root, "test", verify_checksums=False)
    assert source.classes == CIFAR10_CLASSES and len(source) == 20
    np.testing.assert_array_equal(np.asarray(source[3][0]), pattern("test", 3, 32))


def test_draft_decodes_large_jpegs_at_a_reduced_scale(tmp_path):
    import numpy as np
    from PIL import Image

    from leoclr_cli.data.ops import draft_side
    from leoclr_cli.config import AugmentConfig

    (tmp_path / "train" / "a").mkdir(parents=True)
    big = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "train" / "a" / "x.jpg", quality=90)
    src = open_source("imagefolder", tmp_path, "train")
    assert src[0][0].size == (800, 600)
    side = draft_side(AugmentConfig(size=32))  # 32 / sqrt(0.2) -> 72
    assert side == 72
    src.set_draft(side)
    assert src[0][0].size == (100, 75)  # 1/8: the largest reduction that keeps both sides >= 72
    src.set_draft(100)
    assert src[0][0].size == (200, 150)  # 1/4: 1/8 would leave 75 < 100 rows
    src.set_draft(None)
    assert src[0][0].size == (800, 600)


# --------------------------------------------------------------------------- which source a directory holds


def test_infer_source_reads_each_layout_and_refuses_the_rest(data, tmp_path):
    from fakedata import make_birdsnap, make_pets, make_stanford_cars

    from leoclr_cli.data.sources import infer_source

    roots = {**data, "cars": make_stanford_cars(tmp_path / "cars"), "pets": make_pets(tmp_path / "pets"),
             "birdsnap": make_birdsnap(tmp_path / "birdsnap")}
    for name, root in roots.items():
        assert infer_source(root)[0] == name, name
        assert infer_source(root, declared=name)[0] == name
    assert infer_source(data["cifar10"], declared="builtin")[0] == "cifar10"  # builtin takes no path: DIR decides

    both = make_cifar10(make_imagefolder(tmp_path / "both"), n_train=5, n_test=5)
    cases = [
        (both, None, "holds several datasets (cifar10, imagefolder); choose one with --source"),
        (data["stl10"], "cifar10", "holds stl10 data, not the cifar10 data the protocol names; give --source stl10"),
        (data["cifar10"] / "cifar-10-batches-py", None, f"give the folder that holds it: --data {data['cifar10']}"),
        (tmp_path / "missing", None, "is not a directory"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", None, "holds none of the layouts leoclr reads"))
    for root, declared, needle in cases:
        with pytest.raises(UserError) as exc:
            infer_source(root, declared)
        assert needle in str(exc.value) and str(root) in str(exc.value), str(exc.value)
    # a protocol's explicit source is kept where DIR holds it, or holds nothing recognisable (its reader says more)
    assert infer_source(both, declared="imagefolder")[0] == "imagefolder"
    assert infer_source(tmp_path / "empty", declared="stl10")[0] == "stl10"
    # class folders without a split above them are images without labels: read as folder (tests/test_owndata.py)
    assert infer_source(data["imagefolder"] / "train")[0] == "folder"
