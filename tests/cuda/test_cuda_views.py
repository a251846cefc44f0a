"""The tensor view backend on CUDA against the same ViewSpec draws run on the CPU: the crop boxes and
flips the pixels show are the same, and the pixels agree within a stated tolerance."""

import pytest
import torch

from cudaharness import devices
from leoclr_cli.config import AugmentConfig
from leoclr_cli.data import gpu_views as gv
from test_gpu_views import batch, gradient_image, raw
from test_views import PLAIN, corners_image

# pixels on the [0, 1] scale before normalisation: CUDA's roi_align, colour ops and the blur's grouped
# convolution (TF32 by default in cuDNN, a 10-bit mantissa) against the CPU's float32
PIXEL_MAX, PIXEL_MEAN = 0.01, 1e-3
N = 64


def boxes_and_flips(views, cfg):
    """Each view's crop box (x0, x1, y0, y1) as the gradient image's R (x) and G (y) values at its
    edges, and whether it is mirrored (R falls from left to right)."""
    r = raw(views.float().cpu(), cfg)
    left, right = r[:, 0, :, 0].mean(1), r[:, 0, :, -1].mean(1)
    top, bottom = r[:, 1, 0].mean(1), r[:, 1, -1].mean(1)
    box = torch.stack([torch.minimum(left, right), torch.maximum(left, right), top, bottom], 1)
    return box, left > right


@pytest.mark.parametrize("device", devices("cpu", "cuda"))
def test_crop_boxes_and_flips_match_the_cpu_and_the_draws(device):
    cfg = AugmentConfig(**{**PLAIN, "flip": True}, decode_size=96)
    kinds = ("original", "crop", "crop")
    imgs, params = batch(cfg, kinds, [gradient_image()] * N)
    on_cpu = gv.TensorViews(cfg, kinds)((imgs, params))
    on_dev = gv.TensorViews(cfg, kinds).to(device)((imgs.to(device), params.to(device)))
    for v, (a, b) in enumerate(zip(on_cpu, on_dev)):
        assert b.device.type == torch.device(device).type and b.shape == a.shape == (N, 3, 32, 32)
        box_a, flip_a = boxes_and_flips(a, cfg)
        box_b, flip_b = boxes_and_flips(b, cfg)
        assert torch.equal(flip_a, flip_b) and torch.equal(flip_a, params[:, v, gv.FLIP] > 0)
        assert (box_a - box_b).abs().max() < 1e-3  # the same box on both devices
        drawn = params[:, v][:, [gv.X0, gv.X1, gv.Y0, gv.Y1]]
        assert (box_b - drawn).abs().max() < 0.08  # and the one ViewSpec drew
        assert (raw(b.cpu(), cfg) - raw(a, cfg)).abs().max() < PIXEL_MAX
    assert flip_a.any() and not flip_a.all()  # both outcomes of the flip's coin were compared


@pytest.mark.parametrize("hue", ["hsv", "yiq"])
@pytest.mark.parametrize("device", devices("cpu", "cuda"))
def test_full_augmentation_pixels_match_the_cpu(device, hue):
    # MoCo v2's augmentation (jitter in each sample's order, grayscale, blur), LeOCLR's three views
    cfg = AugmentConfig(size=32, normalize="imagenet", decode_size=64, hue=hue)
    kinds = ("original", "crop", "crop")
    imgs, params = batch(cfg, kinds, [corners_image(), gradient_image(), corners_image(30, 50)] * (N // 3))
    assert (params[:, :, gv.JITTER] > 0).any() and (params[:, :, gv.BLUR] > 0).any() and (params[:, :, gv.GRAY] > 0).any()
    on_cpu = gv.TensorViews(cfg, kinds)((imgs, params))
    on_dev = gv.TensorViews(cfg, kinds).to(device)((imgs.to(device), params.to(device)))
    for a, b in zip(on_cpu, on_dev):
        diff = (raw(b.float().cpu(), cfg) - raw(a, cfg)).abs()
        print(f"{device} {hue}: max |device - cpu| {diff.max():.2e}, mean {diff.mean():.2e}")
        assert diff.max() < PIXEL_MAX and diff.mean() < PIXEL_MEAN
