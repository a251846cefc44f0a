"""WebDataset tar shards: ``source: webdataset`` for pretraining, and ``leoclr shards`` to write them.

A shard is a tar file of samples (``KEY.jpg`` / ``KEY.png`` ..., ``KEY.cls`` the label), read as a
stream by the webdataset library (``tarfile_samples``: local paths, and any URL its ``gopen`` opens,
``http(s)://``, ``pipe:CMD``: a shell command, run only when the command line asks for it, never from a
protocol file alone); ``data.root`` is a shard list, brace patterns expanded
(``train-{000000..000099}.tar``; several lists joined with ``::``).

:class:`ShardViews` is the pretraining dataset over shards, an ``IterableDataset`` whose epochs are
reproducible: epoch e's shard order is drawn from (seed, e); rank r of W takes every W-th shard,
DataLoader worker w of J every J-th shard of its rank (or, when the rank has fewer shards than
workers, every J-th sample); each worker shuffles its samples in a seeded buffer, and each sample's
views are seeded by (seed, e, its position in its worker's stream). Every rank makes the same
number of steps, ``samples // (W x batch)``: a rank whose shards hold fewer samples reads them again.
The stream depends only on (seed, epoch, ranks, workers), so resume is exact at epoch boundaries; a
mid-epoch resume reads and discards the batches the checkpoint had already trained on (exact too,
at the cost of reading them).
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from ..errors import BadImage, UserError
from .sources import open_rgb
from .views import AugmentedDataset, sample_seed

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
SHUFFLE_BUFFER, SHUFFLE_INITIAL = 1000, 100


def _local(url: str) -> Optional[Path]:
    """The path of a local shard (a plain path or file:// URL), None for any other URL."""
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    return None if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url) else Path(url).expanduser()


def count_samples(path: Path) -> int:
    """Samples in a local shard: the distinct keys (file names up to the first dot) in its tar headers."""
    try:
        with tarfile.open(path) as tar:
            return len({m.name.split("/")[-1].split(".", 1)[0] for m in tar if m.isfile()})
    except (OSError, tarfile.TarError) as e:
        why = str(e).strip().splitlines()[-1].lstrip("- ") if str(e).strip() else type(e).__name__
        raise UserError(f"webdataset shard {path} could not be read as a tar file ({why})") from None


class ShardSource:
    """The shards of ``pattern`` and their sample count (from the local shards' tar headers, or ``samples``)."""

    name = "webdataset"

    def __init__(self, pattern: str, samples: Optional[int] = None, *, allow_pipe: bool = False):
        self.root = pattern
        self.urls = [str(Path(u).expanduser()) if _local(u) else u for u in wds.shardlists.expand_urls(pattern)]
        if not self.urls:
            raise UserError(f"webdataset shard pattern {pattern!r} names no shard")
        if not allow_pipe and any(u.lstrip().startswith("pipe:") for u in self.urls):
            raise UserError("data.root names a 'pipe:' shard, which runs a shell command; leoclr runs one only when "
                            "the command line asks for it: give the shards with --data, or add --allow-pipe")
        local = [_local(u) for u in self.urls]
        if samples is None:
            if any(p is None for p in local):
                raise UserError(f"webdataset shards {pattern!r} are not all local files: give their number of samples "
                                "as data.shard_samples")
            missing = next((p for p in local if not p.is_file()), None)
            if missing is not None:
                raise UserError(f"webdataset shard {missing} does not exist (from the pattern {pattern!r})")
            samples = sum(count_samples(p) for p in local)
        if samples == 0:
            raise UserError(f"webdataset shards {pattern!r} hold no samples")
        self.samples, self.draft = samples, None

    def __len__(self) -> int:
        return self.samples

    def set_draft(self, min_side: Optional[int]) -> None:
        self.draft = min_side

    def stream(self, urls: list[str]) -> Iterator[tuple[str, Any, int]]:
        """(key, image or BadImage, label) of every sample of ``urls``, in order."""
        for sample in wds.tarfile_samples([{"url": u} for u in urls]):
            yield sample["__key__"], self.decode(sample), int(sample["cls"]) if "cls" in sample else -1

    def decode(self, sample: dict[str, Any]) -> Any:
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        where = f"webdataset sample {sample['__key__']} of {sample.get('__url__', self.root)}"
        if ext is None:
            return BadImage(f"{where} has no image ({', '.join(IMAGE_EXTS)})")
        try:
            return open_rgb(io.BytesIO(sample[ext]), self.draft)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return BadImage(f"{where} could not be decoded ({e})")

    def head(self, n: int) -> list[tuple[Image.Image, int]]:
        """The first ``n`` readable images of the first shards, in order (a list: a map-style dataset)."""
        out = []
        for _, image, label in self.stream(self.urls):
            if not isinstance(image, BadImage):
                out.append((image, label))
            if len(out) == n:
                break
        return out


class ShardViews(torch.utils.data.IterableDataset):
    """The pretraining dataset over shards (see the module docstring): items ``(fn(image), label)``, or
    ``(fn(image), label, replaced)`` with ``on_bad_image="skip"``, as :class:`~.views.AugmentedDataset`."""

    def __init__(self, source: ShardSource, fn: Callable, *, seed: int, batch_size: int, rank: int, world: int,
                 shuffle: bool = True, on_bad_image: str = "error"):
        if len(source.urls) < world:
            raise UserError(f"webdataset: {len(source.urls)} shard(s) for {world} ranks; each rank needs a shard")
        self.source, self.seed, self.batch, self.rank, self.world = source, seed, batch_size, rank, world
        self.shuffle, self.skip_bad = shuffle, on_bad_image == "skip"
        self.steps = source.samples // (world * batch_size)
        # the views of one image, seeded by (seed, epoch, index), and the epoch in shared memory
        self.views = AugmentedDataset([], fn, seed=seed, on_bad_image=on_bad_image)

    def __len__(self) -> int:
        return self.steps * self.batch  # this rank's samples per epoch

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def shards(self, epoch: int, worker: int, workers: int) -> tuple[list[str], int, int]:
        """(this worker's shards, keep every n-th sample, from sample k) in ``epoch``."""
        urls = list(self.source.urls)
        if self.shuffle:
            order = torch.randperm(len(urls), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            urls = [urls[i] for i in order.tolist()]
        mine = urls[self.rank::self.world]
        if len(mine) >= workers:
            return mine[worker::workers], 1, 0
        return mine, workers, worker

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.views.epoch
        urls, every, first = self.shards(epoch, worker, workers)
        quota = len(range(worker, self.steps, workers)) * self.batch  # DataLoader takes batches round-robin
        rng = random.Random(sample_seed(self.seed, epoch, 1 + self.rank * 1000 + worker)) if self.shuffle else None
        stream = self._cycle(urls, every, first, rng)
        base = (self.rank * workers + worker) * 10**9
        replaced = 0
        n = 0
        for key, image, label in stream:
            if n == quota:
                break
            if isinstance(image, BadImage):
                if not self.skip_bad:
                    raise image
                self.views.warn(image)
                replaced = 1
                continue
            out = self.views.make(image, base + n)
            n += 1
            yield (out, label, replaced) if self.skip_bad else (out, label)
            replaced = 0

    def _cycle(self, urls: list[str], every: int, first: int,
               rng: Optional[random.Random]) -> Iterator[tuple[str, Any, int]]:
        """The samples of ``urls`` (every ``every``-th from ``first``), again and again; each pass
        shuffled in a buffer drawing from ``rng`` (None: in order)."""
        while True:
            found = False
            mine = (item for j, item in enumerate(self.source.stream(urls)) if j % every == first)
            if rng is not None:
                mine = wds.filters.shuffle(SHUFFLE_BUFFER, SHUFFLE_INITIAL, rng=rng)(mine)
            for item in mine:
                found = True
                yield item
            if not found:
                raise UserError(f"webdataset shards {', '.join(urls[:3])} hold no samples for this loader worker")


# --------------------------------------------------------------------------- writing


def brace_pattern(pattern: str, count: int) -> str:
    """``train-%06d.tar`` written ``count`` times -> ``train-{000000..000009}.tar``."""
    m = re.search(r"%0?(\d*)d", pattern)
    width = int(m.group(1) or 0)
    first, last = f"{0:0{width}d}", f"{count - 1:0{width}d}"
    return pattern[:m.start()] + (first if count == 1 else f"{{{first}..{last}}}") + pattern[m.end():]


def write_shards(source: Any, pattern: str, *, per_shard: int, seed: int = 0, force: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write every image of ``source`` (a map-style dataset of (PIL image, label)) into tar shards named
    by ``pattern`` (printf-style, ``train-%06d.tar``) with webdataset's ShardWriter, in an order
    shuffled with ``seed`` (shards are read sequentially: each should mix the classes). Image files
    keep their bytes (``source.files``), decoded images are stored as PNG. The shards are written to a
    temporary folder beside them and moved into place at the end."""
    if not re.search(r"%0?\d*d", pattern) or pattern.count("%") != 1:
        raise UserError(f"--out {pattern!r} must hold one shard number field such as %06d (train-%06d.tar)")
    out_dir = Path(pattern).expanduser().parent
    name = Path(pattern).name
    if (out_dir / (name % 0)).exists() and not force:
        raise UserError(f"{out_dir / (name % 0)} already exists; use --force to overwrite the shards")
    out_dir.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(source)).tolist()
    files = getattr(source, "files", None)
    split_dir = Path(source.root) / source.split if files is not None and source.name == "imagefolder" else None
    tmp = Path(tempfile.mkdtemp(prefix=".shards-", dir=out_dir))
    try:
        with wds.ShardWriter(str(tmp / name), maxcount=per_shard, verbose=0) as sink:
            for n, i in enumerate(order):
                sample: dict[str, Any] = {"__key__": f"{n:09d}", "cls": int(source.targets[i])}
                if split_dir is not None:
                    path = split_dir / files[i]
                    ext = path.suffix.lower().lstrip(".")
                    sample["jpg" if ext in ("jpeg", "jpg") else ext] = path.read_bytes()
                else:
                    buf = io.BytesIO()
                    source[i][0].save(buf, format="PNG")
                    sample["png"] = buf.getvalue()
                sink.write(sample)
                if (n + 1) % 10000 == 0:
                    log(f"{n + 1} of {len(order)} images written")
        written = sorted(tmp.iterdir())
        for f in written:
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"samples": len(order), "shards": len(written), "pattern": str(out_dir / brace_pattern(name, len(written)))}
