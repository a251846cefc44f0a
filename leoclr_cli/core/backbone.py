"""Backbones: ``backbone.safetensors`` written and read (torchvision key names, no ``fc``, or a timm model's
own keys; the header names arch, stem, method, epoch and the pretraining protocol, and for a timm model its
name, ``timm.create_model`` keyword arguments and the timm version), and the seeded random-init backbones
of ``random:ARCH``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import UserError
from .atomic import atomic_write_bytes
from .nets import build_backbone, parse_random
from .tensorfile import KIND_BACKBONE, load_tensors, read_metadata, require_weights, save_tensors
from .timm_nets import fit_kwargs, is_timm, timm_name, timm_version


def save_backbone(path: Path, backbone: torch.nn.Module, *, arch: str, cifar_stem: bool, method: str,
                  epoch: int, protocol_json: str, extra_meta: Optional[dict[str, str]] = None,
                  timm_kwargs: Optional[dict[str, Any]] = None) -> None:
    """A torchvision ResNet's tensors without ``fc``, or a timm model's state dict as it is (its header then
    also holds ``timm_model``, ``timm_kwargs`` as JSON and ``timm_version``)."""
    timm = is_timm(arch)
    state = {k: v for k, v in backbone.state_dict().items() if timm or not k.startswith("fc.")}
    meta = {"timm_model": timm_name(arch), "timm_kwargs": json.dumps(timm_kwargs or {}, sort_keys=True),
            "timm_version": timm_version()} if timm else {}
    save_tensors(path, state, {
        "kind": KIND_BACKBONE, "arch": arch, "cifar_stem": json.dumps(cifar_stem), "method": method,
        "epoch": str(epoch), "protocol": protocol_json, **meta, **(extra_meta or {}),
    })


def header_timm_kwargs(meta: dict[str, str]) -> dict[str, Any]:
    """The ``timm.create_model`` keyword arguments a backbone header records (none for a ResNet)."""
    return dict(json.loads(meta.get("timm_kwargs") or "{}"))


def load_backbone(path: Path, expect_arch: Optional[str] = None) -> tuple[torch.nn.Module, dict[str, str]]:
    """Build the torchvision ResNet (or the timm model, with its recorded keyword arguments) named in the
    header and load the weights strictly (a ResNet's fc excepted)."""

    tensors, meta = load_tensors(path, KIND_BACKBONE)
    arch = meta.get("arch", "")
    if expect_arch is not None and arch != expect_arch:
        raise UserError(f"checkpoint {path} is a {arch} backbone, but {expect_arch} is needed here")
    try:
        model = build_backbone(arch, cifar_stem=json.loads(meta.get("cifar_stem", "false")),
                               timm_kwargs=header_timm_kwargs(meta))
    except ValueError:
        raise UserError(f"checkpoint {path} names an unknown arch '{arch}'") from None
    load_fitting(model, tensors, path, arch)
    return model, meta


def load_fitting(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, arch: str,
                 prefix: str = "") -> None:
    """Load ``tensors`` into ``model`` strictly; the first missing, unexpected or misshapen key, or a
    tensor of a wrong dtype or with NaN/inf values (shown with ``prefix``, its name in the file), is one
    sentence."""
    expected = model.state_dict()
    for key, val in expected.items():
        if key not in tensors:
            raise UserError(f"{path} does not match a {arch}: missing key '{prefix}{key}'")
        if tensors[key].shape != val.shape:
            raise UserError(f"{path} does not match a {arch}: '{prefix}{key}' has shape {tuple(tensors[key].shape)}, "
                            f"a {arch} needs {tuple(val.shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise UserError(f"{path} does not match a {arch}: unexpected key '{prefix}{extra[0]}'")
    require_weights(tensors, expected, path, prefix)
    model.load_state_dict(tensors, strict=True)


def random_backbone(arch: str, cifar_stem: bool, seed: int,
                    timm_kwargs: Optional[dict[str, Any]] = None) -> torch.nn.Module:
    """The random-init backbone of ``seed``: torch.manual_seed(seed), then the torchvision (or timm, built with
    ``timm_kwargs``) init (the global RNG is left as it was). A pretraining run of that seed starts from these
    weights (its query backbone is the first thing it builds after seeding)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(arch, cifar_stem=cifar_stem, timm_kwargs=timm_kwargs)


def random_backbone_file(spec: str, seed: int, path: Path, size: int = 224,
                         timm_kwargs: Optional[dict[str, Any]] = None) -> Path:
    """Write the random-init backbone ``spec`` of ``seed`` (:func:`random_backbone`; a timm model built with
    ``timm_kwargs`` completed for ``size`` px views, :func:`~.timm_nets.fit_kwargs`) to ``path`` as a
    backbone.safetensors with method ``random-init``; an existing file of the same spec, seed (and timm
    arguments) is reused as it is."""
    arch, cifar_stem = parse_random(spec)
    kwargs = fit_kwargs(arch, size, timm_kwargs) if is_timm(arch) else None
    path = Path(path)
    if path.is_file():
        meta = read_metadata(path, KIND_BACKBONE)
        if (meta.get("method"), meta.get("arch"), meta.get("cifar_stem"), meta.get("seed"),
                header_timm_kwargs(meta)) != ("random-init", arch, json.dumps(cifar_stem), str(seed), kwargs or {}):
            raise UserError(f"{path} exists and is not the {spec} backbone of seed {seed}; move it or choose "
                            "another --out")
        return path
    model = random_backbone(arch, cifar_stem, seed, kwargs)
    model_fields: dict[str, Any] = {"arch": arch, "cifar_stem": cifar_stem}
    if kwargs:
        model_fields["timm_kwargs"] = kwargs
    save_backbone(path, model, arch=arch, cifar_stem=cifar_stem, method="random-init", epoch=0,
                  protocol_json=json.dumps({"kind": "random-init", "seed": seed, "model": model_fields}),
                  extra_meta={"seed": str(seed)}, timm_kwargs=kwargs)
    return path



#: ``leoclr export --to``: the frameworks whose stock ResNets take a backbone's state dict as it is (timm's
#: ResNet key names are torchvision's, ``fc`` the classifier of both)
STATE_DICT_TARGETS = {"torchvision": "torchvision.models.{arch}()", "timm": "timm.create_model('{arch}')"}


def export_state_dict(path: Path, out: Path, to: str) -> dict[str, str]:
    """Write the backbone ``path`` as a PyTorch state dict ``out`` (.pth, ``torch.save``, atomically) that
    ``to``'s stock ResNet of the same arch loads with ``load_state_dict(sd, strict=False)``, only ``fc.*``
    missing (a timm backbone, ``--to timm`` only: its ``timm.create_model(NAME, num_classes=0, **kwargs)``, nothing
    missing). Returns the arch, how to build the model and what it leaves missing. One sentence for a CIFAR-stem
    backbone (a stock ResNet has the 7x7 stem), a timm backbone to another framework, or another file ending."""
    out = Path(out)
    if out.suffix not in (".pth", ".pt"):
        raise UserError(f"--out {out} must end in .pth (a PyTorch state dict, what {to} loads)")
    arch = read_metadata(path, KIND_BACKBONE).get("arch", "")
    if is_timm(arch) and to != "timm":
        raise UserError(f"checkpoint {path} is a {arch} backbone, which {to} does not build; export it --to timm")
    model, meta = load_backbone(path)
    if json.loads(meta.get("cifar_stem", "false")):
        raise UserError(f"checkpoint {path} has the CIFAR stem (3x3 conv1, no max-pool), which a stock {to} {arch} "
                        "does not have; export a backbone pretrained with model.cifar_stem false")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if is_timm(arch) or not k.startswith("fc.")}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    if is_timm(arch):  # timm's own model without its classifier: every key loads
        kwargs = "".join(f", {k}={v!r}" for k, v in header_timm_kwargs(meta).items())
        return {"arch": arch, "tensors": str(len(state)), "missing": "nothing",
                "build": f"timm.create_model('{timm_name(arch)}', num_classes=0{kwargs})"}
    return {"arch": arch, "tensors": str(len(state)), "missing": "only fc.*",
            "build": STATE_DICT_TARGETS[to].format(arch=arch)}
