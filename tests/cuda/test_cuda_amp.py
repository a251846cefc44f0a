"""Mixed precision against fp32 for 10 steps of LeOCLR and MoCo-v2 from one seed, through the engine:
bf16, and fp16 with its gradient scaler; losses and weights within stated tolerances, nothing
non-finite, and the steps the scaler skips counted. On the CPU (autocast on the CPU) in the normal
suite (bf16 only: the CPU's fp16 kernels take minutes for one backward pass of these tiny models), on
CUDA in the CUDA tier."""

import functools
import math

import pytest
import torch

from cudaharness import finite, train_steps, update_error

STEPS = 10
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Tolerances, against fp32 from the same seed and data. Loss: the largest relative difference of a step's
# loss over the 10 steps. Weights: ||update_amp - update_fp32|| / ||update_fp32|| over the query encoder
# (the update is what the 10 steps changed). bf16 keeps 8 bits of mantissa (about 0.4% per rounding),
# fp16 11 bits (0.05%).
# Measured on the CPU (ResNet-18, 16 px, batch 16), bf16: loss 2.5e-3 and update 0.27 (LeOCLR), 7.2e-3
# and 0.32 (MoCo-v2). A broken path
# (an unscaled or zero gradient, a step in the wrong direction) gives an update error of 1 or more.
LOSS_RTOL = {"bf16": 0.02, "fp16": 0.005}
UPDATE_RTOL = {"bf16": 0.5, "fp16": 0.15}
SAFE_SCALE = 2.0**10  # fp16 gradients of these losses times 2^10 stay far below fp16's 65504: no step skipped


@functools.lru_cache(maxsize=None)
def fp32(method, device):
    return train_steps(method, device, STEPS)


@pytest.mark.parametrize("method", ["leoclr", "mocov2"])
@pytest.mark.parametrize("device, amp", [pytest.param("cpu", "bf16", id="cpu-bf16")] + [
    pytest.param("cuda", a, marks=pytest.mark.cuda, id=f"cuda-{a}") for a in ("bf16", "fp16")])
def test_mixed_precision_trains_like_fp32(device, method, amp):
    ref = fp32(method, device)
    run = train_steps(method, device, STEPS, amp=DTYPES[amp], init_scale=SAFE_SCALE if amp == "fp16" else None)
    assert len(run.losses) == len(ref.losses) == STEPS and finite(run) and finite(ref)
    rel = max(abs(a - b) / abs(b) for a, b in zip(run.losses, ref.losses))
    err = update_error(run, ref)
    print(f"{device} {method} {amp}: max relative loss difference {rel:.2e}, update error {err:.3f}")
    assert run.losses != ref.losses  # autocast really ran in lower precision
    assert rel < LOSS_RTOL[amp] and err < UPDATE_RTOL[amp]
    if amp == "fp16":  # every step taken, and the scale has not moved (it grows only after 2000 good steps)
        assert run.applied == STEPS and run.scale == SAFE_SCALE
    else:
        assert run.applied == STEPS and run.scale is None  # bf16 needs no scaler


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["leoclr", "mocov2"])
def test_fp16_scaler_skips_overflowing_steps_and_counts_them(method):
    device = "cuda"
    # a loss scale of 2^40 overflows fp16's gradients: the scaler skips those steps (the weights stay as
    # they were) and halves the scale after each, until the gradients fit
    init = 2.0**40
    run = train_steps(method, device, STEPS, amp=torch.float16, init_scale=init)
    skipped = STEPS - run.applied
    print(f"{device} {method}: {skipped} of {STEPS} steps skipped, scale {init:g} -> {run.scale:g}")
    assert finite(run) and all(math.isfinite(v) for v in run.losses)
    assert skipped >= 1 and run.scale == init * 0.5**skipped  # one halving per skipped step, no growth
    if run.applied == 0:
        assert all(torch.equal(run.final[k], run.initial[k]) for k in run.final)
    else:
        assert any(not torch.equal(run.final[k], run.initial[k]) for k in run.final)
