"""The built-in dataset: deterministic, balanced, objects off-centre, crops that can miss them."""

import numpy as np
import pytest

from leoclr_cli.data import builtin
from leoclr_cli.data.builtin import BuiltinTextures, render_with_mask
from leoclr_cli.errors import UserError


def test_deterministic_balanced_and_split_apart():
    a, b = BuiltinTextures("train", 50), BuiltinTextures("train", 50)
    assert a.images.shape == (50, builtin.SIZE, builtin.SIZE, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and a.targets == b.targets
    assert np.bincount(a.targets).tolist() == [5] * 10
    assert not np.array_equal(a.images, BuiltinTextures("test", 50).images)
    assert not np.array_equal(a.images, BuiltinTextures("train", 50, seed=1).images)
    img, label = a[3]
    assert img.size == (builtin.SIZE, builtin.SIZE) and img.mode == "RGB" and label == a.targets[3]
    with pytest.raises(UserError, match="splits train and test"):
        BuiltinTextures("val", 10)


def test_objects_are_off_centre_and_a_small_crop_can_miss_them():
    rng = np.random.default_rng(0)
    side = round(builtin.SIZE * np.sqrt(0.2))  # a crop at RandomResizedCrop's smallest scale
    centroids, missed, crops = [], 0, 0
    for i in range(200):
        pixels, mask = render_with_mask(i % 10, np.random.default_rng(i))
        assert mask.sum() > 10  # the whole image always shows an object
        ys, xs = np.nonzero(mask > 0.5)
        centroids.append((ys.mean(), xs.mean()))
        for _ in range(5):
            y, x = rng.integers(0, builtin.SIZE - side + 1, 2)
            crops += 1
            missed += mask[y:y + side, x:x + side].max() == 0
    centroids = np.array(centroids)
    assert centroids.std(0).min() > 3  # objects wander over the image, not centred
    assert 0.02 < missed / crops < 0.5, missed / crops  # some crops show background only


def test_the_label_is_the_texture_not_the_grey_level():
    # every class uses the same two grey levels on the same background: mean brightness hardly
    # tells classes apart, the pattern does (e.g. the direction in which the grey level changes)
    data = BuiltinTextures("train", 400)
    grey = data.images.mean((1, 2, 3))
    targets = np.array(data.targets)
    means = np.array([grey[targets == c].mean() for c in range(10)])
    assert means.std() < 0.4 * grey.std()  # (dots and grid differ a little in their light fraction)

    def orientation_energy(img: np.ndarray) -> tuple[float, float]:
        g = img[..., 0].astype(np.float64)
        return np.abs(np.diff(g, axis=0)).mean(), np.abs(np.diff(g, axis=1)).mean()

    h = np.array([orientation_energy(data.images[i]) for i in np.nonzero(targets == 0)[0]])  # hstripes
    v = np.array([orientation_energy(data.images[i]) for i in np.nonzero(targets == 1)[0]])  # vstripes
    # horizontal stripes change along y, vertical ones along x
    assert (h[:, 0] > h[:, 1]).mean() > 0.9 and (v[:, 1] > v[:, 0]).mean() > 0.9


# --------------------------------------------------------------------------- the default set: digits in photos


def test_scenes_deterministic_balanced_and_split_apart():
    a, b = builtin.BuiltinScenes("train", 60), builtin.BuiltinScenes("train", 60, seed=0)
    assert a.images.shape == (60, builtin.SIZE, builtin.SIZE, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and a.targets == b.targets
    assert np.bincount(a.targets).tolist() == [6] * 10
    assert not np.array_equal(a.images, builtin.BuiltinScenes("test", 60).images)
    assert not np.array_equal(a.images, builtin.BuiltinScenes("train", 60, seed=1).images)
    img, label = a[7]
    assert img.size == (builtin.SIZE, builtin.SIZE) and img.mode == "RGB" and label == a.targets[7]
    with pytest.raises(UserError, match="splits train and test"):
        builtin.BuiltinScenes("val", 10)


def test_scenes_train_and_test_use_disjoint_digit_scans():
    train, test = builtin.digit_pool("train"), builtin.digit_pool("test")
    for c in range(10):
        assert len(set(train[c]) & set(test[c])) == 0 and 30 <= len(test[c]) <= 40 and len(train[c]) >= 3 * len(test[c])
    _, labels = builtin._digits()
    assert all((labels[train[c]] == c).all() and (labels[test[c]] == c).all() for c in range(10))


def test_scenes_are_real_photographs_with_a_small_off_centre_digit():
    rng = np.random.default_rng(0)
    pool = builtin.digit_pool("train")
    side = round(builtin.SIZE * np.sqrt(0.2))  # a crop at RandomResizedCrop's smallest scale
    centroids, missed, crops, colourful = [], 0, 0, 0
    for i in range(200):
        pixels, ink = builtin.render_scene_with_mask(i % 10, np.random.default_rng(i), pool)
        assert 10 < (ink > 0.5).sum() < 0.3 * builtin.SIZE**2  # a digit is there, and small
        ys, xs = np.nonzero(ink > 0.5)
        centroids.append((ys.mean(), xs.mean()))
        colourful += np.abs(pixels[..., 0].astype(int) - pixels[..., 2]).mean() > 10  # RGB photos as well as grey
        for _ in range(5):
            y, x = rng.integers(0, builtin.SIZE - side + 1, 2)
            crops += 1
            missed += ink[y:y + side, x:x + side].max() < 0.5
    assert np.array(centroids).std(0).min() > 4  # digits wander over the image, not centred
    assert 0.1 < missed / crops < 0.5, missed / crops  # many small crops show background only
    assert 20 < colourful < 180


def test_scenes_ink_stands_out_and_the_background_does_not_tell_the_class():
    data = builtin.BuiltinScenes("train", 400)
    targets = np.array(data.targets)
    grey = data.images.mean((1, 2, 3))
    means = np.array([grey[targets == c].mean() for c in range(10)])
    assert means.std() < 0.25 * grey.std()  # backgrounds are drawn independently of the digit
    pool = builtin.digit_pool("train")
    for i in range(50):
        pixels, ink = builtin.render_scene_with_mask(i % 10, np.random.default_rng(1000 + i), pool)
        lum = pixels.mean(2)
        on, off = lum[ink > 0.8], lum[(ink < 0.05)]
        if on.size and off.size:
            assert abs(on.mean() - off.mean()) > 15  # the digit is visible against what it is written on


# --------------------------------------------------------------------------- the default set: digits on noise


def test_digits_deterministic_prefix_stable_balanced_and_split_apart():
    a = builtin.BuiltinDigits("train", 60, seed=5)
    assert a.images.shape == (60, builtin.SIZE, builtin.SIZE, 3) and a.images.dtype == np.uint8
    assert builtin.BuiltinDigits.name == "builtin"
    b = builtin.BuiltinDigits("train", 95, seed=5)  # a larger split starts with the same images
    assert np.array_equal(a.images, b.images[:60]) and a.targets == b.targets[:60]
    assert np.bincount(a.targets).tolist() == [6] * 10
    assert np.bincount(b.targets, minlength=10).max() - np.bincount(b.targets, minlength=10).min() <= 1
    assert not np.array_equal(a.images, builtin.BuiltinDigits("test", 60, seed=5).images)
    assert not np.array_equal(a.images, builtin.BuiltinDigits("train", 60, seed=6).images)
    img, label = a[7]
    assert img.size == (builtin.SIZE, builtin.SIZE) and img.mode == "RGB" and label == a.targets[7]
    with pytest.raises(UserError, match="splits train and test"):
        builtin.BuiltinDigits("val", 10)


def test_digits_ink_stands_out_and_wanders_and_small_crops_miss_it():
    pool = builtin.digit_pool("train")
    rng = np.random.default_rng(0)
    side = round(builtin.SIZE * np.sqrt(0.2))  # a crop at RandomResizedCrop's smallest scale
    centroids, missed, crops = [], 0, 0
    for i in range(200):
        pixels, ink = builtin.render_digit_with_mask(i % 10, np.random.default_rng(i), pool)
        lum = pixels.mean(2)
        assert abs(lum[ink > 0.8].mean() - lum[ink < 0.05].mean()) > 40  # the digit is plainly visible
        ys, xs = np.nonzero(ink > 0.5)
        centroids.append((ys.mean(), xs.mean()))
        assert 0.02 * builtin.SIZE**2 < ink.sum() < 0.25 * builtin.SIZE**2  # ink of a real size, never the whole image
        for _ in range(5):
            y, x = rng.integers(0, builtin.SIZE - side + 1, 2)
            crops += 1
            missed += ink[y:y + side, x:x + side].sum() < 0.1 * ink.sum()
    assert np.array(centroids).std(0).min() > 3  # digits wander over the image, not centred
    assert 0.05 < missed / crops < 0.5, missed / crops  # many small crops show background only


def test_digits_background_does_not_identify_the_image_or_the_class():
    """Two crops of one image share nothing of its canvas beyond what two different images share: the canvas
    pixels of one image's left and right thirds correlate no more than those of two different images, and the
    canvas brightness does not depend on the class."""
    pool = builtin.digit_pool("train")
    same, other, level, labels = [], [], [], []
    prev_right = None
    for i in range(300):
        pixels, ink = builtin.render_digit_with_mask(i % 10, np.random.default_rng([9, i]), pool)
        lum = pixels.mean(2)
        canvas = ink < 0.01
        left, right = lum[:, :10], lum[:, -10:]
        keep = canvas[:, :10] & canvas[:, -10:]
        if keep.sum() > 100:
            a, b = left[keep] - left[keep].mean(), right[keep] - right[keep].mean()
            same.append(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))
            if prev_right is not None:
                c = prev_right[keep] - prev_right[keep].mean()
                other.append(np.dot(a, c) / np.sqrt(np.dot(a, a) * np.dot(c, c)))
            prev_right = right
        level.append(lum[canvas].mean())
        labels.append(i % 10)
    assert abs(np.mean(same) - np.mean(other)) < 0.05, (np.mean(same), np.mean(other))
    level, labels = np.array(level), np.array(labels)
    assert np.std([level[labels == c].mean() for c in range(10)]) < 0.25 * level.std() + 0.5
