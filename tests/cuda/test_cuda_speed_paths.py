"""channels_last and torch.compile against eager on CUDA: the same losses over 5 steps, the same weights
within a stated tolerance; and the peak memory of ResNet-50 at 224 px, batch 64, LeOCLR under bf16,
recorded (printed, and written where LEOCLR_CUDA_RECORD names a JSON file), never asserted against a time."""

import json
import os
from pathlib import Path

import pytest
import torch

from cudaharness import Size, finite, train_steps, update_error

# fp32 on both sides; cuDNN picks other convolution kernels for NHWC, inductor fuses differently, and
# both sides use TF32 convolutions (cuDNN's default): about 1e-3 relative per step
LOSS_RTOL, UPDATE_RTOL = 1e-2, 0.1


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["leoclr", "mocov2"])
@pytest.mark.parametrize("path", ["channels_last", "compile"])
def test_fast_path_trains_like_eager(path, method):
    eager = train_steps(method, "cuda", 5)
    fast = train_steps(method, "cuda", 5, channels_last=path == "channels_last", compile=path == "compile")
    assert len(fast.losses) == len(eager.losses) == 5 and finite(fast)
    rel = max(abs(a - b) / abs(b) for a, b in zip(fast.losses, eager.losses))
    err = update_error(fast, eager)
    print(f"{path} {method}: max relative loss difference {rel:.2e}, update error {err:.2e}")
    assert rel < LOSS_RTOL and err < UPDATE_RTOL
    conv1 = fast.method.encoder_q.backbone.conv1.weight
    if path == "channels_last":  # the path really was taken: NHWC weights
        assert conv1.is_contiguous(memory_format=torch.channels_last) and not conv1.is_contiguous()
    else:
        assert fast.method.encoder_q._compiled_call_impl is not None


@pytest.mark.cuda
def test_peak_memory_of_resnet50_224_batch64_leoclr_bf16_is_recorded():
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run = train_steps("leoclr", "cuda", 3, amp=torch.bfloat16, size=Size("resnet50", 224, 64, 65536, 128, False))
    peak = torch.cuda.max_memory_allocated() / 2**30
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    record = {"what": "peak memory, ResNet-50 224 px batch 64 LeOCLR bf16 (3 steps, plain BN, queue 65536)",
              "peak_gib": round(peak, 3), "device": torch.cuda.get_device_name(0), "device_gib": round(total, 1)}
    print(json.dumps(record))
    if os.environ.get("LEOCLR_CUDA_RECORD"):
        path = Path(os.environ["LEOCLR_CUDA_RECORD"])
        data = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**data, "peak_memory_r50_224_b64_leoclr_bf16": record}, indent=2))
    assert finite(run) and len(run.losses) == 3
    # two ResNet-50s (about 0.2 GiB of weights with the optimizer) and three views' activations
    assert 1.0 < peak < total
