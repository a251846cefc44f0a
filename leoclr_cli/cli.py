"""The ``leoclr`` command line: each command parses, builds its protocol, calls one runner, prints a summary.

Every user-fixable problem is a :class:`UserError`: one sentence on stderr and exit status 2. This module,
its flags (options.py) and the protocols (config/) import no torch: the runners come through
:mod:`.lazy` (``lazy.NAME``), imported when a command runs, so every ``--help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from . import options as o
from . import lazy

from .console import err, out, print_table, rows_table, say
from .core.atomic import as_user_error
from .core import progress
from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LeOCLR / MoCo-v2 pretraining and the paper's evaluation protocols.")


def command(*args: Any, **kwargs: Any) -> Any:
    """``app.command`` whose --help names the protocol field behind each flag (options.ProtocolCommand)."""
    return app.command(*args, cls=o.ProtocolCommand, **kwargs)


def examples(*lines: str) -> str:
    """A command's --help epilog: 1-3 real command lines, each also in the README and short enough for an
    80-column help (tests/test_help.py checks both and that they parse)."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


def _result(as_json: bool, run_dir: Path, line: str, file: Optional[str] = None) -> None:
    """A command's outcome on stdout: its summary ``line``, or with --json its result file (RUN/result.json) as
    written, and nothing else."""
    if as_json:
        sys.stdout.write((Path(run_dir) / (file or lazy.RunDir.RESULT)).read_text())
    else:
        out.print(line, highlight=False, markup=False)


def _runtime(p: Any, log_every: Optional[int]) -> None:
    """Before the runner: progress lines every ``log_every`` steps, and ``p.threads`` CPU threads (or
    the default share of the cores, given the protocol's loader workers)."""
    progress.configure(log_every)
    data = getattr(p, "data", None)
    lazy.cpu_threads.apply(p.threads, data.num_workers if data is not None else p.num_workers)


# --------------------------------------------------------------------------- pretrain


@command(epilog=examples(
    "leoclr pretrain -p protocols/cifar10_r18_leoclr.yaml --data ~/data/cifar10",
    "leoclr pretrain --source imagefolder --data ~/data/mine -o runs/mine",
    "leoclr pretrain --resume auto -p protocols/quickstart.yaml -o runs/q"))
def pretrain(
    protocol: Optional[Path] = o.Protocol, method: Optional[str] = o.Method, crops: Optional[str] = o.Crops,
    data: Optional[str] = o.PretrainData, source: Optional[str] = o.PretrainSource,
    split: Optional[str] = o.PretrainSplit, arch: Optional[str] = o.Arch, epochs: Optional[int] = o.Epochs,
    batch_size: Optional[int] = o.Batch, lr: Optional[float] = o.Lr, workers: Optional[int] = o.Workers,
    seed: Optional[int] = o.Seed, device: Optional[str] = o.Device, on_bad_image: Optional[str] = o.OnBadImage,
    checkpoint_every_steps: Optional[int] = o.CheckpointEverySteps, out_dir: Path = o.PretrainOut,
    resume: Optional[str] = o.Resume, force: bool = o.Force, quiet: bool = o.Quiet,
    log_every: Optional[int] = o.LogEvery, threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets,
    allow_pipe: bool = o.AllowPipe, as_json: bool = o.Json,
) -> None:
    """Pretrain a backbone (LeOCLR, MoCo-v2, SimCLR and the paper's variants); writes RUN/backbone.safetensors."""
    source = lazy.source_for("pretrain", protocol, sets, source, data, say)
    p = lazy.pretrain_protocol(protocol, o.overrides(sets, **o.fields("pretrain", locals())), say)
    _runtime(p, log_every)
    r = lazy.run_pretrain(p, out_dir, resume=resume, force=force, quiet=quiet, console=err,
                          allow_pipe=o.pipe_allowed(allow_pipe, data, sets))
    if not r["rank"]:  # under torchrun only rank 0 reports
        shown = (("knn_top1", "kNN top-1"), ("knn_top1_random_init", "random-init kNN"), ("linear_top1", "online probe"))
        _result(as_json, out_dir, f"pretrained {r['method']} {r['arch']} for {r['epochs']} epochs: final loss "
                                  f"{r['final_loss']:.4f}" + "".join(f", {name} {r[k]:.2f}%" for k, name in shown
                                                                     if r.get(k) is not None)
                + f"\nbackbone: {r['backbone']}")


# --------------------------------------------------------------------------- evaluation


@command("linear-eval", epilog=examples(
    "leoclr linear-eval runs/c10 --data ~/data/cifar10",
    "leoclr linear-eval runs/mine --data ~/data/mine"))
def linear_eval(
    target: Path = o.Target, protocol: Optional[Path] = o.Protocol, data: Optional[Path] = o.LabelledData,
    source: Optional[str] = o.Source, epochs: Optional[int] = o.Epochs, lr: Optional[float] = o.Lr,
    batch_size: Optional[int] = o.Batch, train_augment: Optional[str] = o.TrainAugment, probe: Optional[str] = o.Probe,
    selection: Optional[str] = o.Selection, workers: Optional[int] = o.Workers, seed: Optional[int] = o.EvalSeed,
    device: Optional[str] = o.Device, out_dir: Optional[Path] = o.LinearOut, resume: Optional[str] = o.Resume,
    force: bool = o.Force, quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery,
    threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets, as_json: bool = o.Json,
) -> None:
    """Linear evaluation of a frozen backbone: the probe chosen on validation, top-1 / top-5 on test."""
    source, backbone, parent, defaults = lazy.evaluation_inputs("linear-eval", target, protocol, sets, source,
                                                                   data, seed, out_dir, say)
    p = lazy.load_protocol("linear-eval", protocol, o.overrides(sets, **o.fields("linear-eval", locals())), defaults)
    _runtime(p, log_every)
    run_dir = out_dir or lazy.RunDir(parent).linear_eval.path
    r = lazy.run_linear_eval(p, backbone, run_dir, resume=resume, force=force, quiet=quiet, console=err)
    _result(as_json, run_dir, f"linear eval of {backbone}: top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}% "
                              f"({lazy.describe_selection(r)})")


@command(epilog=examples("leoclr knn runs/c10/backbone.safetensors --data ~/data/cifar10"))
def knn(
    target: Path = o.Target, protocol: Optional[Path] = o.Protocol, data: Optional[Path] = o.LabelledData,
    source: Optional[str] = o.Source, k: Optional[int] = o.K, t: Optional[float] = o.T,
    seed: Optional[int] = o.EvalSeed, device: Optional[str] = o.Device, out_dir: Optional[Path] = o.KnnOut,
    force: bool = o.Force, quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery,
    threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets, as_json: bool = o.Json,
) -> None:
    """Weighted kNN accuracy (k = 200, t = 0.1) of a frozen backbone."""
    source, backbone, parent, defaults = lazy.evaluation_inputs("knn", target, protocol, sets, source, data, seed,
                                                                   out_dir, say)
    p = lazy.load_protocol("knn", protocol, o.overrides(sets, **o.fields("knn", locals())), defaults)
    _runtime(p, log_every)
    run_dir = out_dir or parent / "knn"
    r = lazy.run_knn(p, backbone, run_dir, force=force, quiet=quiet, console=err)
    _result(as_json, run_dir, f"kNN (k={p.k}, t={p.t}) of {backbone}: top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%")


@command("crop-test", epilog=examples("leoclr crop-test runs/in1k-200/linear-eval"))
def crop_test(
    target: Path = o.LinearRun, protocol: Optional[Path] = o.Protocol, backbone: Optional[Path] = o.MovedBackbone,
    data: Optional[Path] = o.LabelledData, source: Optional[str] = o.Source, repeats: Optional[int] = o.Repeats,
    device: Optional[str] = o.Device, out_dir: Optional[Path] = o.CropTestOut, force: bool = o.Force,
    threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets, as_json: bool = o.Json,
) -> None:
    """Table 7: the linear classifier under the center-crop and the random-crop test; both and the drop."""
    linear_dir, _ = lazy.find_linear_run(target)
    source = lazy.source_for("crop-test", protocol, sets, source, data, say)
    defaults = lazy.linear_run_defaults(linear_dir)
    lazy.switch_source(defaults, source)
    p = lazy.load_protocol("crop-test", protocol, o.overrides(sets, **o.fields("crop-test", locals())), defaults)
    _runtime(p, None)
    run_dir = out_dir or linear_dir / "crop-test"
    r = lazy.run_crop_test(p, linear_dir, run_dir, backbone=backbone, force=force)
    _result(as_json, run_dir, f"crop test of {linear_dir}: center crop {r['center_top1']:.2f}%, random crop "
                              f"{r['random_top1']:.2f}% (drop {r['drop']:.2f} points; paper, ImageNet 200 ep: "
                              "MoCo-v2 4.3, LeOCLR 2.8)")


@command(epilog=examples("leoclr ablate --remove color --baseline runs/in1k-200 -o runs/in1k-nocolor"))
def ablate(
    remove: List[str] = o.Remove, baseline: Optional[Path] = o.Baseline, metric: Optional[str] = o.Metric,
    protocol: Optional[Path] = o.AblateProtocol, method: Optional[str] = o.Method, data: Optional[Path] = o.RawData,
    source: Optional[str] = o.Source, arch: Optional[str] = o.Arch, epochs: Optional[int] = o.Epochs,
    batch_size: Optional[int] = o.Batch, workers: Optional[int] = o.Workers, seed: Optional[int] = o.Seed,
    device: Optional[str] = o.Device, linear_protocol: Optional[Path] = o.LinearProtocol,
    linear_sets: Optional[List[str]] = o.LinearSets, out_dir: Optional[Path] = o.AblateOut,
    resume: bool = o.AblateResume, force: bool = o.Force, quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery,
    threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets, as_json: bool = o.Json,
) -> None:
    """Figure 4: pretrain with augmentation parts removed, linear-evaluate, report the drop vs --baseline."""
    ab, base = lazy.ablation(remove, baseline, metric)
    source = lazy.source_for("pretrain", protocol, sets, source, data, say)
    pre = lazy.load_protocol("pretrain", protocol, o.overrides(sets, **o.fields("ablate", locals())),
                             base.pretrain_defaults(protocol) if base is not None else None)
    _runtime(pre, log_every)
    linear_for = lazy.linear_protocols(linear_protocol, base,
                                          o.overrides(linear_sets, device=device, threads=threads))
    target = out_dir or Path(f"runs/ablate-{pre.method.name}-{'-'.join(ab.remove)}")
    r = lazy.run_ablate(ab, pre, linear_for, target, baseline=base, resume=resume, force=force, quiet=quiet,
                           console=err)
    drop = (f", drop {r['drop']:.2f} points from the baseline's {r['baseline_top1']:.2f}%"
            if r["drop"] is not None else "")
    _result(as_json, target, f"{r['method']} without {', '.join(r['removed'])}: linear top-1 {r['top1']:.2f}%{drop}"
                             f"\nresult: {lazy.RunDir(target).result}")


@command(epilog=examples("leoclr export runs/in1k/backbone.safetensors --to detectron2 --out r50.pkl",
                         "leoclr export runs/mine --to torchvision --out mine.pth"))
def export(
    backbone: Path = o.Target, to: str = o.ExportTo, out_file: Path = o.ExportOut, seed: Optional[int] = o.EvalSeed,
) -> None:
    """Export a backbone for another framework: Detectron2 (a .pkl), torchvision or timm (a .pth state dict)."""
    if to != "detectron2" and to not in lazy.STATE_DICT_TARGETS:
        raise UserError(f"--to {to!r} is not a known export format; choose detectron2, torchvision or timm")
    path, _, _ = lazy.backbone_and_defaults(backbone, seed=seed, out_dir=out_file)
    if to != "detectron2":
        r = lazy.export_state_dict(path, out_file.expanduser(), to)
        out.print(f"wrote {out_file} ({r['tensors']} tensors; {r['build']}.load_state_dict(torch.load('{out_file}', "
                  f"weights_only=True), strict=False) leaves {r['missing']} missing)", highlight=False, soft_wrap=True)
        return
    n = lazy.write_detectron2_pickle(path, out_file.expanduser())
    out.print(f"wrote {out_file} ({n} tensors in Detectron2 names; load it with MODEL.WEIGHTS {out_file})")


@command(epilog=examples("leoclr embed runs/mine --data ~/photos -o emb.safetensors",
                         "leoclr embed runs/mine --data ~/photos --head -o emb.parquet"))
def embed(
    target: Path = o.Target, data: Path = o.EmbedData, out_file: Path = o.EmbedOut, source: Optional[str] = o.EmbedSource,
    split: Optional[str] = o.EmbedSplit, head: bool = o.Head, batch_size: int = o.EmbedBatch,
    workers: int = o.EmbedWorkers, device: str = o.EmbedDevice, on_bad_image: str = o.EmbedOnBadImage,
    seed: Optional[int] = o.EvalSeed, force: bool = o.EmbedForce, quiet: bool = o.Quiet, threads: Optional[int] = o.Threads,
) -> None:
    """One row per image: its path, its label (-1: none), the backbone's pooled feature (and --head's output)."""
    source = lazy.source_for("embed", None, None, source, data, say)
    lazy.cpu_threads.apply(threads, workers)
    r = lazy.run_embed(target, data, out_file, source=source, split=split, head=head, batch_size=batch_size,
                       num_workers=workers, device=device, on_bad_image=on_bad_image, seed=seed or 0, force=force,
                       quiet=quiet, console=err)
    left = f" ({r['left_out']} undecodable images left out)" if r["left_out"] else ""
    out.print(f"embedded {r['rows']} images of {r['source']} data ({r['dim']} features{', head' if head else ''})"
              f"{left}: {out_file}", highlight=False, soft_wrap=True)


@command(epilog=examples(
    "leoclr detect voc runs/in1k --data ~/data/VOCdevkit --backend torchvision",
    "leoclr detect coco runs/coco --data ~/data/coco --schedule 1x",
    "leoclr detect voc runs/in1k --data ~/data/VOCdevkit --resume auto"))
def detect(
    dataset: str = o.DetectDataset, target: Path = o.Target, protocol: Optional[Path] = o.Protocol,
    data: Optional[Path] = o.DetectData, schedule: Optional[str] = o.Schedule, backend: Optional[str] = o.Backend,
    gpus: Optional[int] = o.Gpus, trials: Optional[int] = o.Trials, seed: Optional[int] = o.Seed,
    workers: Optional[int] = o.Workers, device: Optional[str] = o.Device, out_dir: Optional[Path] = o.DetectOut,
    resume: Optional[str] = o.PartsResume, force: bool = o.Force, quiet: bool = o.Quiet,
    log_every: Optional[int] = o.LogEvery, threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets,
    as_json: bool = o.Json,
) -> None:
    """Faster R-CNN R50-C4 transfer (MoCo's recipe): VOC07+12 -> VOC07 test, or COCO train2017 -> val2017."""
    if dataset not in ("voc", "coco"):
        raise UserError(f"dataset {dataset!r} is not known; choose voc or coco")
    backbone, parent, defaults = lazy.backbone_and_defaults(target, seed=seed, out_dir=out_dir)
    p = lazy.load_protocol("detect", protocol, o.overrides(sets, **o.fields("detect", locals())),
                           lazy.pixel_stats(defaults))
    _runtime(p, log_every)
    run_dir = out_dir or parent / f"detect-{dataset}"
    r = lazy.run_detect(p, backbone, run_dir, resume=resume, force=force, quiet=quiet, console=err)
    spread = (lambda k: f" ± {r[k + '_std']:.2f}" if r["trials"] > 1 else "")
    trials = f"{r['trials']} trial{'s' if r['trials'] > 1 else ''}"
    _result(as_json, run_dir, f"{dataset} detection ({r['backend']}, {trials}): AP {r['AP']:.2f}{spread('AP')}, "
                              f"AP50 {r['AP50']:.2f}{spread('AP50')}, AP75 {r['AP75']:.2f}{spread('AP75')}")


@command(epilog=examples(
    "leoclr finetune runs/in1k --labels 1% --data ~/data/imagenet",
    "leoclr finetune runs/c10 --labels 1,10,100 -p protocols/finetune_cifar10.yaml"))
def finetune(
    target: Path = o.Target, labels: Optional[str] = o.Labels, subset_file: Optional[Path] = o.SubsetFile,
    protocol: Optional[Path] = o.Protocol, data: Optional[Path] = o.LabelledData, source: Optional[str] = o.Source,
    epochs: Optional[int] = o.FinetuneEpochs, lr: Optional[float] = o.Lr, batch_size: Optional[int] = o.Batch,
    seed: Optional[int] = o.FinetuneSeed, workers: Optional[int] = o.Workers, device: Optional[str] = o.Device,
    out_dir: Optional[Path] = o.FinetuneOut, resume: Optional[str] = o.Resume, force: bool = o.Force,
    quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery, threads: Optional[int] = o.Threads,
    sets: Optional[List[str]] = o.Sets, as_json: bool = o.Json,
) -> None:
    """Semi-supervised fine-tuning of all layers on a labelled subset (SimCLR's protocol); top-1 / top-5."""
    fractions = lazy.label_fractions(labels, subset_file)
    source, backbone, parent, defaults = lazy.evaluation_inputs("finetune", target, protocol, sets, source, data,
                                                                   seed, out_dir, say)
    flags = o.fields("finetune", locals())
    ps = [lazy.load_protocol("finetune", protocol, o.overrides(sets, **flags, labels=f), defaults) for f in fractions]
    _runtime(ps[0], log_every)
    if len(ps) > 1:
        sweep_dir = out_dir or parent / "finetune"
        summary = lazy.run_finetune_sweep(ps, backbone, sweep_dir, resume=resume, force=force, quiet=quiet, console=err)
        if as_json:
            return _result(True, sweep_dir, "", lazy.FinetuneSweepResult.file)
        return print_table(lazy.sweep_table(summary))
    run_dir = out_dir or parent / f"finetune-{ps[0].labels:g}pct"
    r = lazy.run_finetune(ps[0], backbone, run_dir, resume=resume, force=force, quiet=quiet, console=err)
    _result(as_json, run_dir, f"fine-tuned {backbone} on {r['labels']:g}% labels ({r['num_labelled']} images, "
                              f"{r['epochs']} epochs): top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%")


@command(epilog=examples(
    "leoclr transfer runs/in1k cars --data ~/data/cars",
    "leoclr transfer runs/in1k pets --data ~/data/pets --mode linear",
    "leoclr transfer runs/in1k cars --data ~/data/cars --resume auto"))
def transfer(
    target: Path = o.Target, dataset: str = o.TransferDataset, data: Optional[Path] = o.TransferData,
    mode: Optional[str] = o.Mode, protocol: Optional[Path] = o.Protocol, batch_size: Optional[int] = o.Batch,
    workers: Optional[int] = o.Workers, seed: Optional[int] = o.EvalSeed, device: Optional[str] = o.Device,
    out_dir: Optional[Path] = o.TransferOut, resume: Optional[str] = o.PartsResume, force: bool = o.Force,
    quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery, threads: Optional[int] = o.Threads,
    sets: Optional[List[str]] = o.Sets, as_json: bool = o.Json,
) -> None:
    """Transfer (Kornblith et al.): grid on a 20% validation split, refit on train+val, one test score."""
    backbone, parent, defaults = lazy.backbone_and_defaults(target, seed=seed, out_dir=out_dir)
    p = lazy.load_protocol("transfer", protocol, o.overrides(sets, **o.fields("transfer", locals())),
                           lazy.own_stats(defaults))
    _runtime(p, log_every)
    run_dir = out_dir or parent / f"transfer-{p.dataset}-{p.mode}"
    r = lazy.run_transfer(p, backbone, run_dir, resume=resume, force=force, quiet=quiet, console=err)
    best = f"C {r['best_c']:.3g}" if p.mode == "linear" else f"lr {r['best_lr']:.3g}, wd {r['best_wd']:.3g}"
    present = (f" ({r['images_present']} of {r['images_listed']} listed images present)"
               if "images_present" in r else "")
    _result(as_json, run_dir, f"transfer of {backbone} to {p.dataset}{present}, {p.mode}: {r['metric']} "
                              f"{r['value']:.2f}% (best {best}, validation {r['val']:.2f}%)")


# --------------------------------------------------------------------------- protocols

protocols_app = typer.Typer(add_completion=False, epilog=examples(
    "leoclr protocols", "leoclr protocols show quickstart", "leoclr protocols show linear-eval --fields"))
app.add_typer(protocols_app, name="protocols")


@protocols_app.callback(invoke_without_command=True)
def protocols(ctx: typer.Context) -> None:
    """The protocols installed with leoclr, each with its kind and purpose (use one with -p NAME)."""
    if ctx.invoked_subcommand is None:
        print_table(rows_table("Protocols (-p NAME)", ("name", "kind", "purpose"), lazy.listing()))


@protocols_app.command("show", epilog=examples("leoclr protocols show quickstart --fields"))
def protocols_show(name: str = o.ShowName, fields: bool = o.ShowFields) -> None:
    """Print a protocol with every field resolved (the defaults filled in), or each field's type, value and help."""
    model, path, tree = lazy.describe(name, lazy.PROTOCOLS)
    if fields:
        rows = [(f, t, "null" if v is None else str(v), d) for f, t, v, d in lazy.field_rows(model, tree)]
        print_table(rows_table(f"Fields of {name}", ("field", "type", "value", "description"), rows))
        return
    head = f"# {name}: {path}" if path else f"# the built-in defaults of a {name} protocol"
    out.print(f"{head}\n{lazy.dump(tree)}", markup=False, highlight=False, soft_wrap=True, end="")


# --------------------------------------------------------------------------- report, quickstart, bench


@command(epilog=examples("leoclr report runs/ --out report/"))
def report(run_dirs: List[Path] = o.RunDirs, out_dir: Path = o.ReportOut, force: bool = o.ReportForce) -> None:
    """The paper's Tables 1-9 with our numbers beside them (Markdown), Figures 3-4 and the training curves (PNG)."""
    r = lazy.build_report(run_dirs, out_dir, force=force)
    runs = ", ".join(f"{n} {k}" for k, n in r["runs"].items()) or "none"
    out.print(f"report: {r['report']} (runs read: {runs}; files not used: {r['ignored']})\nfigures: "
              + ", ".join(str(f) for f in r["figures"]))


@command(epilog=examples("leoclr quickstart", "leoclr quickstart --seeds 3",
                             "leoclr quickstart --method leoclr --crops contrastive"))
def quickstart(
    methods: Optional[List[str]] = o.Methods, seeds: int = o.Seeds, crops: Optional[str] = o.Crops,
    epochs: Optional[int] = o.Epochs, out_dir: Optional[Path] = o.QuickstartOut, force: bool = o.Force,
    quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery, threads: Optional[int] = o.Threads,
    sets: Optional[List[str]] = o.Sets,
) -> None:
    """Pretrain LeOCLR and MoCo-v2 on the built-in data, linear-probe both and a random-init backbone."""
    progress.configure(log_every)
    default_dir = "runs/quickstart" + (f"-{crops}" if crops and crops != "random" else "")
    result = lazy.run_quickstart(methods or lazy.DEFAULT_METHODS, out_dir or Path(default_dir), seeds=seeds,
                                    epochs=epochs, force=force, quiet=quiet, console=err,
                                    overrides=o.overrides(sets, **o.fields("quickstart", locals())))
    print_table(lazy.summary_table(result["summary"], seeds))


@command(epilog=examples("leoclr bench", "leoclr bench --device cuda --arch resnet50 --size 224 -b 256 -j 16"))
def bench(
    device: Optional[str] = o.Device, arch: str = o.BenchArch, size: int = o.BenchSize, view_size: int = o.ViewSize,
    batch_size: int = o.BenchBatch, steps: int = o.BenchSteps, images: int = o.BenchImages,
    workers: int = o.BenchWorkers, rounds: int = o.BenchRounds, threads: Optional[int] = o.Threads,
    json_out: Optional[Path] = o.BenchJson,
) -> None:
    """Samples/s of the view pipelines, the train step and end to end, MoCo-v2 vs LeOCLR, on this device."""
    lazy.cpu_threads.apply(threads, workers)
    rows, ratio = lazy.run_bench(device=device or "auto", arch=arch, size=size, batch_size=batch_size, steps=steps,
                                 images=images, view_size=view_size, workers=workers, rounds=rounds, json_out=json_out)
    print_table(lazy.bench_table(rows, arch=arch, batch_size=batch_size, view_size=view_size, size=size))
    out.print(f"LeOCLR/MoCo-v2 cost per sample (train step): {ratio:.2f}x (paper, 3 A100s end to end: 1.19x)")


# --------------------------------------------------------------------------- pictures, shards, checkpoints


@command(epilog=examples("leoclr views --protocol protocols/quickstart.yaml --out views.png"))
def views(
    protocol: Optional[Path] = o.Protocol, method: Optional[str] = o.Method, data: Optional[str] = o.ViewsData,
    source: Optional[str] = o.PretrainSource, split: Optional[str] = o.ViewsSplit, out_file: Path = o.ViewsOut,
    count: int = o.ViewsCount, cell: Optional[int] = o.ViewsCell, sets: Optional[List[str]] = o.Sets,
) -> None:
    """A PNG grid of images sampled across classes, each beside its views (before normalisation), boxes drawn."""
    lazy.check_png_name(out_file)
    source = lazy.source_for("pretrain", protocol, sets, source, data, say)
    p = lazy.pretrain_protocol(protocol, o.overrides(sets, **o.fields("views", locals())), say)
    lines = lazy.views_picture(p, out_file, count, cell)
    out.print("\n".join(lines) + f"\n{len(lines)} images of {p.data.source} with their {p.method.name} views (crop "
              f"boxes drawn on each image): {out_file}", highlight=False, soft_wrap=True)


@command(epilog=examples("leoclr shards --data ~/data/mine --out shards/train-%06d.tar"))
def shards(
    data: Path = o.ShardsData, out_pattern: str = o.ShardsOut, source: str = o.ShardsSource, split: str = o.ShardsSplit,
    per_shard: int = o.PerShard, seed: int = o.ShardsSeed, force: bool = o.ShardsForce,
) -> None:
    """Write a dataset as WebDataset tar shards, for data.source webdataset."""
    src = lazy.open_data(source, str(data.expanduser()), split, builtin_n=4000)
    r = lazy.write_shards(src, out_pattern, per_shard=per_shard, seed=seed, force=force,
                     log=lambda line: err.print(line, highlight=False))
    out.print(f"wrote {r['samples']} images of {source} {split} in {r['shards']} shards; pretrain on them with\n"
              f"  leoclr pretrain --source webdataset --data '{r['pattern']}' ...", highlight=False, soft_wrap=True)


@command(epilog=examples("leoclr boxes runs/c10-cc --out boxes.png"))
def boxes(
    run_dir: Path = o.BoxesRun, out_file: Path = o.BoxesOut, count: int = o.BoxesCount, cell: int = o.BoxesCell,
) -> None:
    """Draw the ContrastiveCrop boxes of a run on a grid of its first images (RUN/boxes.safetensors)."""
    r = lazy.boxes_picture(run_dir, out_file, count, cell)
    out.print(f"{r['images']} images with their {r['mode']} boxes (computed after epoch {r['epoch']}; "
              f"{100 * r['whole']:.0f}% of all boxes are the whole image): {out_file}")


@command(epilog=examples("leoclr info runs/c10/backbone.safetensors"))
def info(path: Path = o.InfoPath) -> None:
    """Show a checkpoint's metadata and tensor count (reads the header; unpickles nothing)."""
    tensors, meta = lazy.ckpt.load_tensors(path)
    for key in sorted(meta):
        value = meta[key]
        out.print(f"{key}: {value if len(value) < 200 else value[:200] + '...'}", highlight=False)
    out.print(f"tensors: {len(tensors)} ({sum(t.numel() for t in tensors.values()):,} values)")


@command("import", epilog=examples("leoclr import moco_v2_800ep_pretrain.pth.tar --out moco800.safetensors"))
def import_(
    src: Path = o.ImportSrc, out_file: Path = o.ImportOut, arch: Optional[str] = o.ImportArch,
    force: bool = o.ImportForce,
) -> None:
    """Import a foreign PyTorch checkpoint's backbone (torch.load with weights_only=True; no code runs)."""
    if out_file.exists() and not force:
        raise UserError(f"{out_file} already exists; use --force to overwrite it")
    r = lazy.ckpt.import_torch_checkpoint(src, out_file, arch=arch)
    out.print(f"imported {r['tensors']} tensors of a {r['arch']} (keys under '{r['prefix']}', fc dropped) "
              f"into {r['out']}")


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except (UserError, OSError) as e:  # OSError: a write no helper caught (a plot, a log), the same one sentence
        e = as_user_error(e)
        err.print(f"{getattr(e, 'prefix', 'error')}: {e.sentence()}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
