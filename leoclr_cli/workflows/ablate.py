"""``leoclr ablate`` (Figure 4): pretrain with augmentation parts removed, linear-evaluate, compare.

Nothing here trains by itself: it is :func:`run_pretrain` on a protocol whose augmentation has the named
parts switched off (:data:`~..config.AUGMENT_PARTS` maps names to switches), then :func:`run_linear_eval`.
The run directory holds ``protocol.yaml`` (the ablate protocol), ``pretrain/`` (a normal pretraining
run), ``pretrain/linear-eval/`` and ``result.json`` (kind ``ablate``) with the drop in points against
the baseline, the full-augmentation run it names.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console

from ..config import (AUGMENT_PARTS, AblateProtocol, AugmentConfig, LinearEvalProtocol, PretrainProtocol, load_protocol,
                      write_protocol)
from ..core import checkpoint as ckpt
from ..core.results import AblateResult
from ..core.rundir import RunDir, command
from ..errors import UserError
from ..evaluate.inputs import eval_defaults
from ..evaluate.linear import find_linear_run, run_linear_eval
from .pretrain import run_pretrain

# Fields that do not change what is learned; a baseline may differ in them.
_NOT_COMPARED = ("name", "device", "amp", "channels_last", "checkpoint_every", "keep_checkpoints", "deterministic",
                 "monitor.", "data.root", "data.num_workers")


@dataclass
class Baseline:
    run: Path
    linear_dir: Path
    result: dict[str, Any]
    pretrain: Optional[dict[str, Any]]  # the baseline's pretraining protocol, when it can be found

    @property
    def linear_protocol(self) -> Path:
        return RunDir(self.linear_dir).protocol_file

    def pretrain_defaults(self, protocol: Optional[Path]) -> Optional[dict[str, Any]]:
        """The baseline's pretraining protocol (dotted), the defaults of an ablation given no ``protocol``."""
        return flat(self.pretrain) if self.pretrain and protocol is None else None


def ablation(remove: list[str], baseline: Optional[Path],
             metric: Optional[str]) -> tuple[AblateProtocol, Optional[Baseline]]:
    """The ablate protocol of the ``--remove`` items (repeated or comma-separated), and the baseline run."""
    parts = [name.strip() for item in remove for name in item.split(",") if name.strip()]
    ab = load_protocol("ablate", None, {"remove": parts, "baseline": str(baseline) if baseline else None,
                                         "metric": metric})
    return ab, read_baseline(baseline) if baseline is not None else None


def linear_protocols(linear_protocol: Optional[Path], baseline: Optional[Baseline],
                     overrides: dict[str, Any]) -> Callable[[PretrainProtocol], LinearEvalProtocol]:
    """The linear evaluation of an ablation's backbone: ``linear_protocol`` (default: the baseline's), with
    ``overrides``, on the evaluation defaults of the ablation's pretraining."""
    given = linear_protocol or (baseline.linear_protocol if baseline is not None and
                                baseline.linear_protocol.is_file() else None)
    return lambda pre: load_protocol("linear-eval", given, overrides, eval_defaults(pre.model_dump(mode="json")))


def read_baseline(run: Path) -> Baseline:
    """The finished linear evaluation of ``run`` and, when found, the protocol its backbone was pretrained with."""
    linear_dir, result = find_linear_run(run)
    pretrain = None
    backbone = Path(result.get("backbone", ""))
    if backbone.is_file():
        pretrain = json.loads(ckpt.read_metadata(backbone, ckpt.KIND_BACKBONE).get("protocol", "{}")) or None
    if pretrain is None:
        tree = RunDir(linear_dir.parent).protocol_tree()
        pretrain = tree if tree.get("kind") == "pretrain" else None
    return Baseline(Path(run), linear_dir, result, pretrain)


def remove_parts(augment: AugmentConfig, parts: list[str]) -> tuple[list[str], list[str]]:
    """Switch off the fields of ``parts`` in ``augment``; (fields switched off, fields that were already off)."""
    fields = list(dict.fromkeys(f for part in parts for f in AUGMENT_PARTS[part]))
    already = [f for f in fields if not getattr(augment, f)]
    for f in fields:
        setattr(augment, f, False)
    return fields, already


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to ``{"a.b": leaf}``."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}."))
    return out


def differences(baseline: dict[str, Any], ours: dict[str, Any], removed_fields: list[str]) -> list[str]:
    """Dotted fields in which two pretraining protocols differ, besides the removed parts and run logistics."""
    a, b = flat(baseline), flat(ours)
    skip = {f"augment.{f}" for f in removed_fields}
    return sorted(k for k in set(a) | set(b)
                  if k not in skip and not k.startswith(_NOT_COMPARED) and a.get(k) != b.get(k))


def _open_run_dir(run: RunDir, ab: AblateProtocol, *, resume: bool, force: bool) -> None:
    out_dir = run.path
    if out_dir.exists() and any(out_dir.iterdir()):
        if force:
            shutil.rmtree(out_dir)
        elif not resume:
            raise UserError(f"run directory {out_dir} already exists; use --resume to continue it or --force to "
                            "start over")
        elif run.protocol_tree() != ab.model_dump(mode="json"):
            raise UserError(f"--resume: {out_dir} holds a different ablation (its {RunDir.PROTOCOL} differs)")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_protocol(ab, run.protocol_file)


@command
def run_ablate(ab: AblateProtocol, pre: PretrainProtocol, linear_for: Callable[[PretrainProtocol], LinearEvalProtocol],
               out_dir: Path, *, baseline: Optional[Baseline] = None, resume: bool = False, force: bool = False,
               quiet: bool = False, console: Optional[Console] = None) -> dict[str, Any]:
    """Pretrain ``pre`` minus the parts in ``ab.remove``, linear-evaluate with ``linear_for(pretrain protocol)``."""
    console = console or Console(stderr=True)
    pre = pre.model_copy(deep=True)
    removed_fields, already_off = remove_parts(pre.augment, ab.remove)
    if len(already_off) == len(removed_fields):
        raise UserError(f"--remove {','.join(ab.remove)}: the protocol already has {', '.join(already_off)} off; "
                        "nothing would be removed")
    differs: list[str] = []
    if baseline is not None:
        if baseline.result.get("method") != pre.method.name:
            raise UserError(f"baseline {baseline.run} is a {baseline.result.get('method')} run, not {pre.method.name}; "
                            "the drop is measured against the same method")
        if baseline.result.get(ab.metric) is None:
            raise UserError(f"baseline {RunDir(baseline.linear_dir).result} has no '{ab.metric}'")
        if baseline.pretrain is not None:
            differs = differences(baseline.pretrain, pre.model_dump(mode="json"), removed_fields)
            if differs:
                console.print(f"note: the ablation differs from baseline {baseline.run} in {', '.join(differs)}",
                              highlight=False)
    linear = linear_for(pre)  # validated before anything is trained

    run = RunDir(out_dir)
    _open_run_dir(run, ab, resume=resume, force=force)
    pre_run = RunDir(run.path / "pretrain")
    lin_run = pre_run.linear_eval
    state, fresh = pre_run.resume_or_fresh(force=False)
    run_pretrain(pre, pre_run.path, resume=state, force=fresh, quiet=quiet, console=console)
    state, fresh = lin_run.resume_or_fresh(force=False)
    lin = run_linear_eval(linear, pre_run.backbone, lin_run.path, resume=state, force=fresh, quiet=quiet,
                          console=console)
    base_value = baseline.result[ab.metric] if baseline is not None else None
    return run.write_result(AblateResult(
        method=pre.method.name, arch=pre.model.arch, pretrain_epochs=pre.optim.epochs, dataset=pre.data.source,
        num_classes=lin["num_classes"], removed=ab.remove, removed_fields=removed_fields, already_off=already_off,
        metric=ab.metric, top1=lin[ab.metric], top5=lin["top5" if ab.metric == "top1" else "top5_last"],
        selected_on=lin["selected_on"], baseline=str(baseline.run) if baseline is not None else None,
        baseline_top1=base_value, drop=None if base_value is None else base_value - lin[ab.metric],
        differs_from_baseline=differs, pretrain_dir=str(pre_run.path), linear_dir=str(lin_run.path)))
