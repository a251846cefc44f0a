"""What an evaluation starts from: the backbone file its target names (a pretraining run directory, a
backbone file, or ``random:ARCH``), the data source ``--data`` shows, and the protocol defaults the
backbone's pretraining implies (:func:`eval_defaults`, the one place they are derived)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import SMALL_IMAGES, TIMM_PREFIX, eval_transform_for, load_protocol, parse_set
from ..core import checkpoint as ckpt
from ..core.nets import RANDOM_PREFIX, parse_random
from ..core.rundir import RunDir
from ..data import default_eval_splits, open_data
from ..data.sources import infer_source
from ..errors import UserError


def source_for(kind: str, protocol: Optional[Path], sets: Optional[list[str]], source: Optional[str],
               data: Optional[Path | str], say: Callable[[str], None]) -> Optional[str]:
    """``--source``; for ``--data DIR`` without it, the source DIR's layout shows (``say`` tells which),
    checked against the one an explicit ``--protocol`` or ``--set data.source`` names. Never the built-in data.
    Unlabeled images (``folder``) are refused in one sentence by a command that needs labels."""
    if data is None or source is not None:
        return refuse_unlabeled(kind, source, data)
    declared = parse_set(sets or []).get("data.source")
    if declared is None and protocol is not None:
        declared = load_protocol(kind, protocol, {"data.root": os.path.expanduser(str(data))}).data.source
    name, why = infer_source(data, declared)
    refuse_unlabeled(kind, name, data)
    say(f"--data {data}: {why}: reading it as --source {name}")
    return name


#: the commands that read images without labels: pretraining (and views), embed
UNLABELED_OK = ("pretrain", "embed")


def refuse_unlabeled(kind: str, source: Optional[str], data: Optional[Path | str]) -> Optional[str]:
    """``source``, unless it is ``folder`` (images without labels) and ``kind`` needs labels: one sentence."""
    if source == "folder" and kind not in UNLABELED_OK:
        raise UserError(f"--data {data} holds images without labels (source folder); {kind} needs labelled "
                        "images: give an ImageFolder, ROOT/train/<class>/<image> and ROOT/val/<class>/<image> "
                        "(if the sub-folders of this folder are the classes, move them under ROOT/train/)")
    return source


def switch_source(defaults: dict[str, Any], source: Optional[str]) -> None:
    """Evaluation defaults derived for one source, moved to ``source``'s own split names (another dataset)."""
    if source is not None and source != defaults.get("data.source"):
        defaults.update(zip(("data.train_split", "data.test_split"), default_eval_splits(source)))
        defaults.update({"data.source": source, "data.builtin_train": None, "data.builtin_test": None})


def evaluation_inputs(kind: str, target: Path, protocol: Optional[Path], sets: Optional[list[str]],
                      source: Optional[str], data: Optional[Path], seed: Optional[int], out_dir: Optional[Path],
                      say: Callable[[str], None]) -> tuple[Optional[str], Path, Path, dict[str, Any]]:
    """(source, backbone file, default output parent, ``kind``'s defaults) of an evaluation command: the
    source from ``--source`` or ``--data``'s layout, the backbone and its defaults, moved to that source."""
    source = source_for(kind, protocol, sets, source, data, say)
    backbone, parent, defaults = evaluation_defaults(kind, target, seed=seed, out_dir=out_dir, source=source,
                                                     data=data)
    switch_source(defaults, source)
    return source, backbone, parent, defaults


def evaluation_defaults(kind: str, target: Path, **kw: Any) -> tuple[Path, Path, dict[str, Any]]:
    """:func:`backbone_and_defaults` for the evaluation ``kind`` (linear-eval, knn, finetune): the defaults
    its protocol takes (``kw``: as :func:`backbone_and_defaults`)."""
    backbone, parent, defaults = backbone_and_defaults(target, **kw)
    if kind != "linear-eval":
        defaults.pop("feature_norm", None)  # the linear probe's own field
    return backbone, parent, defaults


def backbone_and_defaults(target: Path, *, seed: Optional[int] = None, out_dir: Optional[Path] = None,
                          source: Optional[str] = None,
                          data: Optional[Path] = None) -> tuple[Path, Path, dict[str, Any]]:
    """(backbone file, default output parent, eval defaults derived from the pretraining protocol).
    ``random:ARCH``: see :func:`random_init`."""
    if str(target).startswith(RANDOM_PREFIX):
        return random_init(str(target), seed or 0, out_dir, source, data)
    target = Path(target).expanduser()
    backbone = RunDir.backbone_of(target)
    meta = ckpt.read_metadata(backbone, ckpt.KIND_BACKBONE)
    defaults = eval_defaults(pretraining_of(target, backbone, meta))
    parent = target if target.is_dir() else target.parent
    return backbone, parent, defaults


def eval_defaults(pre: dict[str, Any]) -> dict[str, Any]:
    """Evaluation defaults (dotted) derived from a pretraining protocol (as a plain mapping): its data
    source with that source's labelled splits, and the test transform of its views' size
    (:func:`~..config.eval_transform_for`) with their normalisation; small views are probed on BN-standardised
    features."""
    data, aug = pre.get("data", {}), pre.get("augment", {})
    defaults: dict[str, Any] = {}
    if data.get("source"):
        train, test = default_eval_splits(data["source"])
        defaults.update({"data.source": data["source"], "data.root": data.get("root"), "data.train_split": train,
                         "data.test_split": test, "data.verify_checksums": data.get("verify_checksums", True),
                         "data.num_workers": data.get("num_workers", 0)})
        if data["source"].startswith("builtin"):
            defaults.update({"data.builtin_train": data.get("builtin_train"),
                             "data.builtin_test": data.get("builtin_test")})
    size = aug.get("size")
    if size:
        defaults.update({f"transform.{k}": v for k, v in eval_transform_for(size).items()})
        defaults.update(backbone_norm(aug))
        if size <= SMALL_IMAGES:
            defaults["feature_norm"] = "bn"  # small data: the probe on BN-standardised features (lr from it)
    return defaults


def backbone_norm(aug: dict[str, Any]) -> dict[str, Any]:
    """The test transform's normalisation (dotted) that the pretraining augmentation ``aug`` used: its
    mean and std when it measured (auto) or was given them, else its named constants."""
    if aug.get("mean") and aug.get("std"):
        return {"transform.normalize": "custom", "transform.mean": aug["mean"], "transform.std": aug["std"]}
    return {"transform.normalize": aug.get("normalize", "imagenet")}


def own_stats(defaults: dict[str, Any]) -> dict[str, Any]:
    """The backbone's own mean and std among eval ``defaults`` (none when it used named constants):
    transfer and detection, which keep their own defaults otherwise, take these."""
    if defaults.get("transform.normalize") != "custom":
        return {}
    return {k: defaults[k] for k in ("transform.normalize", "transform.mean", "transform.std")}


def pixel_stats(defaults: dict[str, Any]) -> dict[str, Any]:
    """:func:`own_stats` as detection's ``pixel_mean`` / ``pixel_std`` (Detectron2's 0..255 scale)."""
    own = own_stats(defaults)
    return {f"pixel_{k}": [255 * v for v in own[f"transform.{k}"]] for k in ("mean", "std")} if own else {}


#: what a backbone must share with the run directory it is evaluated from: (name, value in the header, in the run)
_RUN_FIELDS = (("model.arch", lambda meta, pre: meta.get("arch"), lambda run: run["model"]["arch"]),
               ("model.cifar_stem", lambda meta, pre: json.loads(meta.get("cifar_stem", "null")),
                lambda run: run["model"]["cifar_stem"]),
               ("augment.size", lambda meta, pre: pre.get("augment", {}).get("size"),
                lambda run: run["augment"]["size"]))


def pretraining_of(target: Path, backbone: Path, meta: dict[str, str]) -> dict[str, Any]:
    """The pretraining protocol evaluation defaults come from: RUN/protocol.yaml when a run directory
    is given (its backbone must then agree with it on arch, stem and size), else the backbone's header."""
    header = json.loads(meta.get("protocol", "{}") or "{}")
    saved = RunDir(target)
    if not target.is_dir() or not saved.protocol_file.is_file():
        return header
    run = saved.read_protocol("pretrain").model_dump(mode="json")
    for field, in_file, in_run in _RUN_FIELDS:
        theirs, ours = in_file(meta, header), in_run(run)
        if theirs is not None and theirs != ours:
            raise UserError(f"{backbone} does not belong to the run {target}: its {field} is {theirs!r}, "
                            f"the run's {RunDir.PROTOCOL} says {ours!r}")
    return run


def small_side(source: str, data: Optional[Path]) -> Optional[int]:
    """The shorter side of the first train image of ``source`` at ``data`` when it is small
    (at most :data:`~..config.SMALL_IMAGES` px)."""
    if data is None:
        return None
    image = open_data(source, str(data), default_eval_splits(source)[0])[0][0]
    return min(image.size) if min(image.size) <= SMALL_IMAGES else None


def random_init(spec: str, seed: int, out_dir: Optional[Path], source: Optional[str],
                data: Optional[Path]) -> tuple[Path, Path, dict[str, Any]]:
    """The seeded random-init backbone ``random:ARCH`` as RUN/backbone.safetensors of a run directory
    ``random-ARCH-seedN`` (``random-timm-NAME-SIZEpx-seedN`` for ``random:timm:NAME``, built for that view
    size) in runs/, or beside --out, written once and reused; the evaluation defaults come
    from the data (default builtin): 32 px for builtin, CIFAR and a CIFAR-stem arch, 96 px for STL-10, the
    images' own size when they are small (at most 96 px), else 224 px."""
    arch, cifar_stem = parse_random(spec)
    src = source or "builtin"
    size = {"builtin": 32, "builtin-photos": 32, "builtin-textures": 32, "cifar10": 32, "cifar100": 32, "stl10": 96}.get(src) or (
        32 if cifar_stem else small_side(src, data) or 224)
    # a timm model is built for the view size (its patch may depend on it): the size is part of the name
    name = f"random-{spec[len(RANDOM_PREFIX):]}" + (f"-{size}px" if arch.startswith(TIMM_PREFIX) else "")
    parent = (out_dir.expanduser().parent if out_dir else Path("runs")) / f"{name.replace(':', '-')}-seed{seed}"
    backbone = ckpt.random_backbone_file(spec, seed, RunDir(parent).backbone, size)
    normalize = {"builtin": "builtin", "builtin-photos": "builtin", "builtin-textures": "builtin", "cifar10": "cifar",
                 "cifar100": "cifar"}.get(src, "imagenet")
    pseudo_pretraining = {"data": {"source": src}, "augment": {"size": size, "normalize": normalize}}
    return backbone, parent, eval_defaults(pseudo_pretraining)
