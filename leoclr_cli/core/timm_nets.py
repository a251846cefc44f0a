"""Backbones from timm (``model.arch: timm:NAME``, the optional extra ``leoclr[timm]``).

The backbone is ``timm.create_model(NAME, num_classes=0, **kwargs)``: the model without its classifier,
its output the pooled features (width ``head_hidden_size``, else ``num_features``). Its state dict is
timm's own, so a backbone file loads into that call exactly. The keyword arguments not given in
``model.timm_kwargs`` are chosen for the views (:func:`fit_kwargs`): a model that takes ``img_size`` (a
ViT, a Swin) is built for the view size, with a smaller patch where its own leaves fewer than
:data:`MIN_GRID` patches a side (a ViT-16 at 32 px gets patch 4), and ``dynamic_img_size`` where the
model takes it (LeOCLR's smaller local crops, evaluation at another size; at the built size it
computes exactly what the fixed-size model computes).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import nn

from ..config import TIMM_PREFIX, timm_kwargs_problem
from ..errors import UserError

#: a patch model keeps its own patch size when the view has at least this many patches a side
MIN_GRID = 7


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def timm_name(arch: str) -> str:
    return arch[len(TIMM_PREFIX):]


def require_timm(arch: str) -> Any:
    """The timm module; one sentence when it is not installed."""
    try:
        import timm  # optional: the extra leoclr[timm]
    except ImportError:
        raise UserError(f"model.arch {arch} needs the timm package, which is not installed "
                        "(pip install 'leoclr[timm]')") from None
    return timm


def timm_version() -> str:
    return str(require_timm(TIMM_PREFIX).__version__)


def fit_patch(patch: int, size: int) -> int:
    """``patch`` if a ``size`` px view has at least :data:`MIN_GRID` of them a side, else the largest
    smaller patch that divides ``size`` and leaves that many (``patch`` if none does)."""
    if size % patch == 0 and size // patch >= MIN_GRID:
        return patch
    return next((p for p in range(patch - 1, 0, -1) if size % p == 0 and size // p >= MIN_GRID), patch)


def fit_kwargs(arch: str, size: int, given: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """``timm.create_model``'s keyword arguments for ``size`` px views: ``given`` (``model.timm_kwargs``)
    completed with ``img_size`` (= ``size``), ``patch_size`` (:func:`fit_patch` of the model's own) and
    ``dynamic_img_size`` (true), each only where the model's constructor takes it. The model's
    structure is read from an instance on the meta device (no memory, no random draws; on the CPU, with
    the random state restored, for a model the meta device cannot make)."""
    given = dict(given or {})
    try:
        with torch.device("meta"):
            probe = build_timm(arch, given)
    except UserError:  # a model that cannot be made on the meta device: on the CPU, its draws undone
        with torch.random.fork_rng(devices=[]):
            probe = build_timm(arch, given)
    takes = inspect.signature(type(probe).__init__).parameters
    chosen: dict[str, Any] = {}
    if "img_size" in takes:
        chosen["img_size"] = size
        patch = getattr(getattr(probe, "patch_embed", None), "patch_size", None)
        if patch is not None and "patch_size" in takes:
            own = int(patch[0]) if isinstance(patch, (tuple, list)) else int(patch)
            chosen["patch_size"] = fit_patch(own, size)
    if "dynamic_img_size" in takes:
        chosen["dynamic_img_size"] = True
    return {**chosen, **given}


def patch_size(kwargs: Optional[dict[str, Any]]) -> Optional[int]:
    """The patch size ``kwargs`` build the model with (None: not a patch model, or its own default)."""
    patch = (kwargs or {}).get("patch_size")
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch is not None else None


def build_timm(arch: str, kwargs: Optional[dict[str, Any]] = None) -> nn.Module:
    """``timm.create_model(NAME, num_classes=0, **kwargs)`` with ``.feature_dim`` set; one sentence when
    timm refuses the arguments."""
    timm = require_timm(arch)
    kwargs = dict(kwargs or {})
    problem = timm_kwargs_problem(kwargs)
    if problem:
        raise UserError(f"model.timm_kwargs of {arch}: {problem}")
    try:
        model = timm.create_model(timm_name(arch), num_classes=0, **kwargs)
    except Exception as e:  # timm raises what its constructors raise: say which arch and arguments
        raise UserError(f"model.arch {arch} could not be built with timm_kwargs {kwargs}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    model.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return model
