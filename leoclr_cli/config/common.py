"""What every protocol shares: the base model (unknown keys are errors), the data-source and
architecture names, the normalisation constants and fields, range validators and the ``threads`` field."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SourceName = Literal["builtin", "builtin-textures", "imagefolder", "cifar10", "cifar100", "stl10", "cars", "pets",
                     "birdsnap"]
# pretraining also streams WebDataset tar shards (data/shards.py)
PretrainSourceName = Literal[get_args(SourceName) + ("webdataset",)]  # type: ignore[misc]
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


def threads_field() -> Any:
    """The ``threads`` field of every protocol that runs a long loop (see core/threads.py)."""
    return Field(None, ge=1, description="CPU threads of the training process (--threads); default: the cores "
                                         "this process may use, divided among torchrun ranks and less one per "
                                         "loader worker; OMP_NUM_THREADS, when set, is kept")


class Strict(BaseModel):
    """Base: unknown keys are errors (a typo in a protocol must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
