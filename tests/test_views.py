"""The view pipeline: the original keeps the whole image, crops do not; parts switch off; seeding."""

import math
import numpy as np
import pytest
import torch
from PIL import Image

from leoclr_cli.config import AugmentConfig
from leoclr_cli.data.spec import ViewParams, ViewSpec
from leoclr_cli.data.views import AugmentedDataset, PILViews, ViewMaker

# no colour changes and no flip, so pixel values and positions can be checked exactly
PLAIN = dict(color_jitter=False, grayscale=False, blur=False, flip=False, size=32, normalize="builtin")


def corners_image(w=64, h=48):
    """Grey image with four uniquely coloured 6x6 corner marks."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[:6, :6] = (255, 0, 0)
    a[:6, -6:] = (0, 255, 0)
    a[-6:, :6] = (0, 0, 255)
    a[-6:, -6:] = (255, 255, 0)
    return Image.fromarray(a)


def unnormalise(t):
    return (t * 0.25 + 0.5).clamp(0, 1)


def marks_present(view):
    """Which corner colours survive somewhere in the view (channel pattern above 0.8 / below 0.2)."""
    v = unnormalise(view)
    r, g, b = v[0] > 0.8, v[1] > 0.8, v[2] > 0.8
    lo_r, lo_g, lo_b = v[0] < 0.2, v[1] < 0.2, v[2] < 0.2
    return {
        "red": bool((r & lo_g & lo_b).any()),
        "green": bool((lo_r & g & lo_b).any()),
        "blue": bool((lo_r & lo_g & b).any()),
        "yellow": bool((r & g & lo_b).any()),
    }


@pytest.mark.parametrize("mode", ["resize", "pad"])
def test_original_view_keeps_all_four_corners(mode):
    maker = ViewMaker(AugmentConfig(**PLAIN, original=mode), ("original",))
    img = corners_image()
    for _ in range(5):
        (view,) = maker(img)
        assert view.shape == (3, 32, 32)
        assert all(marks_present(view).values())


def test_random_crops_sometimes_lose_corners():
    maker = ViewMaker(AugmentConfig(**PLAIN), ("crop", "crop"))
    torch.manual_seed(0)
    lost = 0
    for _ in range(20):
        for view in maker(corners_image()):
            lost += not all(marks_present(view).values())
    assert lost > 20  # most of 40 crops at scale (0.2, 1) miss at least one corner


def test_pad_keeps_aspect_ratio():
    (view,) = ViewMaker(AugmentConfig(**PLAIN, original="pad"), ("original",))(corners_image(64, 32))
    v = unnormalise(view)
    # a 2:1 image padded to a square: top and bottom quarter rows are the grey pad (~124/255)
    assert torch.allclose(v[:, :6], torch.full_like(v[:, :6], 124 / 255), atol=0.02)
    assert torch.allclose(v[:, -6:], torch.full_like(v[:, -6:], 124 / 255), atol=0.02)


def seeded_draws(cfg, n=200, w=64, h=48):
    """``n`` views' parameter records of a ``w`` x ``h`` image, seeded."""
    spec = ViewSpec(cfg, ("crop",))
    torch.manual_seed(0)
    return [spec.draw("crop", w, h) for _ in range(n)]


def test_every_part_can_be_switched_off():
    full = seeded_draws(AugmentConfig(size=32))
    assert any(p.box != (0, 0, 64, 48) for p in full) and any(p.flip for p in full) and any(p.gray for p in full)
    assert any(p.order for p in full) and any(p.sigma for p in full)  # jitter, blur
    bare = seeded_draws(AugmentConfig(size=32, crop=False, color_jitter=False, grayscale=False, blur=False,
                                      flip=False))
    assert all(p == ViewParams(0, 0, 48, 64) for p in bare)  # the whole image, nothing else
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # and nothing was drawn


def test_grayscale_rate_matches_its_probability():
    cfg = AugmentConfig(size=16, crop=False, color_jitter=False, blur=False, flip=False, grayscale_p=0.2,
                        normalize="builtin")
    maker = ViewMaker(cfg, ("crop",))
    img = Image.fromarray(np.tile(np.array([200, 30, 60], np.uint8), (16, 16, 1)))
    torch.manual_seed(0)
    gray = sum(bool(torch.allclose(v[0], v[1])) for v in (maker(img)[0] for _ in range(1000)))
    assert 150 < gray < 250


class Constant(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return corners_image(), i


def test_views_depend_on_seed_epoch_and_index_only():
    maker = ViewMaker(AugmentConfig(size=32), ("original", "crop", "crop"))
    a, b = AugmentedDataset(Constant(), maker, seed=1), AugmentedDataset(Constant(), maker, seed=1)
    torch.manual_seed(123)
    va, _ = a[2]
    torch.manual_seed(999)  # the global RNG does not matter
    vb, _ = b[2]
    assert all(torch.equal(x, y) for x, y in zip(va, vb))
    assert not torch.equal(va[1], va[2])  # the two crops differ
    a.set_epoch(1)
    assert not torch.equal(a[2][0][1], va[1])  # a new epoch, new crops
    assert not torch.equal(a[3][0][1], a[2][0][1])


def test_random_original_view_is_cropped_like_a_crop():
    from leoclr_cli.data.ops import VIEW_KINDS

    assert "random-original" in VIEW_KINDS
    maker = ViewMaker(AugmentConfig(**PLAIN), ("random-original", "original"))
    torch.manual_seed(0)
    lost = 0
    for _ in range(20):
        anchor, original = maker(corners_image())
        lost += not all(marks_present(anchor).values())
        assert all(marks_present(original).values())
    assert lost > 10


class _Blank(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return Image.new("RGB", (8, 8)), 0


def _draw(img):
    return torch.rand(3)


def test_persistent_workers_see_set_epoch():
    ds = AugmentedDataset(_Blank(), _draw, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, persistent_workers=True)
    in_process = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        in_process.append(torch.stack([ds[i][0] for i in range(2)]))
    ds.set_epoch(0)
    first = next(iter(loader))[0]
    ds.set_epoch(1)
    second = next(iter(loader))[0]  # the same worker process, which must use epoch 1's seeds
    torch.testing.assert_close(first, in_process[0])
    torch.testing.assert_close(second, in_process[1])


class _FirstUnreadable(_Blank):
    def __getitem__(self, i):
        from leoclr_cli.errors import BadImage

        if i == 0:
            raise BadImage("image 0 could not be decoded")
        return super().__getitem__(i)


class _RecordingMaker(ViewMaker):
    def __call__(self, img, index=None, epoch=0):
        return torch.tensor([index, epoch])


def test_skipped_bad_image_crops_with_the_box_of_the_image_read(capsys):
    ds = AugmentedDataset(_FirstUnreadable(), _RecordingMaker(AugmentConfig(size=8), ("crop",)), on_bad_image="skip")
    ds.set_epoch(4)
    views, _, replaced = ds[0]  # image 1 stands in for the unreadable image 0
    assert views.tolist() == [1, 4] and replaced == 1
    views, _, replaced = ds[1]
    assert views.tolist() == [1, 4] and replaced == 0
    assert "image 0 could not be decoded" in capsys.readouterr().err
    assert ds.state_dict() == {}  # no ContrastiveCrop boxes, nothing for the training state


def test_blur_is_pils_gaussian_with_sigma_drawn_from_its_range():
    # a bright impulse in the middle: after a Gaussian blur its spread (std of the mass) is sigma
    impulse = np.zeros((65, 65), np.uint8)
    impulse[32, 32] = 255
    img = Image.fromarray(impulse).convert("RGB")
    yy, xx = np.mgrid[0:65, 0:65] - 32
    cfg = AugmentConfig(size=65, crop=False, color_jitter=False, grayscale=False, flip=False, blur_p=1.0,
                        normalize="builtin")
    spec, reference, spreads = ViewSpec(cfg, ("crop",)), PILViews(cfg), []
    for seed in range(200):
        torch.manual_seed(seed)
        (p,) = spec.draws(65, 65)
        sigma = p.sigma
        mass = unnormalise(reference(img, p))[0].numpy().astype(np.float64)
        spread = math.sqrt((mass * xx**2).sum() / mass.sum())
        if sigma > 0.8:  # below that PIL's box approximation is coarser than a pixel
            assert abs(spread - sigma) < 0.25 * sigma, (sigma, spread)
        spreads.append(spread)
    assert 0 <= min(spreads) and max(spreads) < 2.3
    assert np.std(spreads) > 0.4  # sigma varies from view to view


def test_to_tensor_equals_torchvisions_normalize():
    from torchvision.transforms import v2

    from leoclr_cli.data.ops import to_tensor
    from leoclr_cli.config import NORMALIZATION

    rng = np.random.default_rng(0)
    for name, (mean, std) in NORMALIZATION.items():
        make = to_tensor(name)
        for h, w in ((9, 7), (5, 12), (9, 7)):  # one object, images of several widths
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            want = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                               v2.Normalize(list(mean), list(std))])(img)
            got = make(img)
            assert got.shape == (3, h, w) and got.dtype == torch.float32
            assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(to_tensor(name)(img.convert("L")), to_tensor(name)(img.convert("L").convert("RGB")))


def test_fused_colour_jitter_matches_the_steps_it_composes():
    from leoclr_cli.data.ops import jitter_pil

    # mid-range colours, so that the step-by-step version never clamps between its steps
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(50, 110, (32, 32, 3), dtype=np.uint8))
    spec = ViewSpec(AugmentConfig(size=32, crop=False, jitter=(0.2, 0.2, 0.2, 0.1), jitter_p=1.0), ("crop",))
    worst, moved = 0.0, 0.0
    for seed in range(50):
        torch.manual_seed(seed)
        (p,) = spec.draws(32, 32)  # one record: the order and the four factors
        a = np.asarray(jitter_pil(img, p.order, p.factors, "fused"), np.float64)
        b = np.asarray(jitter_pil(img, p.order, p.factors, "yiq"), np.float64)
        worst = max(worst, np.abs(a - b).max())
        moved = max(moved, np.abs(a - np.asarray(img, np.float64)).mean())
    assert worst <= 4  # uint8 rounding after each step of the step-by-step version
    assert moved > 5  # and it really changes the colours


def test_direct_views_keep_the_pipelines_behaviour():
    # nothing random: exactly the regular pipeline's resize + tensor
    plain = AugmentConfig(**{**PLAIN, "crop": False}, direct=True)
    img = corners_image(64, 48)
    (direct,) = ViewMaker(plain, ("crop",))(img)
    (regular,) = ViewMaker(AugmentConfig(**{**PLAIN, "crop": False}), ("crop",))(img)
    assert torch.allclose(direct, regular, atol=1e-5)

    # random crops only: the original keeps all four corners, crops lose some
    data = AugmentedDataset(Constant(), ViewMaker(AugmentConfig(**PLAIN, direct=True), ("original", "crop", "crop")),
                            seed=3)
    lost, n = 0, 0
    for epoch in range(12):
        data.set_epoch(epoch)
        for i in range(len(data)):
            (original, c1, c2), _ = data[i]
            assert original.shape == c1.shape == (3, 32, 32) and original.dtype == torch.float32
            lost, n = lost + (not all(marks_present(c1).values())), n + 1
    assert lost > n // 3  # crops at scale 0.2-1 lose corners
    assert torch.equal(data[1][0][1], data[1][0][1])  # seeded per (seed, epoch, index)
    assert all(all(marks_present(o).values()) for o in (data[i][0][0] for i in range(len(data))))
    # the full augmentation on a colourful image: grayscale at its rate
    cfg = AugmentConfig(size=32, normalize="builtin", direct=True)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    maker = ViewMaker(cfg, ("crop",))
    torch.manual_seed(0)
    grey = sum(bool(torch.allclose(v[0], v[1], atol=1e-4)) for v in (maker(noise)[0] for _ in range(400)))
    assert 40 < grey < 120  # RandomGrayscale(0.2)


def test_numpy_hue_matrix_equals_the_torch_one():
    from leoclr_cli.data.ops import _yiq_hue_np, yiq_hue_matrix

    for shift in (-0.5, -0.1, 0.0, 0.05, 0.3):
        assert np.allclose(_yiq_hue_np(shift), yiq_hue_matrix(shift).numpy(), atol=1e-12)
    assert not np.allclose(_yiq_hue_np(0.1), np.eye(3), atol=1e-3)  # it does turn the hue
