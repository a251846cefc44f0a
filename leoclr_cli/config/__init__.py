"""Protocols: one Pydantic model per command, validated from a YAML file plus CLI overrides.

Every value of the paper's protocol, and every choice we made where the paper is silent, is a field
with its default documented. The models live by family (:mod:`.common`, :mod:`.pretrain`,
:mod:`.evaluation`, :mod:`.detection`); :mod:`.loading` reads, merges, validates and writes them;
:mod:`.catalog` finds the installed ones by name and lists their fields.
Everything public is importable from here.
"""

from .catalog import (closest, describe, dump, field_rows, find_protocol, installed, installed_dir, installed_names,
                      known_fields, listing, purpose, read_tree, resolved, value_at)
from .common import (NORMALIZATION, RESNETS, TIMM_PREFIX, AreaRange, Norm, Normalized, PositiveRange,
                     PretrainSourceName, SourceName, Strict, Triple, area_fraction, check_arch, default_local_size,
                     norm_stats, ordered_pair, require_root, stat_field, threads_field, timm_kwargs_problem)
from .detection import DETECT_SCHEDULES, DETECT_TRAIN_SIZES, DetectProtocol
from .evaluation import (PROBE_LR, SMALL_IMAGES, TRANSFER_DATASETS, CropTestProtocol, EvalDataConfig,
                         EvalTransformConfig, FeatureNorm, FinetuneProtocol, KnnProtocol, LinearEvalProtocol,
                         TransferProtocol, eval_transform_for)
from .loading import (PROTOCOLS, RUNTIME_FIELDS, comparable, first_difference, format_validation_error, load_protocol,
                      parse_set, protocol_json, safe_yaml, set_dotted, without_runtime, write_protocol)
from .pretrain import (AUGMENT_PARTS, AblateProtocol, AugmentConfig, AugmentPart, ContrastiveCropConfig, DataConfig,
                       DistributedConfig, LOCAL_CROP_METHODS, MethodConfig, MethodName, ModelConfig, MonitorConfig,
                       OptimConfig, PretrainProtocol, TrackingConfig)

__all__ = [
    "closest", "describe", "dump", "field_rows", "find_protocol", "installed", "installed_dir", "installed_names",
    "known_fields", "listing", "purpose", "read_tree", "resolved", "value_at",
    "NORMALIZATION", "RESNETS", "TIMM_PREFIX", "AreaRange", "Norm", "Normalized", "PositiveRange", "PretrainSourceName",
    "SourceName", "Strict", "Triple", "area_fraction", "check_arch", "default_local_size", "norm_stats", "ordered_pair",
    "require_root", "stat_field", "threads_field", "timm_kwargs_problem",
    "DETECT_SCHEDULES", "DETECT_TRAIN_SIZES", "DetectProtocol",
    "PROBE_LR", "SMALL_IMAGES", "TRANSFER_DATASETS", "eval_transform_for", "CropTestProtocol", "EvalDataConfig",
    "EvalTransformConfig", "FeatureNorm",
    "FinetuneProtocol", "KnnProtocol", "LinearEvalProtocol", "TransferProtocol",
    "PROTOCOLS", "RUNTIME_FIELDS", "comparable", "first_difference", "format_validation_error", "load_protocol",
    "parse_set",
    "protocol_json", "safe_yaml", "set_dotted", "without_runtime", "write_protocol",
    "AUGMENT_PARTS", "AblateProtocol", "AugmentConfig", "AugmentPart", "ContrastiveCropConfig", "DataConfig",
    "DistributedConfig", "LOCAL_CROP_METHODS", "MethodConfig", "MethodName", "ModelConfig", "MonitorConfig",
    "OptimConfig", "PretrainProtocol", "TrackingConfig",
]
