"""The ``leoclr`` command line: each command parses, validates, calls one runner, prints a summary.

Every user-fixable problem is a :class:`UserError`: one sentence on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import load_protocol, parse_set
from .core import checkpoint as ckpt
from .core import progress
from .core import threads as cpu_threads
from .core.checkpoint import random_backbone_file
from .core.nets import RANDOM_PREFIX, parse_random
from .core.rundir import RunDir, environment, write_json
from .data import default_eval_splits, open_data, open_pretrain_data
from .data.ccrop import box_stats, draw_boxes, load_boxes
from .data.shards import write_shards
from .data.sources import infer_source
from .detection.export import write_detectron2_pickle
from .detection.run import run_detect
from .errors import UserError
from .evaluate.crop_test import run_crop_test
from .evaluate.finetune import run_finetune, run_finetune_sweep
from .evaluate.knn_run import run_knn
from .evaluate.linear import find_linear_run, run_linear_eval
from .evaluate.transfer import run_transfer
from .report.pictures import check_png_name, views_grid, write_png
from .report.report import build_report
from .workflows.ablate import flat, read_baseline, run_ablate
from .workflows.bench import run_bench
from .workflows.pretrain import run_pretrain
from .workflows.quickstart import DEFAULT_METHODS, run_quickstart

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LeOCLR / MoCo-v2 pretraining and the paper's evaluation protocols.")
out = Console()
err = Console(stderr=True)

ProtocolOpt = typer.Option(None, "--protocol", "-p", help="protocol YAML (see protocols/)")
SetOpt = typer.Option(None, "--set", help="override any protocol field: --set optim.lr=0.1 (repeatable)")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress: only warnings and the final summary")
LogEveryOpt = typer.Option(None, "--log-every", min=1, help="stderr not a terminal (a log file, a pipe): a progress "
                           "line every N steps (default: about every 30 s)")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="CPU threads of the training process (default: the cores "
                          "this process may use less one per loader worker; OMP_NUM_THREADS is kept)")
ForceOpt = typer.Option(False, "--force", help="delete and redo an existing run directory")
ResumeOpt = typer.Option(None, "--resume", help="a checkpoint file, a run directory, or 'auto'")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu or cuda")
SeedOpt = typer.Option(None, "--seed", help="the run's seed, and the seed of a random:ARCH backbone (default 0)")
TARGET_HELP = ("a pretraining run directory, a backbone.safetensors, or random:ARCH, a seeded random-init backbone "
               "(random:resnet18, random:resnet18-cifar, random:resnet50)")
METHOD_HELP = "leoclr, mocov2, simclr, leoclr-e2e, leoclr-random-original or leoclr-attract-all"
CROPS_HELP = "random (RandomResizedCrop), contrastive (ContrastiveCrop) or center-box"


def examples(*lines: str) -> str:
    """A command's --help epilog: 1-3 real command lines, each also in the README and short enough for an
    80-column help (tests/test_help.py checks both and that they parse)."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


def print_table(table: Table) -> None:
    """``table`` on stdout: drawn by rich on a terminal; elsewhere (a log, a pipe) as a Markdown table at its
    natural width, one line per row, never a cell wrapped over lines."""
    if out.is_terminal:
        out.print(table)
        return
    cols = table.columns
    cells = [list(col.cells) for col in cols]
    lines = [str(table.title), ""] if table.title else []
    lines.append("| " + " | ".join(str(c.header) for c in cols) + " |")
    lines.append("|" + "|".join("---:" if c.justify == "right" else "---" for c in cols) + "|")
    lines += ["| " + " | ".join(str(col[i]) for col in cells) + " |" for i in range(table.row_count)]
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


def _overrides(sets: Optional[List[str]], **flags: Any) -> dict[str, Any]:
    merged = {k: v for k, v in flags.items() if v is not None}
    merged.update(parse_set(sets or []))
    return merged


def _runtime(p: Any, log_every: Optional[int]) -> None:
    """Before the runner: progress lines every ``log_every`` steps, and ``p.threads`` CPU threads (or
    the default share of the cores, given the protocol's loader workers)."""
    progress.configure(log_every)
    data = getattr(p, "data", None)
    cpu_threads.apply(p.threads, data.num_workers if data is not None else p.num_workers)


def _data_flags(source: Optional[str], data: Optional[Path | str], prefix: str = "data") -> dict[str, Any]:
    return {f"{prefix}.source": source, f"{prefix}.root": os.path.expanduser(str(data)) if data else None}


def _source_for(kind: str, protocol: Optional[Path], sets: Optional[List[str]], source: Optional[str],
                data: Optional[Path]) -> Optional[str]:
    """``--source``; for ``--data DIR`` without it, the source DIR's layout shows (said on stderr), checked
    against the one an explicit ``--protocol`` or ``--set data.source`` names. Never the built-in data."""
    if data is None or source is not None:
        return source
    declared = parse_set(sets or []).get("data.source")
    if declared is None and protocol is not None:
        declared = load_protocol(kind, protocol, {"data.root": os.path.expanduser(str(data))}).data.source
    name, why = infer_source(data, declared)
    err.print(f"--data {data}: {why}: reading it as --source {name}", highlight=False, soft_wrap=True)
    return name


def _switch_source(defaults: dict[str, Any], source: Optional[str]) -> None:
    """Evaluation defaults derived for one source, moved to ``source``'s own split names (another dataset)."""
    if source is not None and source != defaults.get("data.source"):
        defaults.update(zip(("data.train_split", "data.test_split"), default_eval_splits(source)))
        defaults.update({"data.source": source, "data.builtin_train": None, "data.builtin_test": None})


def _evaluation_inputs(kind: str, target: Path, protocol: Optional[Path], sets: Optional[List[str]],
                       source: Optional[str], data: Optional[Path], seed: Optional[int],
                       out_dir: Optional[Path]) -> tuple[Optional[str], Path, Path, dict[str, Any]]:
    """(source, backbone file, default output parent, eval defaults) of an evaluation command: the source
    from ``--source`` or ``--data``'s layout, the backbone and its defaults, moved to that source."""
    source = _source_for(kind, protocol, sets, source, data)
    backbone, parent, defaults = _backbone_and_defaults(target, seed=seed, out_dir=out_dir, source=source, data=data)
    _switch_source(defaults, source)
    return source, backbone, parent, defaults


# --------------------------------------------------------------------------- pretrain


@app.command(epilog=examples(
    "leoclr pretrain -p protocols/cifar10_r18_leoclr.yaml --data ~/data/cifar10",
    "leoclr pretrain --source imagefolder --data ~/data/mine -o runs/mine",
    "leoclr pretrain --resume auto -p protocols/quickstart.yaml -o runs/q"))
def pretrain(
    protocol: Optional[Path] = ProtocolOpt,
    method: Optional[str] = typer.Option(None, "--method", "-m", help=METHOD_HELP),
    crops: Optional[str] = typer.Option(None, "--crops", help=CROPS_HELP),
    data: Optional[str] = typer.Option(None, "--data", help="dataset root (official on-disk layout), or for "
                                       "--source webdataset the shards: 'train-{000000..000099}.tar' or URLs"),
    source: Optional[str] = typer.Option(None, "--source", help="builtin, imagefolder, cifar10, cifar100, stl10, "
                                                               "webdataset"),
    split: Optional[str] = typer.Option(None, "--split", help="split to pretrain on"),
    arch: Optional[str] = typer.Option(None, "--arch"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = DeviceOpt,
    on_bad_image: Optional[str] = typer.Option(None, "--on-bad-image",
                                               help="an undecodable image: error (stop, naming it) or skip (count it)"),
    checkpoint_every_steps: Optional[int] = typer.Option(None, "--checkpoint-every-steps",
                                                         help="also checkpoint every N steps (0 = off)"),
    out_dir: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="run directory"),
    resume: Optional[str] = ResumeOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    log_every: Optional[int] = LogEveryOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Pretrain a backbone (LeOCLR, MoCo-v2, SimCLR and the paper's variants); writes RUN/backbone.safetensors."""
    source = _source_for("pretrain", protocol, sets, source, data)
    p = load_protocol("pretrain", protocol, _overrides(
        sets, **{"method.name": method, "augment.crops": crops, "data.split": split, "model.arch": arch, "optim.epochs": epochs,
                 "optim.batch_size": batch_size, "optim.lr": lr, "data.num_workers": workers, "seed": seed,
                 "device": device, "data.on_bad_image": on_bad_image,
                 "checkpoint_every_steps": checkpoint_every_steps, "threads": threads}, **_data_flags(source, data)))
    _runtime(p, log_every)
    result = run_pretrain(p, out_dir, resume=resume, force=force, quiet=quiet, console=err)
    if result["rank"]:
        return  # under torchrun only rank 0 reports
    out.print(f"pretrained {result['method']} {result['arch']} for {result['epochs']} epochs: "
              f"final loss {result['final_loss']:.4f}"
              + (f", kNN top-1 {result['knn_top1']:.2f}%" if result["knn_top1"] is not None else "")
              + f"\nbackbone: {result['backbone']}")


# --------------------------------------------------------------------------- evaluation


def _backbone_and_defaults(target: Path, *, seed: Optional[int] = None, out_dir: Optional[Path] = None,
                           source: Optional[str] = None,
                           data: Optional[Path] = None) -> tuple[Path, Path, dict[str, Any]]:
    """(backbone file, default output parent, eval defaults derived from the pretraining protocol).
    ``random:ARCH``: see :func:`_random_init`."""
    if str(target).startswith(RANDOM_PREFIX):
        return _random_init(str(target), seed or 0, out_dir, source, data)
    target = target.expanduser()
    backbone = RunDir.backbone_of(target)
    meta = ckpt.read_metadata(backbone, ckpt.KIND_BACKBONE)
    defaults = _eval_defaults(_pretraining_of(target, backbone, meta))
    parent = target if target.is_dir() else target.parent
    return backbone, parent, defaults


def _backbone_norm(aug: dict[str, Any]) -> dict[str, Any]:
    """The test transform's normalisation (dotted) that the pretraining augmentation ``aug`` used: its
    mean and std when it measured (auto) or was given them, else its named constants."""
    if aug.get("mean") and aug.get("std"):
        return {"transform.normalize": "custom", "transform.mean": aug["mean"], "transform.std": aug["std"]}
    return {"transform.normalize": aug.get("normalize", "imagenet")}


def _own_stats(defaults: dict[str, Any]) -> dict[str, Any]:
    """The backbone's own mean and std among eval ``defaults`` (none when it used named constants):
    transfer and detection, which keep their own defaults otherwise, take these."""
    if defaults.get("transform.normalize") != "custom":
        return {}
    return {k: defaults[k] for k in ("transform.normalize", "transform.mean", "transform.std")}


#: what a backbone must share with the run directory it is evaluated from: (name, value in the header, in the run)
_RUN_FIELDS = (("model.arch", lambda meta, pre: meta.get("arch"), lambda run: run["model"]["arch"]),
               ("model.cifar_stem", lambda meta, pre: json.loads(meta.get("cifar_stem", "null")),
                lambda run: run["model"]["cifar_stem"]),
               ("augment.size", lambda meta, pre: pre.get("augment", {}).get("size"),
                lambda run: run["augment"]["size"]))


def _pretraining_of(target: Path, backbone: Path, meta: dict[str, str]) -> dict[str, Any]:
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


def _small_side(source: str, data: Optional[Path]) -> Optional[int]:
    """The shorter side of the first train image of ``source`` at ``data`` when it is at most 96 px."""
    if data is None:
        return None
    image = open_data(source, str(data), default_eval_splits(source)[0])[0][0]
    return min(image.size) if min(image.size) <= 96 else None


def _random_init(spec: str, seed: int, out_dir: Optional[Path], source: Optional[str],
                 data: Optional[Path]) -> tuple[Path, Path, dict[str, Any]]:
    """The seeded random-init backbone ``random:ARCH`` as RUN/backbone.safetensors of a run directory
    ``random-ARCH-seedN`` (in runs/, or beside --out), written once and reused; the evaluation defaults come
    from the data (default builtin): 32 px for builtin, CIFAR and a CIFAR-stem arch, 96 px for STL-10, the
    images' own size when they are small (at most 96 px), else 224 px."""
    _, cifar_stem = parse_random(spec)
    name = f"random-{spec[len(RANDOM_PREFIX):]}-seed{seed}"
    parent = (out_dir.expanduser().parent if out_dir else Path("runs")) / name
    backbone = random_backbone_file(spec, seed, RunDir(parent).backbone)
    src = source or "builtin"
    size = {"builtin": 32, "builtin-textures": 32, "cifar10": 32, "cifar100": 32, "stl10": 96}.get(src) or (
        32 if cifar_stem else _small_side(src, data) or 224)
    normalize = {"builtin": "builtin", "builtin-textures": "builtin", "cifar10": "cifar",
                 "cifar100": "cifar"}.get(src, "imagenet")
    pseudo_pretraining = {"data": {"source": src}, "augment": {"size": size, "normalize": normalize}}
    return backbone, parent, _eval_defaults(pseudo_pretraining)


def _eval_defaults(pre: dict[str, Any]) -> dict[str, Any]:
    """Evaluation defaults (dotted) derived from a pretraining protocol (as a plain mapping)."""
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
        small = size <= 96
        defaults.update({"transform.size": size, **_backbone_norm(aug),
                         "transform.test": "none" if small else "resize-center-crop",
                         "transform.resize": size if small else round(size * 8 / 7)})
        if small:
            defaults["feature_norm"] = "bn"  # small data: the probe on BN-standardised features (lr from it)
    return defaults


@app.command("linear-eval", epilog=examples(
    "leoclr linear-eval runs/c10 --data ~/data/cifar10",
    "leoclr linear-eval runs/mine --data ~/data/mine"))
def linear_eval(
    target: Path = typer.Argument(..., help=TARGET_HELP),
    protocol: Optional[Path] = ProtocolOpt,
    data: Optional[Path] = typer.Option(None, "--data", help="labelled dataset root"),
    source: Optional[str] = typer.Option(None, "--source"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    train_augment: Optional[str] = typer.Option(None, "--train-augment",
                                                help="random-resized-crop (paper) or none (cached features)"),
    probe: Optional[str] = typer.Option(None, "--probe", help="sgd (default) or lbfgs (cached features)"),
    selection: Optional[str] = typer.Option(None, "--selection", help="val (default: a held-out 10% of train "
                                            "chooses the classifier) or test (MoCo's best test epoch)"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default RUN/linear-eval)"),
    resume: Optional[str] = ResumeOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    log_every: Optional[int] = LogEveryOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Linear evaluation of a frozen backbone: the probe chosen on validation, top-1 / top-5 on test."""
    source, backbone, parent, defaults = _evaluation_inputs("linear-eval", target, protocol, sets, source, data, seed,
                                                            out_dir)
    p = load_protocol("linear-eval", protocol, _overrides(
        sets, epochs=epochs, lr=lr, batch_size=batch_size, train_augment=train_augment, probe=probe,
        selection=selection, device=device, seed=seed, threads=threads, **{"data.num_workers": workers},
        **_data_flags(source, data)), defaults)
    _runtime(p, log_every)
    r = run_linear_eval(p, backbone, out_dir or RunDir(parent).linear_eval.path, resume=resume, force=force,
                        quiet=quiet, console=err)
    out.print(f"linear eval of {backbone}: top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}% ({_selected(r)})")


def _selected(r: dict[str, Any]) -> str:
    """How a linear-eval result's classifier was chosen, in words."""
    what = f"epoch {r['selected_epoch']}" if r.get("selected_epoch") is not None else f"C {r['selected_c']:.3g}"
    on = f"validation top-1 {r['val_top1']:.2f}%" if r["selected_on"] == "val" else "the test split"
    return f"{r['probe']} probe, feature_norm {r['feature_norm']}; {what} chosen on {on}"


@app.command(epilog=examples("leoclr knn runs/c10/backbone.safetensors --data ~/data/cifar10"))
def knn(
    target: Path = typer.Argument(..., help=TARGET_HELP),
    protocol: Optional[Path] = ProtocolOpt,
    data: Optional[Path] = typer.Option(None, "--data", help="labelled dataset root"),
    source: Optional[str] = typer.Option(None, "--source"),
    k: Optional[int] = typer.Option(None, "--k"),
    t: Optional[float] = typer.Option(None, "--t"),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default RUN/knn)"),
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    log_every: Optional[int] = LogEveryOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Weighted kNN accuracy (k = 200, t = 0.1) of a frozen backbone."""
    source, backbone, parent, defaults = _evaluation_inputs("knn", target, protocol, sets, source, data, seed,
                                                            out_dir)
    defaults.pop("feature_norm", None)
    defaults.pop("lr", None)
    p = load_protocol("knn", protocol, _overrides(sets, k=k, t=t, device=device, threads=threads,
                                                  **_data_flags(source, data)), defaults)
    _runtime(p, log_every)
    r = run_knn(p, backbone, out_dir or parent / "knn", force=force, quiet=quiet, console=err)
    out.print(f"kNN (k={p.k}, t={p.t}) of {backbone}: top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%")


# --------------------------------------------------------------------------- crop test (Table 7)


def _linear_run_defaults(linear_dir: Path) -> dict[str, Any]:
    """crop-test defaults: the data, crop size, resize and normalisation of the linear-eval run."""
    lin = RunDir(linear_dir).read_protocol("linear-eval")
    defaults = {f"data.{k}": v for k, v in lin.data.model_dump().items()}
    defaults.update({"size": lin.transform.size, "resize": lin.transform.resize, **lin.transform.norm_fields(),
                     "device": lin.device, "batch_size": lin.batch_size, "seed": lin.seed})
    return defaults


@app.command("crop-test", epilog=examples("leoclr crop-test runs/in1k-200/linear-eval"))
def crop_test(
    target: Path = typer.Argument(..., help="a linear-eval run directory (or a pretraining run holding linear-eval/)"),
    protocol: Optional[Path] = ProtocolOpt,
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="the backbone file, if it has moved"),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled dataset root"),
    source: Optional[str] = typer.Option(None, "--source"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="random-crop passes over the test split"),
    device: Optional[str] = DeviceOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default LINEAR_RUN/crop-test)"),
    force: bool = ForceOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Table 7: the linear classifier under the center-crop and the random-crop test; both and the drop."""
    linear_dir, _ = find_linear_run(target)
    source = _source_for("crop-test", protocol, sets, source, data)
    defaults = _linear_run_defaults(linear_dir)
    _switch_source(defaults, source)
    p = load_protocol("crop-test", protocol, _overrides(sets, repeats=repeats, device=device, threads=threads,
                                                        **_data_flags(source, data)), defaults)
    _runtime(p, None)
    r = run_crop_test(p, linear_dir, out_dir or linear_dir / "crop-test", backbone=backbone, force=force)
    out.print(f"crop test of {linear_dir}: center crop {r['center_top1']:.2f}%, random crop {r['random_top1']:.2f}% "
              f"(drop {r['drop']:.2f} points; paper, ImageNet 200 ep: MoCo-v2 4.3, LeOCLR 2.8)")


# --------------------------------------------------------------------------- augmentation ablations (Figure 4)


@app.command(epilog=examples("leoclr ablate --remove color --baseline runs/in1k-200 -o runs/in1k-nocolor"))
def ablate(
    remove: List[str] = typer.Option(..., "--remove", help="color, grayscale, blur, flip, all-but-crop "
                                                           "(repeat, or comma-separated)"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="the full-augmentation run (pretraining run "
                                            "with linear-eval/, or a linear-eval run); its protocols are the defaults"),
    metric: Optional[str] = typer.Option(None, "--metric", help="top1 (default: the classifier selected on "
                                                       "validation) or top1_last"),
    protocol: Optional[Path] = typer.Option(None, "--protocol", "-p", help="pretraining protocol YAML "
                                            "(default: the baseline's)"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help=METHOD_HELP),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset root (official on-disk layout)"),
    source: Optional[str] = typer.Option(None, "--source"),
    arch: Optional[str] = typer.Option(None, "--arch"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = DeviceOpt,
    linear_protocol: Optional[Path] = typer.Option(None, "--linear-protocol", help="linear-eval protocol YAML "
                                                   "(default: the baseline's)"),
    linear_sets: Optional[List[str]] = typer.Option(None, "--linear-set", help="override a linear-eval field "
                                                    "(repeatable)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/ablate-METHOD-PARTS)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted ablation in --out"),
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    log_every: Optional[int] = LogEveryOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Figure 4: pretrain with augmentation parts removed, linear-evaluate, report the drop vs --baseline."""
    parts = [name.strip() for item in remove for name in item.split(",") if name.strip()]
    ab = load_protocol("ablate", None, {"remove": parts, "baseline": str(baseline) if baseline else None,
                                         "metric": metric})
    base = read_baseline(baseline) if baseline is not None else None
    pre_defaults = flat(base.pretrain) if (base is not None and base.pretrain and protocol is None) else None
    source = _source_for("pretrain", protocol, sets, source, data)
    pre = load_protocol("pretrain", protocol, _overrides(
        sets, **{"method.name": method, "model.arch": arch, "optim.epochs": epochs, "optim.batch_size": batch_size,
                 "data.num_workers": workers, "seed": seed, "device": device, "threads": threads},
        **_data_flags(source, data)), pre_defaults)
    _runtime(pre, log_every)
    lin_file = linear_protocol or (base.linear_protocol if base is not None and base.linear_protocol.is_file() else None)

    def linear_for(p: Any) -> Any:
        return load_protocol("linear-eval", lin_file, _overrides(linear_sets, device=device, threads=threads),
                             _eval_defaults(p.model_dump(mode="json")))

    target = out_dir or Path(f"runs/ablate-{pre.method.name}-{'-'.join(ab.remove)}")
    r = run_ablate(ab, pre, linear_for, target, baseline=base, resume=resume, force=force, quiet=quiet, console=err)
    drop = f", drop {r['drop']:.2f} points from the baseline's {r['baseline_top1']:.2f}%" if r["drop"] is not None else ""
    out.print(f"{r['method']} without {', '.join(r['removed'])}: linear top-1 {r['top1']:.2f}%{drop}\nresult: "
              f"{RunDir(target).result}")


# --------------------------------------------------------------------------- detection


@app.command(epilog=examples("leoclr export runs/in1k/backbone.safetensors --to detectron2 --out r50.pkl"))
def export(
    backbone: Path = typer.Argument(..., help=TARGET_HELP),
    to: str = typer.Option("detectron2", "--to", help="target format: detectron2"),
    out_file: Path = typer.Option(..., "--out", "-o", help="output file (.pkl for detectron2)"),
    seed: Optional[int] = SeedOpt,
) -> None:
    """Export a backbone for another framework (Detectron2: MoCo's key renaming, a .pkl for MODEL.WEIGHTS)."""
    if to != "detectron2":
        raise UserError(f"--to {to!r} is not a known export format; choose detectron2")
    path, _, _ = _backbone_and_defaults(backbone, seed=seed, out_dir=out_file)
    n = write_detectron2_pickle(path, out_file.expanduser())
    out.print(f"wrote {out_file} ({n} tensors in Detectron2 names; load it with MODEL.WEIGHTS {out_file})")


@app.command(epilog=examples(
    "leoclr detect voc runs/in1k --data ~/data/VOCdevkit --backend torchvision",
    "leoclr detect coco runs/coco --data ~/data/coco --schedule 1x"))
def detect(
    dataset: str = typer.Argument(..., help="voc or coco"),
    target: Path = typer.Argument(..., help=TARGET_HELP),
    protocol: Optional[Path] = ProtocolOpt,
    data: Optional[Path] = typer.Option(None, "--data", help="VOCdevkit (voc) or the coco folder (coco)"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="24k (voc), 1x or 2x (coco)"),
    backend: Optional[str] = typer.Option(None, "--backend", help="auto (detectron2 if importable), detectron2, "
                                                                  "torchvision"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs to use (default: all visible; the batch, lr "
                                                            "and schedule are rescaled from 8)"),
    trials: Optional[int] = typer.Option(None, "--trials", help="independent runs (seeds seed..seed+N-1)"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    device: Optional[str] = DeviceOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default RUN/detect-DATASET)"),
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    log_every: Optional[int] = LogEveryOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Faster R-CNN R50-C4 transfer (MoCo's recipe): VOC07+12 -> VOC07 test, or COCO train2017 -> val2017."""
    if dataset not in ("voc", "coco"):
        raise UserError(f"dataset {dataset!r} is not known; choose voc or coco")
    backbone, parent, defaults = _backbone_and_defaults(target, seed=seed, out_dir=out_dir)
    own = _own_stats(defaults)  # Detectron2's pixel_mean / pixel_std are on the 0..255 scale
    pixels = {f"pixel_{k}": [255 * v for v in own[f"transform.{k}"]] for k in ("mean", "std")} if own else {}
    p = load_protocol("detect", protocol, _overrides(
        sets, dataset=dataset, schedule=schedule, backend=backend, gpus=gpus, trials=trials, seed=seed,
        device=device, threads=threads, **{"num_workers": workers, "root": str(data.expanduser()) if data else None}),
        pixels)
    _runtime(p, log_every)
    r = run_detect(p, backbone, out_dir or parent / f"detect-{dataset}", force=force, quiet=quiet, console=err)
    spread = (lambda k: f" ± {r[k + '_std']:.2f}" if r["trials"] > 1 else "")
    out.print(f"{dataset} detection ({r['backend']}, {r['trials']} trial{'s' if r['trials'] > 1 else ''}): "
              f"AP {r['AP']:.2f}{spread('AP')}, AP50 {r['AP50']:.2f}{spread('AP50')}, "
              f"AP75 {r['AP75']:.2f}{spread('AP75')}")


# --------------------------------------------------------------------------- finetune, transfer


def _parse_labels(text: str) -> list[float]:
    """``10%``, ``1``, ``0.5%`` or a sweep ``1,2,5,10,20,50,100`` -> percents in (0, 100]."""
    values = []
    for part in text.split(","):
        part = part.strip().rstrip("%").strip()
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"--labels {text!r}: {part!r} is not a percentage (e.g. 10% or 1,10,100)") from None
        if not 0 < value <= 100:
            raise UserError(f"--labels {text!r}: {value:g} is not a percentage in (0, 100]")
        values.append(value)
    if len(set(values)) != len(values):
        raise UserError(f"--labels {text!r} names a fraction twice")
    return values


@app.command(epilog=examples(
    "leoclr finetune runs/in1k --labels 1% --data ~/data/imagenet",
    "leoclr finetune runs/c10 --labels 1,10,100 -p protocols/finetune_cifar10.yaml"))
def finetune(
    target: Path = typer.Argument(..., help=TARGET_HELP),
    labels: Optional[str] = typer.Option(None, "--labels", help="label fraction: 1%, 10%, N%, or a sweep "
                                         "1,2,5,10,20,50,100 (default: the protocol's labels, 10%)"),
    subset_file: Optional[Path] = typer.Option(None, "--subset-file",
                                               help="SimCLR list (1percent.txt) or a run's subset.txt"),
    protocol: Optional[Path] = ProtocolOpt,
    data: Optional[Path] = typer.Option(None, "--data", help="labelled dataset root"),
    source: Optional[str] = typer.Option(None, "--source"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="default: 60 below 10% labels, 30 from 10% up"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of the class-balanced draw (subset_seed) and of "
                                       "a random:ARCH backbone"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    device: Optional[str] = DeviceOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default RUN/finetune-Npct)"),
    resume: Optional[str] = ResumeOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    log_every: Optional[int] = LogEveryOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Semi-supervised fine-tuning of all layers on a labelled subset (SimCLR's protocol); top-1 / top-5."""
    fractions: list[Optional[float]] = list(_parse_labels(labels)) if labels is not None else [None]
    if subset_file is not None and len(fractions) > 1:
        raise UserError("--subset-file fixes one subset; it cannot be combined with a sweep of --labels")
    source, backbone, parent, defaults = _evaluation_inputs("finetune", target, protocol, sets, source, data, seed,
                                                            out_dir)
    defaults.pop("feature_norm", None)  # a linear-probe field
    flags = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "subset_seed": seed, "device": device,
             "data.num_workers": workers, "subset_file": str(subset_file.expanduser()) if subset_file else None,
             "threads": threads, **_data_flags(source, data)}
    protocols = [load_protocol("finetune", protocol, _overrides(sets, **flags, labels=f), defaults) for f in fractions]
    _runtime(protocols[0], log_every)
    if len(protocols) == 1:
        p = protocols[0]
        r = run_finetune(p, backbone, out_dir or parent / f"finetune-{p.labels:g}pct", resume=resume, force=force,
                         quiet=quiet, console=err)
        out.print(f"fine-tuned {backbone} on {r['labels']:g}% labels ({r['num_labelled']} images, {r['epochs']} "
                  f"epochs): top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%")
        return
    if resume not in (None, "auto"):
        raise UserError("a sweep of --labels resumes with --resume auto only")
    summary = run_finetune_sweep(protocols, backbone, out_dir or parent / "finetune", resume=resume, force=force,
                                 quiet=quiet, console=err)
    table = Table(title=f"Semi-supervised fine-tuning of {backbone}")
    for col in ("labels %", "epochs", "top-1 %", "top-5 %"):
        table.add_column(col, justify="right")
    for row in summary["runs"]:
        table.add_row(f"{row['labels']:g}", str(row["epochs"]), f"{row['top1']:.2f}", f"{row['top5']:.2f}")
    print_table(table)


@app.command(epilog=examples(
    "leoclr transfer runs/in1k cars --data ~/data/cars",
    "leoclr transfer runs/in1k pets --data ~/data/pets --mode linear"))
def transfer(
    target: Path = typer.Argument(..., help=TARGET_HELP),
    dataset: str = typer.Argument(..., help="cifar10, cifar100, cars, pets or birdsnap"),
    data: Optional[Path] = typer.Option(None, "--data", help="the dataset's root (official layout)"),
    mode: Optional[str] = typer.Option(None, "--mode", help="finetune (default) or linear (L-BFGS on frozen features)"),
    protocol: Optional[Path] = ProtocolOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default RUN/transfer-DATASET-MODE)"),
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    log_every: Optional[int] = LogEveryOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Transfer (Kornblith et al.): grid on a 20% validation split, refit on train+val, one test score."""
    backbone, parent, defaults = _backbone_and_defaults(target, seed=seed, out_dir=out_dir)
    p = load_protocol("transfer", protocol, _overrides(
        sets, dataset=dataset, mode=mode, batch_size=batch_size, device=device, num_workers=workers, threads=threads,
        seed=seed, root=str(data.expanduser()) if data else None), _own_stats(defaults))
    _runtime(p, log_every)
    r = run_transfer(p, backbone, out_dir or parent / f"transfer-{p.dataset}-{p.mode}", force=force, quiet=quiet,
                     console=err)
    best = f"C {r['best_c']:.3g}" if p.mode == "linear" else f"lr {r['best_lr']:.3g}, wd {r['best_wd']:.3g}"
    present = (f" ({r['images_present']} of {r['images_listed']} listed images present)"
               if "images_present" in r else "")
    out.print(f"transfer of {backbone} to {p.dataset}{present}, {p.mode}: {r['metric']} {r['value']:.2f}% "
              f"(best {best}, validation {r['val']:.2f}%)")


# --------------------------------------------------------------------------- report (Tables 1-9, Figures 3-4)


@app.command(epilog=examples("leoclr report runs/ --out report/"))
def report(
    run_dirs: List[Path] = typer.Argument(..., help="run directories, searched recursively for result.json"),
    out_dir: Path = typer.Option(Path("report"), "--out", "-o", help="where report.md and the PNGs go"),
    force: bool = typer.Option(False, "--force", help="replace an existing report in --out"),
) -> None:
    """The paper's Tables 1-9 with our numbers beside them (Markdown), Figures 3-4 and the training curves (PNG)."""
    r = build_report(run_dirs, out_dir, force=force)
    runs = ", ".join(f"{n} {k}" for k, n in r["runs"].items()) or "none"
    out.print(f"report: {r['report']} (runs read: {runs}; files not used: {r['ignored']})\nfigures: "
              + ", ".join(str(f) for f in r["figures"]))


# --------------------------------------------------------------------------- quickstart, bench


@app.command(epilog=examples("leoclr quickstart", "leoclr quickstart --seeds 3", "leoclr quickstart --method leoclr --crops contrastive"))
def quickstart(
    methods: Optional[List[str]] = typer.Option(None, "--method", "-m",
                                                help=f"repeatable; default leoclr and mocov2 ({METHOD_HELP})"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="seeds to repeat everything with (mean ± std when > 1)"),
    crops: Optional[str] = typer.Option(None, "--crops", help=CROPS_HELP),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="default runs/quickstart"),
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    log_every: Optional[int] = LogEveryOpt,
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Pretrain LeOCLR and MoCo-v2 on the built-in data, linear-probe both and a random-init backbone."""
    progress.configure(log_every)
    default_dir = "runs/quickstart" + (f"-{crops}" if crops and crops != "random" else "")
    result = run_quickstart(methods or DEFAULT_METHODS, out_dir or Path(default_dir), seeds=seeds, epochs=epochs,
                            force=force, quiet=quiet, console=err, overrides=_overrides(sets, **{"augment.crops": crops, "threads": threads}))
    print_table(quickstart_table(result["summary"], seeds))


def quickstart_table(summary: list[dict[str, Any]], seeds: int) -> Table:
    def pm(mean: float, std: Optional[float], digits: int = 1) -> str:
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    table = Table(title=f"Linear probe on the built-in test split (10 classes), {seeds} seed{'s' * (seeds > 1)}")
    for col in ("backbone", "top-1 %", "top-5 %", "top-1 per seed", "top-1 gap to next row", "wall time"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for row in summary:
        gap = ""
        if "gap_to_next" in row:
            gap = pm(row["gap_to_next"], row["gap_to_next_std"]) + {True: " (holds)", False: " (does not hold)",
                                                                    None: ""}[row["gap_holds"]]
        table.add_row(row["name"], pm(row["top1"], row["top1_std"]), pm(row["top5"], row["top5_std"]),
                      " / ".join(f"{v:.1f}" for v in row["top1_per_seed"]), gap, f"{row['wall_s']:.0f} s")
    return table


@app.command(epilog=examples("leoclr bench", "leoclr bench --device cuda --arch resnet50 --size 224 -b 256 -j 16"))
def bench(
    device: Optional[str] = DeviceOpt,
    arch: str = typer.Option("resnet18", "--arch"),
    size: int = typer.Option(32, "--size", help="view size of the train-step and end-to-end rows"),
    view_size: int = typer.Option(224, "--view-size", help="view size of the view-pipeline rows"),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    steps: int = typer.Option(5, "--steps", help="timed train steps per method"),
    images: int = typer.Option(128, "--images", help="images through each view pipeline"),
    workers: int = typer.Option(0, "--workers", "-j", help="DataLoader workers of the end-to-end rows"),
    threads: Optional[int] = ThreadsOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the numbers as JSON"),
) -> None:
    """Samples/s of the view pipelines, the train step and end to end, MoCo-v2 vs LeOCLR, on this device."""
    cpu_threads.apply(threads, workers)
    rows, ratio = run_bench(device=device or "auto", arch=arch, size=size, batch_size=batch_size, steps=steps,
                            images=images, view_size=view_size, workers=workers)
    table = Table(title=f"leoclr bench: {arch}, batch {batch_size}; views at {view_size} px from "
                        f"photo-sized JPEGs, train at {size} px")
    cols = ("what", "device", "mocov2 samples/s", "leoclr samples/s", "leoclr / mocov2 cost", "leoclr vs reference",
            "peak GiB", "GPU util %")
    for col in cols:
        table.add_column(col, justify="left" if col in ("what", "device") else "right")

    def fmt(v: Any, spec: str) -> str:
        return "" if v is None else format(v, spec)

    for r in rows:
        table.add_row(r["what"], r["device"], f"{r['mocov2']:.1f}", f"{r['leoclr']:.1f}",
                      f"{r['mocov2'] / r['leoclr']:.2f}x", fmt(r.get("vs_reference"), ".2f"),
                      fmt(r.get("peak_gib"), ".2f"), fmt(r.get("gpu_util"), ".0f"))
    print_table(table)
    out.print(f"LeOCLR/MoCo-v2 cost per sample (train step): {ratio:.2f}x (paper, 3 A100s end to end: 1.19x)")
    if json_out is not None:
        write_json(json_out, {"rows": rows, "train_step_cost_ratio": ratio, "environment": environment(),
                              "settings": {"arch": arch, "size": size, "view_size": view_size,
                                           "batch_size": batch_size, "steps": steps, "images": images,
                                           "workers": workers}})


@app.command(epilog=examples("leoclr views --protocol protocols/quickstart.yaml --out views.png"))
def views(
    protocol: Optional[Path] = ProtocolOpt,
    method: Optional[str] = typer.Option(None, "--method", "-m", help=METHOD_HELP),
    data: Optional[str] = typer.Option(None, "--data", help="dataset root (official on-disk layout), or shards"),
    source: Optional[str] = typer.Option(None, "--source", help="builtin, imagefolder, cifar10, cifar100, stl10, "
                                                               "webdataset"),
    split: Optional[str] = typer.Option(None, "--split", help="split to draw the images from"),
    out_file: Path = typer.Option(Path("views.png"), "--out", "-o", help="PNG file to write"),
    count: int = typer.Option(8, "--count", "-n", min=1, max=256, help="images (rows) in the grid"),
    cell: Optional[int] = typer.Option(None, "--cell", min=16, max=1024, help="pixels per tile (default: the view "
                                                                               "size, at least 64)"),
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """A PNG grid of the first images, each beside its views as the method sees them (before normalisation)."""
    check_png_name(out_file)
    p = load_protocol("pretrain", protocol, _overrides(sets, **{"method.name": method, "data.split": split},
                                                       **_data_flags(source, data)))
    src = open_pretrain_data(p.data)
    write_png(views_grid(p, src, count, cell), out_file)
    out.print(f"{min(count, len(src))} images of {p.data.source} with their {p.method.name} views: {out_file}")


@app.command(epilog=examples("leoclr shards --data ~/data/mine --out shards/train-%06d.tar"))
def shards(
    data: Path = typer.Option(..., "--data", help="dataset root (official on-disk layout)"),
    out_pattern: str = typer.Option(..., "--out", "-o", help="shard file names with one number field, e.g. "
                                                             "shards/train-%06d.tar"),
    source: str = typer.Option("imagefolder", "--source", help="imagefolder, cifar10, cifar100, stl10, ..."),
    split: str = typer.Option("train", "--split", help="the split to write"),
    per_shard: int = typer.Option(1000, "--per-shard", min=1, help="images per shard"),
    seed: int = typer.Option(0, "--seed", help="seed of the order the images are written in"),
    force: bool = typer.Option(False, "--force", help="overwrite existing shards"),
) -> None:
    """Write a dataset as WebDataset tar shards, for data.source webdataset."""
    src = open_data(source, str(data.expanduser()), split, builtin_n=4000)
    r = write_shards(src, out_pattern, per_shard=per_shard, seed=seed, force=force,
                     log=lambda line: err.print(line, highlight=False))
    out.print(f"wrote {r['samples']} images of {source} {split} in {r['shards']} shards; pretrain on them with\n"
              f"  leoclr pretrain --source webdataset --data '{r['pattern']}' ...", highlight=False, soft_wrap=True)


@app.command(epilog=examples("leoclr boxes runs/c10-cc --out boxes.png"))
def boxes(
    run_dir: Path = typer.Argument(..., help="a pretraining run directory made with --crops contrastive or center-box"),
    out_file: Path = typer.Option(Path("boxes.png"), "--out", "-o", help="PNG file to write"),
    count: int = typer.Option(16, "--count", "-n", min=1, max=256, help="images in the grid"),
    cell: int = typer.Option(128, "--cell", min=16, max=1024, help="pixels per image in the grid"),
) -> None:
    """Draw the ContrastiveCrop boxes of a run on a grid of its first images (RUN/boxes.safetensors)."""
    run = RunDir(run_dir.expanduser())
    path = run.boxes
    if not path.is_file():
        raise UserError(f"{run.path} holds no {RunDir.BOXES} (pretrain with --crops contrastive or center-box)")
    check_png_name(out_file)
    all_boxes, meta = load_boxes(path)
    p = run.read_protocol("pretrain")
    source = open_pretrain_data(p.data)
    if len(source) != all_boxes.shape[0]:
        raise UserError(f"{path} holds {all_boxes.shape[0]} boxes, but the run's data has {len(source)} images")
    n = min(count, len(source))
    write_png(draw_boxes([source[i][0] for i in range(n)], all_boxes[:n], cell=cell), out_file)
    whole = box_stats(all_boxes)["ccrop_whole"]
    out.print(f"{n} images with their {meta.get('mode', '')} boxes (computed after epoch {meta.get('epoch', '?')}; "
              f"{100 * whole:.0f}% of all boxes are the whole image): {out_file}")


@app.command(epilog=examples("leoclr info runs/c10/backbone.safetensors"))
def info(path: Path = typer.Argument(..., help="any .safetensors file written by leoclr")) -> None:
    """Show a checkpoint's metadata and tensor count (reads the header; unpickles nothing)."""
    tensors, meta = ckpt.load_tensors(path)
    for key in sorted(meta):
        value = meta[key]
        out.print(f"{key}: {value if len(value) < 200 else value[:200] + '...'}", highlight=False)
    out.print(f"tensors: {len(tensors)} ({sum(t.numel() for t in tensors.values()):,} values)")


@app.command("import", epilog=examples("leoclr import moco_v2_800ep_pretrain.pth.tar --out moco800.safetensors"))
def import_(
    src: Path = typer.Argument(..., help="a .pth / .pth.tar checkpoint (MoCo's releases, torchvision state dicts)"),
    out_file: Path = typer.Option(..., "--out", "-o", help="the backbone.safetensors to write"),
    arch: Optional[str] = typer.Option(None, "--arch", help="default: the 'arch' stored in the file"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing --out file"),
) -> None:
    """Import a foreign PyTorch checkpoint's backbone (torch.load with weights_only=True; no code runs)."""
    if out_file.exists() and not force:
        raise UserError(f"{out_file} already exists; use --force to overwrite it")
    r = ckpt.import_torch_checkpoint(src, out_file, arch=arch)
    out.print(f"imported {r['tensors']} tensors of a {r['arch']} (keys under '{r['prefix']}', fc dropped) "
              f"into {r['out']}")


def _one_sentence(e: UserError) -> str:
    """The user's sentence; a DataLoader worker wraps it in a traceback, whose last line holds it."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(("UserError", "leoclr_cli.")) else last
    return text


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except UserError as e:
        err.print(f"{getattr(e, 'prefix', 'error')}: {_one_sentence(e)}", highlight=False, markup=False,
                  soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
