"""``leoclr bench``: throughput of the view pipeline and of the train step, MoCo-v2 vs LeOCLR.

* view pipeline: images/s through the PIL augmentation of one process (one core), 2 views for
  MoCo-v2 and 3 (original + 2 crops) for LeOCLR, on photo-sized random images;
* train step: samples/s of the engine's own loop on synthetic views already in memory, so the
  number is the device's compute alone;
* end to end (estimate): both stages in series on one core, 1 / (1/pipeline + 1/step).
Speed is measured here and printed, never asserted in tests.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from .data.views import ViewMaker
from .engine import Engine, amp_dtype, resolve_device
from .methods import build_method
from .schema import AugmentConfig, MethodConfig, ModelConfig


def pipeline_rate(kinds: tuple[str, ...], size: int, images: int) -> float:
    aug = AugmentConfig(size=size, blur=size >= 96, normalize="imagenet")
    maker = ViewMaker(aug, kinds)
    rng = np.random.default_rng(0)
    side = size if size < 96 else round(size * 8 / 7 * 1.5)
    pics = [Image.fromarray(rng.integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8)) for _ in range(16)]
    maker(pics[0])
    t0 = time.perf_counter()
    for i in range(images):
        maker(pics[i % len(pics)])
    return images / (time.perf_counter() - t0)


class SyntheticViews(torch.utils.data.Dataset):
    def __init__(self, n_views: int, size: int, length: int):
        self.views = [torch.randn(3, size, size) for _ in range(n_views)]
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.views, 0


def step_rate(method: str, arch: str, size: int, batch: int, steps: int, device: torch.device) -> float:
    splits = 8 if batch % 8 == 0 and batch >= 32 else 1  # at least 4 samples per split
    model = build_method(ModelConfig(arch=arch, bn_splits=splits), MethodConfig(name=method, queue_size=4096))
    ds = SyntheticViews(len(model.views), size, batch * steps)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, drop_last=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(task=model, optimizer=opt, loader=loader, epochs=2, lr_at=lambda e: 0.01, device=device,
                        run_dir=Path(tmp), protocol_json="{}", checkpoint_every=0, quiet=True,
                        console=Console(quiet=True), desc=f"bench {method}", amp=amp_dtype("auto", device),
                        channels_last=splits == 1)
        history = engine.run()  # epoch 1 warms up (allocator, cudnn autotune), epoch 2 is timed
    return history[-1]["samples_per_s"]


def run_bench(*, device: str, arch: str, size: int, batch_size: int, steps: int, images: int) -> tuple[list[dict[str, Any]], float]:
    dev = resolve_device(device)
    pipe = {m: pipeline_rate(kinds, size, images)
            for m, kinds in (("mocov2", ("crop", "crop")), ("leoclr", ("original", "crop", "crop")))}
    step = {m: step_rate(m, arch, size, batch_size, steps, dev) for m in ("mocov2", "leoclr")}
    rows = [
        {"what": "view pipeline, 1 core (PIL)", "device": "cpu", **pipe},
        {"what": f"train step ({arch})", "device": str(dev), **step},
        {"what": "end to end, 1 core + device (estimate)", "device": str(dev),
         **{m: 1.0 / (1.0 / pipe[m] + 1.0 / step[m]) for m in pipe}},
    ]
    return rows, step["mocov2"] / step["leoclr"]
