"""The batched tensor view generator (augment.backend=tensor), run on CPU tensors: shapes, ranges,
the original view uncropped, the per-sample ops equal torchvision's, and the random draws follow
the configured distributions over many samples."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from leoclr_cli.data import gpu_views as gv
from leoclr_cli.config import AugmentConfig, norm_stats
from leoclr_cli.data.spec import ViewParams, ViewSpec
from leoclr_cli.data.views import AugmentedDataset, PILViews, ViewMaker
from test_views import PLAIN, corners_image, marks_present

N = 600


def batch(cfg, kinds, images, seed=0):
    draw = gv.DecodeAndDraw(cfg, kinds)
    ds = AugmentedDataset([(im, 0) for im in images], draw, seed=seed)
    items = [ds[i][0] for i in range(len(ds))]
    return torch.stack([a for a, _ in items]), torch.stack([p for _, p in items])


def raw(view, cfg):
    """Undo the normalisation: the [0, 1] image."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm_stats(cfg.norm))
    return view * std + mean


def gradient_image(w=48, h=32):
    """R encodes x (0..1 left to right), G encodes y, B is 0: a crop's pixels say where it came from."""
    x = np.linspace(0, 1, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 1, h)[:, None].repeat(w, 1)
    return Image.fromarray((np.stack([x, y, np.zeros_like(x)], -1) * 255).round().astype(np.uint8))


def test_shapes_ranges_and_seeding():
    cfg = AugmentConfig(size=24, normalize="builtin", decode_size=40)
    images = [corners_image(64, 48), gradient_image(), corners_image(30, 50)] * 3
    imgs, params = batch(cfg, ("original", "crop", "crop"), images)
    assert imgs.shape == (9, 3, 40, 40) and imgs.dtype == torch.uint8 and params.shape == (9, 3, gv.N_PARAMS)
    views = gv.TensorViews(cfg, ("original", "crop", "crop"))((imgs, params))
    assert len(views) == 3 and all(v.shape == (9, 3, 24, 24) and v.dtype == torch.float32 for v in views)
    for v in views:
        r = raw(v, cfg)
        assert torch.isfinite(r).all() and r.min() >= -1e-5 and r.max() <= 1 + 1e-5
    # seeded per (seed, epoch, index): the same draws again, other draws with another seed
    assert torch.equal(batch(cfg, ("original", "crop", "crop"), images)[1], params)
    assert not torch.equal(batch(cfg, ("original", "crop", "crop"), images, seed=1)[1], params)


@pytest.mark.parametrize("mode", ["resize", "pad"])
def test_original_view_is_uncropped(mode):
    cfg = AugmentConfig(**PLAIN, original=mode)
    imgs, params = batch(cfg, ("original", "crop"), [corners_image()] * 8)
    original, crop = gv.TensorViews(cfg, ("original", "crop"))((imgs, params))
    for view in original:
        assert all(marks_present(view).values())
    assert not all(all(marks_present(v).values()) for v in crop)  # crops lose corners
    r = raw(original, cfg)
    if mode == "pad":  # 64x48 in a square: grey bands of 4 rows above and below
        assert torch.allclose(r[:, :, 0], torch.full_like(r[:, :, 0], 124 / 255), atol=0.02)
        assert (r[:, 0, 5:7, :2] > 0.8).all() and (r[:, 0, 8:, :2] < 0.6).all()  # the red mark below the band
    else:
        assert (r[:, 0, :2, :2] > 0.9).all() and (r[:, 2, -2:, :2] > 0.9).all()


def test_random_original_anchor_is_cropped_like_a_crop():
    cfg = AugmentConfig(**PLAIN)
    _, params = batch(cfg, ("random-original", "original"), [corners_image()] * 16)
    anchor, original = params[:, 0, gv.X0:gv.Y1 + 1], params[:, 1, gv.X0:gv.Y1 + 1]
    assert torch.equal(original, torch.tensor([0.0, 0.0, 1.0, 1.0]).expand_as(original))
    area = (anchor[:, 2] - anchor[:, 0]) * (anchor[:, 3] - anchor[:, 1])
    assert (area < 0.99).sum() >= 12 and (area >= 0.2 - 1e-6).all()


def test_crop_boxes_flips_and_scales_follow_the_configuration():
    cfg = AugmentConfig(**{**PLAIN, "flip": True}, decode_size=96)
    img = gradient_image()
    imgs, params = batch(cfg, ("crop",), [img] * N)
    (views,) = gv.TensorViews(cfg, ("crop",))((imgs, params))
    r = raw(views, cfg)
    # the pixels show each sample's own box: R's range is the box's x extent, G's its y extent
    left, right = r[:, 0, :, 0].mean(1), r[:, 0, :, -1].mean(1)
    flipped = left > right
    x0, x1 = params[:, 0, gv.X0], params[:, 0, gv.X1]
    assert torch.equal(flipped, params[:, 0, gv.FLIP] > 0)
    lo, hi = torch.minimum(left, right), torch.maximum(left, right)
    assert (lo - x0).abs().max() < 0.06 and (hi - x1).abs().max() < 0.06
    top, bottom = r[:, 1, 0].mean(1), r[:, 1, -1].mean(1)
    assert (top - params[:, 0, gv.Y0]).abs().max() < 0.08 and (bottom - params[:, 0, gv.Y1]).abs().max() < 0.08
    # flip rate 1/2; area fraction in [0.2, 1]; aspect ratio (in source pixels) in [3/4, 4/3]
    assert abs(flipped.float().mean().item() - 0.5) < 0.07
    area = (x1 - x0) * (params[:, 0, gv.Y1] - params[:, 0, gv.Y0])
    assert area.min() >= 0.19 and area.max() <= 1 + 1e-6  # (box sides are whole source pixels)
    assert 0.4 < area.mean() < 0.65  # uniform on [0.2, 1] is 0.6; large boxes that do not fit are redrawn
    ratio = (x1 - x0) * img.width / ((params[:, 0, gv.Y1] - params[:, 0, gv.Y0]) * img.height)
    assert ratio.min() >= 0.75 - 0.06 and ratio.max() <= 4 / 3 + 0.06
    # the PIL pipeline draws from the same distribution (the same spec, same seeds)
    pil = ViewMaker(cfg, ("crop",)).spec
    with torch.random.fork_rng():
        torch.manual_seed(0)
        drawn = [pil.draw("crop", *img.size) for _ in range(300)]
    areas = [p.height * p.width / (img.width * img.height) for p in drawn]
    assert abs(np.mean(areas) - area.mean().item()) < 0.05


def test_jitter_grayscale_and_blur_rates_and_values():
    cfg = AugmentConfig(size=16, crop=False, flip=False, normalize="builtin", decode_size=16)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(N)]
    imgs, params = batch(cfg, ("crop",), images)
    p = params[:, 0]
    jit, gray, blur = p[:, gv.JITTER] > 0, p[:, gv.GRAY] > 0, p[:, gv.BLUR] > 0
    for rate, want in ((jit, 0.8), (gray, 0.2), (blur, 0.5)):
        assert abs(rate.float().mean().item() - want) < 0.06
    # factors uniform on their ranges
    for col, lo, hi in ((gv.BRIGHT, 0.6, 1.4), (gv.CONTRAST, 0.6, 1.4), (gv.SAT, 0.6, 1.4), (gv.HUE, -0.1, 0.1)):
        f = p[jit, col]
        assert f.min() >= lo and f.max() <= hi
        assert abs(f.mean().item() - (lo + hi) / 2) < 0.04 * (hi - lo) * 4
        assert abs(f.quantile(0.25).item() - (lo + (hi - lo) / 4)) < 0.08 * (hi - lo)
    sig = p[blur, gv.SIGMA]
    assert sig.min() >= 0.1 and sig.max() <= 2.0 and abs(sig.mean().item() - 1.05) < 0.12
    orders = {tuple(o) for o in p[jit, gv.ORDER:gv.ORDER + 4].long().tolist()}
    assert len(orders) > 20 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    # each sample's output equals torchvision's kernels applied with its own parameters
    (views,) = gv.TensorViews(cfg, ("crop",))((imgs, params))
    out = raw(views, cfg)
    x = imgs.float() / 255
    for i in range(40):
        want = x[i]
        if jit[i]:
            fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            for op in p[i, gv.ORDER:gv.ORDER + 4].long().tolist():
                want = fns[op](want, p[i, gv.BRIGHT + op].item())
        if gray[i]:
            want = TF.rgb_to_grayscale(want, num_output_channels=3)
        if blur[i]:
            want = TF.gaussian_blur(want, [gv.blur_kernel_size(cfg)] * 2, [p[i, gv.SIGMA].item()] * 2)
        assert torch.allclose(out[i], want, atol=2e-3), i
    grey = (out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-4
    assert torch.equal(grey, gray)


def test_yiq_hue_keeps_luma_and_turns_red_towards_green():
    red = torch.tensor([0.7, 0.2, 0.2]).view(1, 3, 1, 1)
    out = gv.hue_yiq(red, torch.tensor([0.05]))
    y = torch.tensor([0.299, 0.587, 0.114])
    assert torch.allclose((out.flatten() * y).sum(), (red.flatten() * y).sum(), atol=1e-5)
    assert out[0, 1] > red[0, 1] and out[0, 2] < red[0, 2] + 1e-6
    assert torch.allclose(gv.hue_yiq(red, torch.tensor([0.0])), red, atol=1e-6)


def test_pretrain_with_the_tensor_backend(tmp_path):
    from leoclr_cli.workflows.pretrain import run_pretrain
    from leoclr_cli.config import load_protocol

    p = load_protocol("pretrain", None, {
        "augment.backend": "tensor", "augment.size": 16, "augment.normalize": "builtin", "augment.hue": "yiq",
        "data.builtin_train": 32, "data.builtin_test": 16, "method.queue_size": 32, "method.queue_init": "keys",
        "model.arch": "resnet18", "model.dim": 8, "model.bn_splits": 2, "optim.batch_size": 16, "optim.epochs": 1,
        "device": "cpu"})
    result = run_pretrain(p, tmp_path / "run", quiet=True)
    assert np.isfinite(result["final_loss"]) and (tmp_path / "run" / "backbone.safetensors").is_file()


def test_direct_views_blur_with_the_tensor_backends_gaussian():
    # blur_hwc (the direct PIL path's blur, in place on the normalised HWC tensor) is torchvision's
    # reflect-padded Gaussian: equal at the largest sigma (the same 13 taps), within the 3-sigma
    # truncation below it; images smaller than the kernel keep their shape
    torch.manual_seed(0)
    x = torch.rand(20, 17, 3)
    scratch: dict = {}
    for sigma, tol in ((2.0, 1e-5), (1.0, 5e-3), (0.4, 5e-3)):
        want = TF.gaussian_blur(x.permute(2, 0, 1), [13, 13], [sigma, sigma]).permute(1, 2, 0)
        got = gv.blur_hwc(x.clone(), sigma, scratch)
        assert torch.allclose(got, want, atol=tol), sigma
        assert (got - x).abs().max() > 0.05  # it did blur
    small = torch.rand(4, 5, 3)
    assert gv.blur_hwc(small.clone(), 2.0).shape == (4, 5, 3)

    # DirectViews: blur at its rate, with the sigma it drew; the view stays in [0, 1] once unnormalised
    cfg = AugmentConfig(size=24, crop=False, flip=False, color_jitter=False, grayscale=False, blur=True,
                        normalize="builtin", direct=True)
    impulse = np.zeros((24, 24, 3), np.uint8)
    impulse[12, 12] = 255
    img = Image.fromarray(impulse)
    spec, direct, seen, spreads = ViewSpec(cfg, ("crop",)), gv.DirectViews(cfg), 0, []
    yy, xx = np.mgrid[0:24, 0:24] - 12
    for seed in range(200):
        torch.manual_seed(seed)
        (p,) = spec.draws(24, 24)
        view = direct(img, p)
        mass = raw(view[None], cfg)[0, 0].numpy()
        assert mass.min() > -1e-5 and mass.max() < 1 + 1e-5
        if p.sigma:
            seen += 1
            spread = float(np.sqrt((mass * xx**2).sum() / mass.sum()))
            if p.sigma > 0.8:  # below that a sampled Gaussian is narrower than its sigma
                assert abs(spread - p.sigma) < 0.05 * p.sigma, (p.sigma, spread)
            spreads.append(spread)
        else:
            assert mass[12, 12] > 0.99 and mass.sum() < 1.01  # untouched
    assert 70 < seen < 130 and np.std(spreads) > 0.4


def test_the_three_executors_apply_one_record_alike():
    # a smooth 64 px square in mid-range colours: the tensor backend decodes it to 64 px unchanged, and
    # no jitter step below clamps (the fused colour matrix does not clamp between steps)
    cfg = AugmentConfig(size=32, normalize="builtin", hue="fused", decode_size=64)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(70, 180, (5, 5, 3), dtype=np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
    jitter = dict(order=(2, 0, 3, 1), factors=(1.15, 0.85, 1.2, 0.05))
    records = [ViewParams(8, 4, 40, 48), ViewParams(0, 0, 64, 64), ViewParams(8, 4, 40, 48, **jitter),
               ViewParams(0, 0, 64, 64, gray=True, flip=True), ViewParams(10, 20, 30, 30, sigma=1.5, flip=True),
               ViewParams(10, 20, 30, 30, sigma=0.4), ViewParams(0, 0, 64, 64, pad=True, **jitter),
               ViewParams(3, 9, 50, 41, **jitter, gray=True, sigma=1.1, flip=True)]
    reference, direct = PILViews(cfg), gv.DirectViews(cfg)
    decoded, _ = gv.DecodeAndDraw(cfg, ("crop",))(img)
    rows = torch.tensor([[gv.param_row(p, 64, 64)] for p in records])
    (tensor,) = gv.TensorViews(cfg, ("crop",))((decoded.expand(len(records), -1, -1, -1), rows))
    plain = raw(reference(img, records[0]), cfg)
    for i, p in enumerate(records):
        a, b, c = (raw(v, cfg) for v in (reference(img, p), direct(img, p), tensor[i]))
        for other in (b, c):
            assert (a - other).abs().max() < 0.03 and (a - other).abs().mean() < 0.005, p
        if i:  # far less than what a record changes
            assert (a - plain).abs().mean() > 0.05, p


def test_pil_and_tensor_paths_draw_the_same_views():
    # seeded per (seed, epoch, index), the PIL reference and the tensor backend make the same views
    cfg = AugmentConfig(size=32, normalize="builtin", hue="fused", decode_size=64, jitter=(0.2, 0.2, 0.2, 0.05))
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(70, 180, (5, 5, 3), dtype=np.uint8)).resize((64, 64)) for _ in range(12)]
    kinds = ("original", "crop", "crop")
    imgs, params = batch(cfg, kinds, images, seed=5)
    tensor = gv.TensorViews(cfg, kinds)((imgs, params))
    pil = AugmentedDataset([(im, 0) for im in images], ViewMaker(cfg, kinds), seed=5)
    for i in range(len(images)):
        for v, view in enumerate(pil[i][0]):
            diff = (raw(view, cfg) - raw(tensor[v][i], cfg)).abs()
            assert diff.max() < 0.05 and diff.mean() < 0.006, (i, v)
    assert not torch.equal(tensor[1], tensor[2])  # two crops, two records
