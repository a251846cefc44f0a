"""``leoclr bench``: where the time of a pretraining step goes, MoCo-v2 vs LeOCLR, on this machine.

Rows (samples/s; a LeOCLR sample is 3 views, a MoCo-v2 sample 2; the third column, on the view rows but
the reference and on the train step, LeOCLR with :data:`LOCAL` local crops (``augment.local_crops``), 3 views
and 4 small ones at 3/7 of the size):

* views, per CPU core, on photo-sized JPEGs (ImageNet's typical 500x375, scaled with
  ``--view-size``) decoded in the loop: the reference, MoCo v2's loader (torchvision.transforms v1
  on PIL, full decode); our default PIL path (full decode, HSV hue); the fast PIL path
  (reduced-scale JPEG decode, fused colour matrix, blur on the float view); the tensor backend's worker part
  (decode once + parameter draws) and its batched views, on one CPU thread and on the device;
* train step: the engine's own loop on synthetic views already in memory (the device's compute);
* end to end: the engine fed by the real loader (``--workers`` processes) over generated JPEGs,
  for each backend.

The rows that are compared are measured in turn (:func:`interleave`: every view pipeline and both
methods, round after round; the train step's two methods; each end-to-end backend's two methods), each
rate the median of its rounds, each ratio (LeOCLR/MoCo-v2 cost, against the reference) the median of
the per-round ratios with their range, so that a ratio holds on a machine whose speed changes while it runs.
On CUDA the train-step and end-to-end rows also give the peak memory and the mean GPU utilisation
(``torch.cuda.utilization``, which needs the ``pynvml`` module); on the CPU they are blank.
Speed is measured here and printed, never asserted in tests.
"""

from __future__ import annotations

import io
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageFilter
from rich.console import Console
from rich.table import Table

from ..config import AugmentConfig, MethodConfig, ModelConfig, PretrainProtocol
from ..core.engine import Checkpoints, DeviceSpec, Engine, Observers, Schedule, amp_dtype, resolve_device
from ..core.rundir import environment, write_json
from ..core.timm_nets import fit_kwargs, is_timm
from ..data.gpu_views import DecodeAndDraw, TensorViews
from ..data.ops import draft_side
from ..data.sources import open_rgb
from ..data.views import AugmentedDataset, ViewMaker
from ..methods import build_method
from .pretrain import build_loader

#: local crops of the third column (LeOCLR's multi-crop)
LOCAL = 4
KINDS = {"mocov2": ("crop", "crop"), "leoclr": ("original", "crop", "crop"),
         "leoclr_local": ("original", "crop", "crop", *("local",) * LOCAL)}
#: the columns' (method, augment.local_crops)
COLUMNS = {"mocov2": ("mocov2", 0), "leoclr": ("leoclr", 0), "leoclr_local": ("leoclr", LOCAL)}
#: the view-pipeline variants of ours: (row label, augment fields)
VARIANTS = {
    "pil": ("views: PIL default (full decode, HSV hue)", {"hue": "hsv", "draft": False}),
    "fast": ("views: PIL fast (direct: draft decode, drawn params, fused colour, float blur)",
             {"hue": "fused", "draft": True, "direct": True}),
}


class _MocoBlur:
    """moco/loader.py's GaussianBlur: sigma ~ U(0.1, 2.0) from Python's RNG, PIL's filter."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class MocoLoaderViews:
    """The reference: MoCo v2's loader as its main_moco.py writes it, torchvision.transforms (v1) on a
    fully decoded PIL image, one Compose call per view; LeOCLR's original view is Resize((size, size))
    followed by the same steps minus the crop."""

    def __init__(self, size: int, kinds: tuple[str, ...]):
        from torchvision import transforms as T

        rest = [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                T.RandomApply([_MocoBlur()], p=0.5), T.RandomHorizontalFlip(), T.ToTensor(),
                T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
        crop = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), *rest])
        original = T.Compose([T.Resize((size, size)), *rest])
        self.pipelines = [original if k == "original" else crop for k in kinds]

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [f(img) for f in self.pipelines]


def photo_size(view_size: int) -> tuple[int, int]:
    return max(8, round(view_size * 500 / 224)), max(8, round(view_size * 375 / 224))


def jpeg_photos(n: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Smooth random colour fields as JPEG files (noise would make decoding unrealistically slow)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class JpegPhotos(torch.utils.data.Dataset):
    """``(decoded photo, 0)`` from in-memory JPEGs, with a source's ``set_draft``."""

    def __init__(self, photos: list[bytes], length: int):
        self.photos, self.length, self.min_side = photos, length, None

    def set_draft(self, min_side: Optional[int]) -> None:
        self.min_side = min_side

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return open_rgb(io.BytesIO(self.photos[i % len(self.photos)]), self.min_side), 0


def augment(size: int, **fields: Any) -> AugmentConfig:
    return AugmentConfig(size=size, blur=size >= 96, normalize="imagenet", **fields)


def timed(fn: Callable[[], Any], n: int, timer: Callable[[], float] = time.perf_counter) -> Callable[[], float]:
    """A measurement: items per second of one call of ``fn`` (``n`` items a call)."""
    def measure() -> float:
        t0 = timer()
        fn()
        return n / max(timer() - t0, 1e-12)

    return measure


def interleave(measures: dict[str, Callable[[], Any]], rounds: int = 3, warmup: bool = True) -> dict[str, list[Any]]:
    """Every measurement's result in each of ``rounds`` rounds, the compared measurements taken in
    turn within a round (A B C, then C B A, ...: a steady drift of the machine's speed favours none)
    instead of each in its own stretch of time, after one untimed call of each (``warmup``).

    On a shared CPU a row timed in its own stretch moved by up to 1.5x between runs while the others
    slowed or sped up with it less; taken in turn, the rows of one round see the same machine, so their
    ratios hold better than their rates (:func:`spread` gives the per-round ratios' range)."""
    if warmup:
        for fn in measures.values():
            fn()
    out: dict[str, list[Any]] = {k: [] for k in measures}
    keys = list(measures)
    for r in range(rounds):
        for k in keys if r % 2 == 0 else reversed(keys):
            out[k].append(measures[k]())
    return out


def paired_ratio(num: list[float], den: list[float]) -> tuple[float, list[float]]:
    """The median and [min, max] of the per-round ratios num[r] / den[r] (rounds of :func:`interleave`):
    each round's ratio compares two measurements taken on the same machine state, so their median holds
    where a ratio of the rows' medians would carry each row's own noise."""
    ratios = [a / b for a, b in zip(num, den)]
    return median(ratios), [min(ratios), max(ratios)]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def view_rates(view_size: int, images: int, batch: int, device: torch.device, rounds: int = 3) -> list[dict[str, Any]]:
    """The view-pipeline rows, every CPU part on one core (one torch thread); all pipelines and both
    methods interleaved (:func:`interleave`), each row the median of its rounds."""
    jpegs = jpeg_photos(16, photo_size(view_size))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    measures: dict[tuple[str, str], Callable[[], float]] = {}  # (row key, method) -> measurement
    labels = {"reference": "views: reference, MoCo's loader (torchvision.transforms v1, PIL)",
              **{k: v[0] for k, v in VARIANTS.items()}, "worker": "views: tensor backend, worker part (decode + draws)",
              "batched": "views: tensor backend, batched views", "device": "views: tensor backend, batched views"}
    try:
        full = JpegPhotos(jpegs, images)  # full decode for the reference
        for method, kinds in KINDS.items():
            local = COLUMNS[method][1]
            if not local:  # MoCo's loader makes no local crops
                make = MocoLoaderViews(view_size, kinds)
                measures["reference", method] = timed(lambda make=make: [make(full[i][0]) for i in range(images)],
                                                      images)
            for key, (_, fields) in VARIANTS.items():
                cfg = augment(view_size, local_crops=local, **fields)
                photos = JpegPhotos(jpegs, images)
                photos.set_draft(draft_side(cfg) if cfg.draft else None)
                data = AugmentedDataset(photos, ViewMaker(cfg, kinds))
                measures[key, method] = timed(lambda data=data: [data[i] for i in range(images)], images)
            cfg = augment(view_size, backend="tensor", hue="yiq", local_crops=local)
            photos = JpegPhotos(jpegs, images)
            photos.set_draft(draft_side(cfg))
            data = AugmentedDataset(photos, DecodeAndDraw(cfg, kinds))
            measures["worker", method] = timed(lambda data=data: [data[i] for i in range(images)], images)
            items = [data[i][0] for i in range(min(batch, images))]
            inputs = (torch.stack([a for a, _ in items]), torch.stack([p for _, p in items]))
            make_cpu = TensorViews(cfg, kinds)
            measures["batched", method] = timed(lambda make=make_cpu, x=inputs: make(x), len(items))
            if device.type == "cuda":
                on_dev, make_dev = tuple(t.to(device) for t in inputs), TensorViews(cfg, kinds).to(device)

                def run_dev(make=make_dev, x=on_dev) -> None:
                    make(x)
                    torch.cuda.synchronize(device)

                measures["device", method] = timed(run_dev, len(items))
        got = interleave(measures, rounds)
    finally:
        torch.set_num_threads(threads)
    per_round = {key: got[key] for key in got}
    keys = list(dict.fromkeys(k for k, _ in measures))
    # the tensor backend's two parts in series, per round
    pos = keys.index("batched") + 1
    keys.insert(pos, "both")
    labels["both"] = "views: tensor backend, both parts"
    for m in KINDS:
        per_round["both", m] = [1 / (1 / w + 1 / v) for w, v in zip(got["worker", m], got["batched", m])]
    ref = per_round["reference", "leoclr"]
    rows = []
    for key in keys:
        row = {"what": labels[key], "device": str(device) if key == "device" else "cpu, 1 core",
               **{m: median(per_round[key, m]) for m in KINDS if (key, m) in per_round},
               "rounds": rounds}
        row["cost"], row["cost_spread"] = paired_ratio(per_round[key, "mocov2"], per_round[key, "leoclr"])
        if (key, "leoclr_local") in per_round:
            row["local_cost"], row["local_cost_spread"] = paired_ratio(per_round[key, "leoclr"],
                                                                       per_round[key, "leoclr_local"])
        # the device's batched views against the reference per core: the CPU cores of MoCo's loader one GPU replaces
        row["vs_reference"], row["vs_reference_spread"] = paired_ratio(per_round[key, "leoclr"], ref)
        rows.append(row)
    return rows


class SyntheticViews(torch.utils.data.Dataset):
    """The same random views for every item: ``kinds`` at ``size`` px, a local one at its default side."""

    def __init__(self, kinds: tuple[str, ...], size: int, length: int):
        local = augment(size).local_side
        self.views = [torch.randn(3, local, local) if k == "local" else torch.randn(3, size, size) for k in kinds]
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.views, 0


def _gpu_util(device: torch.device, stop: threading.Event, samples: list[float]) -> None:
    while not stop.wait(0.1):
        try:
            samples.append(float(torch.cuda.utilization(device)))
        except Exception:  # no pynvml / no NVML: leave it blank
            return


def engine_rate(method: str, arch: str, batch: int, loader: torch.utils.data.DataLoader, device: torch.device,
                batch_transform: Optional[Callable] = None, size: int = 224) -> dict[str, Any]:
    """Samples/s of the engine's second epoch over ``loader`` (the first warms up) for the column ``method``,
    with peak memory and mean utilisation on CUDA (a timm ``arch`` is built for ``size`` px views)."""
    splits = 8 if batch % 8 == 0 and batch >= 32 else 1  # at least 4 samples per split
    name, local = COLUMNS[method]
    kwargs = fit_kwargs(arch, size) if is_timm(arch) else None
    model = build_method(ModelConfig(arch=arch, bn_splits=splits, timm_kwargs=kwargs),
                         MethodConfig(name=name, queue_size=4096), local)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    stop, util = threading.Event(), []
    poll = threading.Thread(target=_gpu_util, args=(device, stop, util), daemon=True) if cuda else None
    if poll:
        poll.start()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(model, opt, loader, schedule=Schedule(2, lambda e: 0.01),
                        checkpoints=Checkpoints(Path(tmp), "{}"),
                        device=DeviceSpec(device, amp_dtype("auto", device), channels_last=splits == 1),
                        observers=Observers(f"bench {method}", quiet=True, console=Console(quiet=True)),
                        batch_transform=batch_transform)
        history = engine.run()
    stop.set()
    out = {"rate": history[-1]["samples_per_s"], "peak_gib": None, "gpu_util": None}
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["gpu_util"] = float(np.mean(util)) if util else None
    return out


def _row(what: str, device: torch.device, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A row from each method's per-round :func:`engine_rate` results (:func:`interleave`): the median
    rate, the per-round cost ratios' range, the largest peak memory and the mean utilisation."""
    rates = {m: [r["rate"] for r in rs] for m, rs in results.items()}
    row: dict[str, Any] = {"what": what, "device": str(device), **{m: median(v) for m, v in rates.items()},
                           "rounds": len(rates["leoclr"])}
    row["cost"], row["cost_spread"] = paired_ratio(rates["mocov2"], rates["leoclr"])
    if "leoclr_local" in rates:
        row["local_cost"], row["local_cost_spread"] = paired_ratio(rates["leoclr"], rates["leoclr_local"])
    peaks = [r["peak_gib"] for rs in results.values() for r in rs if r["peak_gib"] is not None]
    utils = [r["gpu_util"] for rs in results.values() for r in rs if r["gpu_util"] is not None]
    row["peak_gib"] = max(peaks) if peaks else None
    row["gpu_util"] = float(np.mean(utils)) if utils else None
    return row


def end_to_end(method: str, arch: str, size: int, batch: int, steps: int, workers: int, device: torch.device,
               backend: str) -> dict[str, Any]:
    fields = {"tensor": {"backend": "tensor", "hue": "yiq"}, **{k: v[1] for k, v in VARIANTS.items()}}[backend]
    p = PretrainProtocol(augment=augment(size, local_crops=COLUMNS[method][1], **fields),
                         model=ModelConfig(bn_splits=1), data={"num_workers": workers}, optim={"batch_size": batch})
    source = JpegPhotos(jpeg_photos(16, photo_size(size)), batch * steps)
    loader = build_loader(p, source, KINDS[method], device)
    transform = TensorViews(p.augment, KINDS[method]).to(device) if backend == "tensor" else None
    return engine_rate(method, arch, batch, loader, device, transform, size)


def run_bench(*, device: str, arch: str, size: int, batch_size: int, steps: int, images: int, view_size: int = 224,
              workers: int = 0, rounds: int = 3, json_out: Optional[Path] = None) -> tuple[list[dict[str, Any]], float]:
    """The table's rows and the LeOCLR/MoCo-v2 cost per sample of the train step; also written to ``json_out``
    (with the environment and the settings) when given, after every group of rows (``"complete": false``
    until the last), so a run stopped part-way leaves what it measured. The rows compared are measured
    in turn, ``rounds`` times each (:func:`interleave`)."""
    dev = resolve_device(device)
    amp = amp_dtype("auto", dev)
    settings = {"arch": arch, "size": size, "view_size": view_size, "batch_size": batch_size, "steps": steps,
                "images": images, "workers": workers, "rounds": rounds, "device": str(dev),
                "amp": str(amp).replace("torch.", "") if amp is not None else "off"}
    rows: list[dict[str, Any]] = []
    ratio: Optional[float] = None

    def save(complete: bool) -> None:
        if json_out is not None:
            write_json(json_out, {"rows": rows, "train_step_cost_ratio": ratio, "complete": complete,
                                  "environment": environment(), "settings": settings})

    rows += view_rates(view_size, images, batch_size, dev, rounds)
    save(False)
    loaders = {m: torch.utils.data.DataLoader(SyntheticViews(kinds, size, batch_size * steps),
                                              batch_size=batch_size, drop_last=True) for m, kinds in KINDS.items()}
    step = interleave({m: lambda m=m: engine_rate(m, arch, batch_size, loaders[m], dev, size=size) for m in KINDS},
                      rounds, warmup=False)  # engine_rate times its second epoch only
    rows.append(_row(f"train step ({arch}, {size} px, synthetic views)", dev, step))
    ratio = rows[-1]["cost"]
    save(False)
    for backend in ("pil", "fast", "tensor"):
        # the local-crop column is the views' and the train step's cost; end to end it would be their sum again
        results = interleave({m: lambda m=m: end_to_end(m, arch, size, batch_size, steps, workers, dev, backend)
                              for m in KINDS if not COLUMNS[m][1]}, rounds, warmup=False)
        rows.append(_row(f"end to end ({backend} views, {workers} workers, {size} px)", dev, results))
        save(backend == "tensor")
    return rows, ratio


def bench_table(rows: list[dict[str, Any]], *, arch: str, batch_size: int, view_size: int, size: int) -> Table:
    """The rows of :func:`run_bench` as the table ``leoclr bench`` prints."""
    table = Table(title=f"leoclr bench: {arch}, batch {batch_size}; views at {view_size} px from "
                        f"photo-sized JPEGs, train at {size} px")
    cols = ("what", "device", "mocov2 samples/s", "leoclr samples/s", "leoclr / mocov2 cost", "leoclr vs reference",
            f"leoclr +{LOCAL} local samples/s", f"+{LOCAL} local / leoclr cost", "peak GiB", "GPU util %")
    for col in cols:
        table.add_column(col, justify="left" if col in ("what", "device") else "right")

    def fmt(v: Any, spec: str) -> str:
        return "" if v is None else format(v, spec)

    def ratio(v: Optional[float], lo_hi: Optional[list[float]]) -> str:
        """A ratio with the range of its per-round values, e.g. ``1.20x (1.17-1.23)``."""
        if v is None:
            return ""
        return f"{v:.2f}x" + (f" ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})" if lo_hi else "")

    for r in rows:
        table.add_row(r["what"], r["device"], f"{r['mocov2']:.1f}", f"{r['leoclr']:.1f}",
                      ratio(r["cost"], r.get("cost_spread")), ratio(r.get("vs_reference"), r.get("vs_reference_spread")),
                      fmt(r.get("leoclr_local"), ".1f"), ratio(r.get("local_cost"), r.get("local_cost_spread")),
                      fmt(r.get("peak_gib"), ".2f"), fmt(r.get("gpu_util"), ".0f"))
    return table
