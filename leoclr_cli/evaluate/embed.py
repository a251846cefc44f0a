"""``leoclr embed``: one row per image of a dataset, the backbone's pooled feature (and the projection head's
output, ``head``), written as one file for retrieval, clustering or a downstream model.

* ``.safetensors``: tensors ``features`` (N, D) float32, ``labels`` (N,) int64 (-1: unlabeled), and with
  ``head`` ``head`` (N, dim); the metadata holds ``paths`` (a JSON list, row order: each image's path relative
  to ``root``, or ``SPLIT/INDEX`` for a source of arrays such as CIFAR), ``root``, ``source``, ``split``,
  ``backbone`` and the transform. One file, written atomically: the paths cannot disagree with the rows.
* ``.parquet`` (needs pyarrow): columns ``path``, ``label``, ``feature`` (and ``head``) as fixed-size lists of
  float32, the same metadata in the schema.

The images go through the test transform the backbone's pretraining implies (evaluate/inputs.py), the
features through the shared extraction (evaluate/features.py). A signal stops it within one batch (exit 75)
and nothing is written; an image that cannot be decoded stops it naming the file, or with ``on_bad_image:
skip`` is left out (counted).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from rich.console import Console

from ..config import EvalTransformConfig
from ..core import checkpoint as ckpt
from ..core.atomic import atomic_write_bytes
from ..core.engine import resolve_device
from ..core.nets import projection_head
from ..core.rundir import RunDir, command
from ..data import default_eval_splits, open_data
from ..data.sources import infer_source
from ..errors import BadImage, UserError
from .features import extract, loader_for
from .inputs import backbone_and_defaults, refuse_unlabeled

KIND_EMBEDDINGS = "embeddings"
FORMATS = (".safetensors", ".parquet")


class Indexed(torch.utils.data.Dataset):
    """``source[i]`` -> (image, i); with ``skip``, an image that cannot be decoded -> (a black pixel, -1 - i),
    so the row is recognised and dropped after extraction (one row per readable image, none replaced)."""

    def __init__(self, source: Any, skip: bool):
        self.source, self.skip = source, skip

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        try:
            return self.source[i][0], i
        except BadImage as e:
            if not self.skip:
                raise
            print(f"warning: {e}; left out (on_bad_image: skip)", file=sys.stderr)
            return Image.new("RGB", (1, 1)), -1 - i


def check_out(out: Path, force: bool) -> None:
    """One sentence for an output file leoclr cannot write: another ending, Parquet without pyarrow, an
    existing file without ``force``."""
    if out.suffix not in FORMATS:
        raise UserError(f"--out {out} must end in .safetensors or .parquet (the format is chosen by the ending)")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError(f"--out {out} asks for Parquet, which needs pyarrow (pip install pyarrow, or "
                            "leoclr[parquet]); or write .safetensors") from None
    if out.exists() and not force:
        raise UserError(f"{out} already exists; use --force to overwrite it")


def run_head(target: Path, features: torch.Tensor) -> torch.Tensor:
    """The projection head of the pretraining run ``target`` (its newest training state) on ``features``."""
    run = RunDir(target)
    state = ckpt.latest_state(target) if target.is_dir() else None
    if state is None or not run.protocol_file.is_file():
        raise UserError(f"--head needs a pretraining run directory with its {RunDir.CHECKPOINTS}/ (the projection "
                        f"head is not in a backbone file); {target} has none")
    model = run.read_protocol("pretrain").model
    tensors, _ = ckpt.load_tensors(state)
    prefix = "model.encoder_q.head."
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    head = projection_head(features.shape[1], model.dim, model.mlp)
    ckpt.load_fitting(head, weights, state, "projection head", prefix)
    with torch.no_grad():
        return head.eval()(features)


@command
def run_embed(target: Path | str, data: Path | str, out: Path | str, *, source: Optional[str] = None,
              split: Optional[str] = None, head: bool = False, batch_size: int = 256, num_workers: int = 0,
              device: str = "auto", on_bad_image: str = "error", seed: int = 0, force: bool = False,
              quiet: bool = False, console: Optional[Console] = None) -> dict[str, Any]:
    """Embed every image of ``data`` (its layout shows the source unless ``source`` names it) with the backbone
    of ``target`` (a run directory, a backbone file or ``random:ARCH``) into ``out``; returns what was written."""
    out, data = Path(out).expanduser(), Path(data).expanduser()
    check_out(out, force)
    source = refuse_unlabeled("embed", source or infer_source(data)[0], data)
    split = split or default_eval_splits(source)[0]
    backbone, _, defaults = backbone_and_defaults(Path(str(target)), seed=seed, out_dir=out, source=source, data=data)
    transform = EvalTransformConfig(**{k.split(".", 1)[1]: v for k, v in defaults.items()
                                       if k.startswith("transform.") and v is not None})
    images = open_data(source, str(data), split)
    model, meta = ckpt.load_backbone(backbone)
    dev = resolve_device(device)
    loader = loader_for(Indexed(images, on_bad_image == "skip"), transform, batch_size, num_workers, dev)
    features, index = extract(model.to(dev), loader, dev, desc="embed", console=console, quiet=quiet)
    keep = index >= 0
    features, index = features[keep], index[keep]
    rows = {"features": features, "labels": torch.as_tensor(images.targets, dtype=torch.int64)[index]}
    if head:
        rows["head"] = run_head(Path(target), features)
    files = getattr(images, "files", None)
    paths = [files[i] if files else f"{split}/{i}" for i in index.tolist()]
    info = {"kind": KIND_EMBEDDINGS, "source": source, "root": str(data), "split": split, "backbone": str(backbone),
            "arch": meta.get("arch", ""), "transform": transform.model_dump_json(), "paths": json.dumps(paths)}
    write_rows(out, rows, info)
    return {"out": str(out), "rows": len(paths), "dim": features.shape[1], "left_out": int((~keep).sum()),
            "head": head, "source": source}


def write_rows(out: Path, rows: dict[str, torch.Tensor], info: dict[str, str]) -> None:
    """``rows`` and ``info`` to ``out`` atomically, as safetensors or Parquet by its ending."""
    if out.suffix == ".safetensors":
        ckpt.save_tensors(out, rows, info)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = json.loads(info["paths"])
    columns = {"path": pa.array(paths, pa.string()), "label": pa.array(rows["labels"].numpy())}
    for name, column in (("feature", "features"), ("head", "head")):
        if column in rows:
            values = rows[column].float().numpy()
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    meta = {k: v for k, v in info.items() if k != "paths"}
    table = pa.table(columns).replace_schema_metadata(meta)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(out, buffer.getvalue())
