"""What every protocol shares: the base model (unknown keys are errors), the data-source and
architecture names, the normalisation constants and fields, range validators and the ``threads`` field."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

SourceName = Literal["builtin", "builtin-photos", "builtin-textures", "imagefolder", "cifar10", "cifar100", "stl10", "cars", "pets",
                     "birdsnap"]
# pretraining also streams WebDataset tar shards (data/shards.py) and reads unlabeled images: every image file
# under a folder at any depth (folder; the labelled commands refuse it)
PretrainSourceName = Literal[get_args(SourceName) + ("webdataset", "folder")]  # type: ignore[misc]
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2")
#: ``model.arch: timm:NAME`` names any model of the timm package (the optional extra ``leoclr[timm]``)
TIMM_PREFIX = "timm:"


def check_arch(arch: str) -> str:
    """``arch`` if it names a torchvision ResNet of :data:`RESNETS` or a model timm has (``timm:NAME``);
    otherwise a ValueError whose message is one sentence (also when timm is not installed)."""
    if arch in RESNETS:
        return arch
    if arch.startswith(TIMM_PREFIX):
        name = arch[len(TIMM_PREFIX):]
        try:
            import timm  # optional: only a timm arch needs it
        except ImportError:
            raise ValueError(f"'{arch}' needs the timm package, which is not installed "
                             "(pip install 'leoclr[timm]')") from None
        if not timm.is_model(name):
            raise ValueError(f"timm {timm.__version__} has no model '{name}' (timm.list_models('*vit*') lists them)")
        return arch
    raise ValueError(f"unknown arch '{arch}'; choose one of {', '.join(RESNETS)}, or timm:NAME for a timm model "
                     "(e.g. timm:vit_small_patch16_224)")


#: ``timm.create_model``'s own arguments that load weights or files (``pretrained_cfg_overlay`` can name a
#: pickle) or that leoclr sets itself: never taken from a protocol or a file's header
TIMM_RESERVED = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "checkpoint_path",
                 "cache_dir", "num_classes")


def timm_kwargs_problem(kwargs: Any) -> Optional[str]:
    """What is wrong with ``model.timm_kwargs`` (None: nothing): a mapping of argument names to numbers,
    strings, booleans, null or lists of them, none of :data:`TIMM_RESERVED`."""
    if not isinstance(kwargs, dict):
        return "must be a mapping of timm.create_model's keyword arguments"
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            return f"{key!r} is not an argument name"
        if key in TIMM_RESERVED or key.startswith("pretrained"):
            return f"'{key}' is not taken (leoclr builds the model without weights and without its classifier)"
        items = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in items):
            return f"'{key}' must be a number, a string, a boolean, null or a list of them"
    return None


def default_local_size(size: int, multiple: int = 4) -> int:
    """The side of LeOCLR's local crops when ``augment.local_size`` is not given: 3/7 of the views' ``size``
    (DINO's 96 px at 224), rounded to the nearest multiple of ``multiple`` (a ViT's patch size), at least one."""
    return max(multiple, round(size * 3 / 7 / multiple) * multiple)

# Per-dataset normalisation constants (mean, std).
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "builtin": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
Triple = tuple[float, float, float]
#: a normalisation: a name of NORMALIZATION, or (mean, std) per RGB channel on the 0..1 scale
Norm = Union[str, tuple[Triple, Triple]]


def norm_stats(norm: Norm) -> tuple[Triple, Triple]:
    """(mean, std) of a normalisation given by name or as the pair itself."""
    return NORMALIZATION[norm] if isinstance(norm, str) else norm


def stat_field(which: str) -> Any:
    return Field(None, description=f"per-channel (R, G, B) {which} on the 0..1 scale, given with "
                                   f"{'std' if which == 'mean' else 'mean'} (normalize custom or auto)")


class Normalized(BaseModel):
    """The ``normalize`` / ``mean`` / ``std`` fields shared by the augmentation and the test transforms.

    ``normalize`` names a set of constants (``imagenet``, ``cifar``, ``builtin``) or is ``custom`` with
    ``mean`` and ``std`` given (giving them alone implies ``custom``); pretraining also takes ``auto``,
    which measures them on the train split before the first step and writes them into ``mean``/``std``.
    Each model declares the three fields itself (:func:`stat_field`), so they stay together in its YAML."""

    @model_validator(mode="before")
    @classmethod
    def _custom_when_given(cls, data: Any) -> Any:
        if isinstance(data, dict) and "normalize" not in data and (data.get("mean") or data.get("std")):
            data = {**data, "normalize": "custom"}
        return data

    @model_validator(mode="after")
    def _stats_fit(self) -> Any:
        given = self.mean is not None, self.std is not None
        if any(given) and not all(given):
            raise ValueError(f"{'std' if given[0] else 'mean'} is missing: mean and std are given together")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"every std must be > 0 (got {list(self.std)})")
        if self.normalize == "custom" and self.mean is None:
            raise ValueError("normalize 'custom' needs mean and std")
        if self.mean is not None and self.normalize not in ("custom", "auto"):
            raise ValueError(f"mean and std are given, but normalize is '{self.normalize}'; set normalize: custom")
        return self

    @property
    def norm(self) -> Norm:
        """What the transforms take: the constants' name, or (mean, std)."""
        if self.mean is not None and self.std is not None:
            return tuple(self.mean), tuple(self.std)  # type: ignore[return-value]
        if self.normalize == "auto":
            raise RuntimeError("augment.normalize 'auto' is measured by pretraining before it is used")
        return self.normalize  # type: ignore[attr-defined,no-any-return]

    def norm_fields(self) -> dict[str, Any]:
        """The test transforms' ``normalize``/``mean``/``std`` that reproduce this normalisation."""
        if self.mean is not None:
            return {"normalize": "custom", "mean": list(self.mean), "std": list(self.std or ())}
        return {"normalize": self.normalize}  # type: ignore[attr-defined]


def require_root(cfg: Any) -> Any:
    if not cfg.source.startswith("builtin") and not cfg.root:
        raise ValueError(f"data source '{cfg.source}' needs a path: give --data PATH or data.root")
    return cfg


def ordered_pair(v: tuple[float, float]) -> tuple[float, float]:
    if not (0 < v[0] <= v[1]):
        raise ValueError("must be two numbers with 0 < low <= high")
    return v


def area_fraction(v: tuple[float, float]) -> tuple[float, float]:
    if v[1] > 1:
        raise ValueError("crop scale is a fraction of the image area, at most 1")
    return v


# (low, high) with 0 < low <= high; an area range also has high <= 1
PositiveRange = Annotated[tuple[float, float], AfterValidator(ordered_pair)]
AreaRange = Annotated[tuple[float, float], AfterValidator(ordered_pair), AfterValidator(area_fraction)]


#: a seed: what NumPy's and torch's generators take (0 .. 2**32 - 1)
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: the largest integer any other field takes: counts, sizes and steps beyond it index past what a tensor (or
#: the machine) holds
MAX_INT = 2**31 - 1
#: the largest magnitude of a float field: every value of the paper is far below it, and beyond it a value
#: multiplied into the weights (a learning rate, a weight decay) overflows float32 within a few steps
MAX_FLOAT = 1e9


def memory_bytes() -> int:
    """This machine's physical memory (a large default where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


#: what the built-in dataset keeps per image whatever its size: a label and a place in the sample order
BUILTIN_BYTES_PER_IMAGE = 16


def fits_memory(n: int) -> int:
    """A built-in split's image count, at most what a quarter of this machine's memory holds."""
    need, have = n * BUILTIN_BYTES_PER_IMAGE, memory_bytes()
    if need > have // 4:
        raise ValueError(f"{n} images need {need / 2**30:.1f} GiB for their labels and sample order "
                         f"({BUILTIN_BYTES_PER_IMAGE} bytes each), more than a quarter of this machine's "
                         f"{have / 2**30:.0f} GiB of memory; at most {have // 4 // BUILTIN_BYTES_PER_IMAGE}")
    return n


#: a built-in split's number of images (generated on the fly: each costs only its label and its place)
BuiltinCount = Annotated[int, Field(ge=16), AfterValidator(fits_memory)]


def threads_field() -> Any:
    """The ``threads`` field of every protocol that runs a long loop (see core/threads.py)."""
    return Field(None, ge=1, description="CPU threads of the training process (--threads); default: the cores "
                                         "this process may use, divided among torchrun ranks and less one per "
                                         "loader worker; OMP_NUM_THREADS, when set, is kept")


#: the ``threads`` field's type (at most 4 per core of the machine that runs it: core/threads.py checks it then,
#: so a protocol written on a larger machine still reads)
Threads = Optional[int]


def _bounded(value: Any) -> None:
    if isinstance(value, (list, tuple)):
        for item in value:
            _bounded(item)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ValueError(f"must be at most {MAX_INT} in magnitude (counts, sizes and steps beyond it do not fit "
                         "in memory or in a tensor index)")
    elif isinstance(value, float) and abs(value) > MAX_FLOAT:
        raise ValueError(f"must be at most {MAX_FLOAT:g} in magnitude (a larger value overflows float32 "
                         "arithmetic within a few steps)")


class Strict(BaseModel):
    """Base: unknown keys are errors (a typo in a protocol must not be silently ignored); no float is NaN or
    infinite, and every number is bounded (:data:`MAX_INT`, :data:`MAX_FLOAT`; seeds :data:`Seed`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _numbers_bounded(cls, value: Any, info: ValidationInfo) -> Any:
        if not (info.field_name or "").endswith("seed"):
            _bounded(value)
        return value


class TrackingConfig(Strict):
    """Experiment tracking besides ``metrics.jsonl`` (rank 0 only): per-step loss and lr, per-epoch
    records (samples/s, kNN monitor, ...), sweep cells, the final result, the protocol as parameters, a
    grid of the views (pretraining) and, when asked, the final weights as artifacts. The packages are the
    optional extra ``leoclr[tracking]``."""

    tensorboard: bool = Field(False, description="write TensorBoard event files to RUN/tensorboard/")
    mlflow: Optional[str | bool] = Field(
        None, description="an MLflow tracking URI, or true for a local file store in RUN/mlruns/")
    mlflow_experiment: str = Field("leoclr", description="the MLflow experiment the run is logged under")
    wandb: Optional[Literal["offline", "online"]] = Field(
        None, description="Weights & Biases: offline (files in RUN/wandb/, `wandb sync` uploads them) or online")
    wandb_project: str = Field("leoclr", description="the W&B project")
    artifacts: bool = Field(False, description="also log the final backbone (pretraining) and the linear head "
                            "(linear-eval) as artifacts: MLflow and W&B (TensorBoard has no artifacts)")

    @field_validator("mlflow")
    @classmethod
    def _mlflow(cls, v: Optional[str | bool]) -> Optional[str | bool]:
        if v is False or v == "":
            return None
        return v
