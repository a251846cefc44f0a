"""The ``leoclr`` command line: each command parses, builds its protocol, calls one runner, prints a summary.

Every user-fixable problem is a :class:`UserError`: one sentence on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from . import options as o
from .console import err, out, print_table, say
from .config import load_protocol
from .core import checkpoint as ckpt
from .core import progress
from .core import threads as cpu_threads
from .core.rundir import RunDir
from .data import open_data
from .data.shards import write_shards
from .detection.export import write_detectron2_pickle
from .detection.run import run_detect
from .errors import UserError
from .evaluate.crop_test import linear_run_defaults, run_crop_test
from .evaluate.finetune import label_fractions, run_finetune, run_finetune_sweep, sweep_table
from .evaluate.inputs import backbone_and_defaults, evaluation_inputs, own_stats, pixel_stats, source_for, switch_source
from .evaluate.knn_run import run_knn
from .evaluate.linear import describe_selection, find_linear_run, run_linear_eval
from .evaluate.transfer import run_transfer
from .report.pictures import boxes_picture, check_png_name, views_picture
from .report.report import build_report
from .workflows.ablate import ablation, linear_protocols, run_ablate
from .workflows.bench import bench_table, run_bench
from .workflows.pretrain import run_pretrain
from .workflows.quickstart import DEFAULT_METHODS, run_quickstart, summary_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LeOCLR / MoCo-v2 pretraining and the paper's evaluation protocols.")


def examples(*lines: str) -> str:
    """A command's --help epilog: 1-3 real command lines, each also in the README and short enough for an
    80-column help (tests/test_help.py checks both and that they parse)."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


def _runtime(p: Any, log_every: Optional[int]) -> None:
    """Before the runner: progress lines every ``log_every`` steps, and ``p.threads`` CPU threads (or
    the default share of the cores, given the protocol's loader workers)."""
    progress.configure(log_every)
    data = getattr(p, "data", None)
    cpu_threads.apply(p.threads, data.num_workers if data is not None else p.num_workers)


# --------------------------------------------------------------------------- pretrain


def pretrain_protocol(protocol: Optional[Path], flags: dict[str, Any]) -> Any:
    """The pretraining protocol of ``-p`` and the flags; for your own images (source folder) without ``-p``,
    ``own_data.yaml`` sized to them by its rule, which one line on stderr states."""
    if protocol is not None or flags.get("data.source") != "folder":
        return load_protocol("pretrain", protocol, flags)
    from .workflows.own_data import own_data_protocol

    p, chosen = own_data_protocol(flags)
    say(chosen)
    return p


@app.command(epilog=examples(
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
) -> None:
    """Pretrain a backbone (LeOCLR, MoCo-v2, SimCLR and the paper's variants); writes RUN/backbone.safetensors."""
    source = source_for("pretrain", protocol, sets, source, data, say)
    flags = o.overrides(
        sets, **{"method.name": method, "augment.crops": crops, "data.split": split, "model.arch": arch,
                 "optim.epochs": epochs, "optim.batch_size": batch_size, "optim.lr": lr, "data.num_workers": workers,
                 "seed": seed, "device": device, "data.on_bad_image": on_bad_image,
                 "checkpoint_every_steps": checkpoint_every_steps, "threads": threads}, **o.data_flags(source, data))
    p = pretrain_protocol(protocol, flags)
    _runtime(p, log_every)
    r = run_pretrain(p, out_dir, resume=resume, force=force, quiet=quiet, console=err)
    if not r["rank"]:  # under torchrun only rank 0 reports
        knn = f", kNN top-1 {r['knn_top1']:.2f}%" if r["knn_top1"] is not None else ""
        out.print(f"pretrained {r['method']} {r['arch']} for {r['epochs']} epochs: final loss {r['final_loss']:.4f}"
                  f"{knn}\nbackbone: {r['backbone']}")


# --------------------------------------------------------------------------- evaluation


@app.command("linear-eval", epilog=examples(
    "leoclr linear-eval runs/c10 --data ~/data/cifar10",
    "leoclr linear-eval runs/mine --data ~/data/mine"))
def linear_eval(
    target: Path = o.Target, protocol: Optional[Path] = o.Protocol, data: Optional[Path] = o.LabelledData,
    source: Optional[str] = o.Source, epochs: Optional[int] = o.Epochs, lr: Optional[float] = o.Lr,
    batch_size: Optional[int] = o.Batch, train_augment: Optional[str] = o.TrainAugment, probe: Optional[str] = o.Probe,
    selection: Optional[str] = o.Selection, workers: Optional[int] = o.Workers, seed: Optional[int] = o.EvalSeed,
    device: Optional[str] = o.Device, out_dir: Optional[Path] = o.LinearOut, resume: Optional[str] = o.Resume,
    force: bool = o.Force, quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery,
    threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets,
) -> None:
    """Linear evaluation of a frozen backbone: the probe chosen on validation, top-1 / top-5 on test."""
    source, backbone, parent, defaults = evaluation_inputs("linear-eval", target, protocol, sets, source, data, seed,
                                                           out_dir, say)
    p = load_protocol("linear-eval", protocol, o.overrides(
        sets, epochs=epochs, lr=lr, batch_size=batch_size, train_augment=train_augment, probe=probe,
        selection=selection, device=device, seed=seed, threads=threads, **{"data.num_workers": workers},
        **o.data_flags(source, data)), defaults)
    _runtime(p, log_every)
    r = run_linear_eval(p, backbone, out_dir or RunDir(parent).linear_eval.path, resume=resume, force=force,
                        quiet=quiet, console=err)
    out.print(f"linear eval of {backbone}: top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}% ({describe_selection(r)})")


@app.command(epilog=examples("leoclr knn runs/c10/backbone.safetensors --data ~/data/cifar10"))
def knn(
    target: Path = o.Target, protocol: Optional[Path] = o.Protocol, data: Optional[Path] = o.LabelledData,
    source: Optional[str] = o.Source, k: Optional[int] = o.K, t: Optional[float] = o.T,
    seed: Optional[int] = o.EvalSeed, device: Optional[str] = o.Device, out_dir: Optional[Path] = o.KnnOut,
    force: bool = o.Force, quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery,
    threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets,
) -> None:
    """Weighted kNN accuracy (k = 200, t = 0.1) of a frozen backbone."""
    source, backbone, parent, defaults = evaluation_inputs("knn", target, protocol, sets, source, data, seed, out_dir,
                                                           say)
    p = load_protocol("knn", protocol, o.overrides(sets, k=k, t=t, device=device, threads=threads,
                                                  **o.data_flags(source, data)), defaults)
    _runtime(p, log_every)
    r = run_knn(p, backbone, out_dir or parent / "knn", force=force, quiet=quiet, console=err)
    out.print(f"kNN (k={p.k}, t={p.t}) of {backbone}: top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%")


@app.command("crop-test", epilog=examples("leoclr crop-test runs/in1k-200/linear-eval"))
def crop_test(
    target: Path = o.LinearRun, protocol: Optional[Path] = o.Protocol, backbone: Optional[Path] = o.MovedBackbone,
    data: Optional[Path] = o.LabelledData, source: Optional[str] = o.Source, repeats: Optional[int] = o.Repeats,
    device: Optional[str] = o.Device, out_dir: Optional[Path] = o.CropTestOut, force: bool = o.Force,
    threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets,
) -> None:
    """Table 7: the linear classifier under the center-crop and the random-crop test; both and the drop."""
    linear_dir, _ = find_linear_run(target)
    source = source_for("crop-test", protocol, sets, source, data, say)
    defaults = linear_run_defaults(linear_dir)
    switch_source(defaults, source)
    p = load_protocol("crop-test", protocol, o.overrides(sets, repeats=repeats, device=device, threads=threads,
                                                        **o.data_flags(source, data)), defaults)
    _runtime(p, None)
    r = run_crop_test(p, linear_dir, out_dir or linear_dir / "crop-test", backbone=backbone, force=force)
    out.print(f"crop test of {linear_dir}: center crop {r['center_top1']:.2f}%, random crop {r['random_top1']:.2f}% "
              f"(drop {r['drop']:.2f} points; paper, ImageNet 200 ep: MoCo-v2 4.3, LeOCLR 2.8)")


@app.command(epilog=examples("leoclr ablate --remove color --baseline runs/in1k-200 -o runs/in1k-nocolor"))
def ablate(
    remove: List[str] = o.Remove, baseline: Optional[Path] = o.Baseline, metric: Optional[str] = o.Metric,
    protocol: Optional[Path] = o.AblateProtocol, method: Optional[str] = o.Method, data: Optional[Path] = o.RawData,
    source: Optional[str] = o.Source, arch: Optional[str] = o.Arch, epochs: Optional[int] = o.Epochs,
    batch_size: Optional[int] = o.Batch, workers: Optional[int] = o.Workers, seed: Optional[int] = o.Seed,
    device: Optional[str] = o.Device, linear_protocol: Optional[Path] = o.LinearProtocol,
    linear_sets: Optional[List[str]] = o.LinearSets, out_dir: Optional[Path] = o.AblateOut,
    resume: bool = o.AblateResume, force: bool = o.Force, quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery,
    threads: Optional[int] = o.Threads, sets: Optional[List[str]] = o.Sets,
) -> None:
    """Figure 4: pretrain with augmentation parts removed, linear-evaluate, report the drop vs --baseline."""
    ab, base = ablation(remove, baseline, metric)
    source = source_for("pretrain", protocol, sets, source, data, say)
    pre = load_protocol("pretrain", protocol, o.overrides(
        sets, **{"method.name": method, "model.arch": arch, "optim.epochs": epochs, "optim.batch_size": batch_size,
                 "data.num_workers": workers, "seed": seed, "device": device, "threads": threads},
        **o.data_flags(source, data)), base.pretrain_defaults(protocol) if base is not None else None)
    _runtime(pre, log_every)
    linear_for = linear_protocols(linear_protocol, base, o.overrides(linear_sets, device=device, threads=threads))
    target = out_dir or Path(f"runs/ablate-{pre.method.name}-{'-'.join(ab.remove)}")
    r = run_ablate(ab, pre, linear_for, target, baseline=base, resume=resume, force=force, quiet=quiet, console=err)
    drop = (f", drop {r['drop']:.2f} points from the baseline's {r['baseline_top1']:.2f}%"
            if r["drop"] is not None else "")
    out.print(f"{r['method']} without {', '.join(r['removed'])}: linear top-1 {r['top1']:.2f}%{drop}\nresult: "
              f"{RunDir(target).result}")


@app.command(epilog=examples("leoclr export runs/in1k/backbone.safetensors --to detectron2 --out r50.pkl",
                             "leoclr export runs/mine --to torchvision --out mine.pth"))
def export(
    backbone: Path = o.Target, to: str = o.ExportTo, out_file: Path = o.ExportOut, seed: Optional[int] = o.EvalSeed,
) -> None:
    """Export a backbone for another framework: Detectron2 (a .pkl), torchvision or timm (a .pth state dict)."""
    from .core.backbone import STATE_DICT_TARGETS, export_state_dict

    if to != "detectron2" and to not in STATE_DICT_TARGETS:
        raise UserError(f"--to {to!r} is not a known export format; choose detectron2, torchvision or timm")
    path, _, _ = backbone_and_defaults(backbone, seed=seed, out_dir=out_file)
    if to != "detectron2":
        r = export_state_dict(path, out_file.expanduser(), to)
        out.print(f"wrote {out_file} ({r['tensors']} tensors; {r['build']}.load_state_dict(torch.load('{out_file}'), "
                  "strict=False) leaves only fc.* missing)", highlight=False, soft_wrap=True)
        return
    n = write_detectron2_pickle(path, out_file.expanduser())
    out.print(f"wrote {out_file} ({n} tensors in Detectron2 names; load it with MODEL.WEIGHTS {out_file})")


@app.command(epilog=examples("leoclr embed runs/mine --data ~/photos -o emb.safetensors",
                             "leoclr embed runs/mine --data ~/photos --head -o emb.parquet"))
def embed(
    target: Path = o.Target, data: Path = o.EmbedData, out_file: Path = o.EmbedOut, source: Optional[str] = o.Source,
    split: Optional[str] = o.EmbedSplit, head: bool = o.Head, batch_size: int = o.EmbedBatch,
    workers: int = o.EmbedWorkers, device: str = o.EmbedDevice, on_bad_image: str = o.EmbedOnBadImage,
    seed: Optional[int] = o.EvalSeed, force: bool = o.EmbedForce, quiet: bool = o.Quiet, threads: Optional[int] = o.Threads,
) -> None:
    """One row per image: its path, its label (-1: none), the backbone's pooled feature (and --head's output)."""
    from .evaluate.embed import run_embed

    source = source_for("embed", None, None, source, data, say)
    cpu_threads.apply(threads, workers)
    r = run_embed(target, data, out_file, source=source, split=split, head=head, batch_size=batch_size,
                  num_workers=workers, device=device, on_bad_image=on_bad_image, seed=seed or 0, force=force,
                  quiet=quiet, console=err)
    left = f" ({r['left_out']} undecodable images left out)" if r["left_out"] else ""
    out.print(f"embedded {r['rows']} images of {r['source']} data ({r['dim']} features{', head' if head else ''})"
              f"{left}: {out_file}", highlight=False, soft_wrap=True)


@app.command(epilog=examples(
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
) -> None:
    """Faster R-CNN R50-C4 transfer (MoCo's recipe): VOC07+12 -> VOC07 test, or COCO train2017 -> val2017."""
    if dataset not in ("voc", "coco"):
        raise UserError(f"dataset {dataset!r} is not known; choose voc or coco")
    backbone, parent, defaults = backbone_and_defaults(target, seed=seed, out_dir=out_dir)
    p = load_protocol("detect", protocol, o.overrides(
        sets, dataset=dataset, schedule=schedule, backend=backend, gpus=gpus, trials=trials, seed=seed,
        device=device, threads=threads, num_workers=workers, root=o.expand(data)), pixel_stats(defaults))
    _runtime(p, log_every)
    r = run_detect(p, backbone, out_dir or parent / f"detect-{dataset}", resume=resume, force=force, quiet=quiet,
                   console=err)
    spread = (lambda k: f" ± {r[k + '_std']:.2f}" if r["trials"] > 1 else "")
    out.print(f"{dataset} detection ({r['backend']}, {r['trials']} trial{'s' if r['trials'] > 1 else ''}): "
              f"AP {r['AP']:.2f}{spread('AP')}, AP50 {r['AP50']:.2f}{spread('AP50')}, "
              f"AP75 {r['AP75']:.2f}{spread('AP75')}")


@app.command(epilog=examples(
    "leoclr finetune runs/in1k --labels 1% --data ~/data/imagenet",
    "leoclr finetune runs/c10 --labels 1,10,100 -p protocols/finetune_cifar10.yaml"))
def finetune(
    target: Path = o.Target, labels: Optional[str] = o.Labels, subset_file: Optional[Path] = o.SubsetFile,
    protocol: Optional[Path] = o.Protocol, data: Optional[Path] = o.LabelledData, source: Optional[str] = o.Source,
    epochs: Optional[int] = o.FinetuneEpochs, lr: Optional[float] = o.Lr, batch_size: Optional[int] = o.Batch,
    seed: Optional[int] = o.FinetuneSeed, workers: Optional[int] = o.Workers, device: Optional[str] = o.Device,
    out_dir: Optional[Path] = o.FinetuneOut, resume: Optional[str] = o.Resume, force: bool = o.Force,
    quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery, threads: Optional[int] = o.Threads,
    sets: Optional[List[str]] = o.Sets,
) -> None:
    """Semi-supervised fine-tuning of all layers on a labelled subset (SimCLR's protocol); top-1 / top-5."""
    fractions = label_fractions(labels, subset_file)
    source, backbone, parent, defaults = evaluation_inputs("finetune", target, protocol, sets, source, data, seed,
                                                           out_dir, say)
    flags = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "subset_seed": seed, "device": device,
             "data.num_workers": workers, "subset_file": o.expand(subset_file), "threads": threads,
             **o.data_flags(source, data)}
    ps = [load_protocol("finetune", protocol, o.overrides(sets, **flags, labels=f), defaults) for f in fractions]
    _runtime(ps[0], log_every)
    if len(ps) > 1:
        summary = run_finetune_sweep(ps, backbone, out_dir or parent / "finetune", resume=resume, force=force,
                                     quiet=quiet, console=err)
        print_table(sweep_table(summary))
        return
    r = run_finetune(ps[0], backbone, out_dir or parent / f"finetune-{ps[0].labels:g}pct", resume=resume,
                     force=force, quiet=quiet, console=err)
    out.print(f"fine-tuned {backbone} on {r['labels']:g}% labels ({r['num_labelled']} images, {r['epochs']} "
              f"epochs): top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%")


@app.command(epilog=examples(
    "leoclr transfer runs/in1k cars --data ~/data/cars",
    "leoclr transfer runs/in1k pets --data ~/data/pets --mode linear",
    "leoclr transfer runs/in1k cars --data ~/data/cars --resume auto"))
def transfer(
    target: Path = o.Target, dataset: str = o.TransferDataset, data: Optional[Path] = o.TransferData,
    mode: Optional[str] = o.Mode, protocol: Optional[Path] = o.Protocol, batch_size: Optional[int] = o.Batch,
    workers: Optional[int] = o.Workers, seed: Optional[int] = o.EvalSeed, device: Optional[str] = o.Device,
    out_dir: Optional[Path] = o.TransferOut, resume: Optional[str] = o.PartsResume, force: bool = o.Force,
    quiet: bool = o.Quiet, log_every: Optional[int] = o.LogEvery, threads: Optional[int] = o.Threads,
    sets: Optional[List[str]] = o.Sets,
) -> None:
    """Transfer (Kornblith et al.): grid on a 20% validation split, refit on train+val, one test score."""
    backbone, parent, defaults = backbone_and_defaults(target, seed=seed, out_dir=out_dir)
    p = load_protocol("transfer", protocol, o.overrides(
        sets, dataset=dataset, mode=mode, batch_size=batch_size, device=device, num_workers=workers, threads=threads,
        seed=seed, root=o.expand(data)), own_stats(defaults))
    _runtime(p, log_every)
    r = run_transfer(p, backbone, out_dir or parent / f"transfer-{p.dataset}-{p.mode}", resume=resume, force=force,
                     quiet=quiet, console=err)
    best = f"C {r['best_c']:.3g}" if p.mode == "linear" else f"lr {r['best_lr']:.3g}, wd {r['best_wd']:.3g}"
    present = (f" ({r['images_present']} of {r['images_listed']} listed images present)"
               if "images_present" in r else "")
    out.print(f"transfer of {backbone} to {p.dataset}{present}, {p.mode}: {r['metric']} {r['value']:.2f}% "
              f"(best {best}, validation {r['val']:.2f}%)")


# --------------------------------------------------------------------------- report, quickstart, bench


@app.command(epilog=examples("leoclr report runs/ --out report/"))
def report(run_dirs: List[Path] = o.RunDirs, out_dir: Path = o.ReportOut, force: bool = o.ReportForce) -> None:
    """The paper's Tables 1-9 with our numbers beside them (Markdown), Figures 3-4 and the training curves (PNG)."""
    r = build_report(run_dirs, out_dir, force=force)
    runs = ", ".join(f"{n} {k}" for k, n in r["runs"].items()) or "none"
    out.print(f"report: {r['report']} (runs read: {runs}; files not used: {r['ignored']})\nfigures: "
              + ", ".join(str(f) for f in r["figures"]))


@app.command(epilog=examples("leoclr quickstart", "leoclr quickstart --seeds 3",
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
    result = run_quickstart(methods or DEFAULT_METHODS, out_dir or Path(default_dir), seeds=seeds, epochs=epochs,
                            force=force, quiet=quiet, console=err,
                            overrides=o.overrides(sets, **{"augment.crops": crops, "threads": threads}))
    print_table(summary_table(result["summary"], seeds))


@app.command(epilog=examples("leoclr bench", "leoclr bench --device cuda --arch resnet50 --size 224 -b 256 -j 16"))
def bench(
    device: Optional[str] = o.Device, arch: str = o.BenchArch, size: int = o.BenchSize, view_size: int = o.ViewSize,
    batch_size: int = o.BenchBatch, steps: int = o.BenchSteps, images: int = o.BenchImages,
    workers: int = o.BenchWorkers, threads: Optional[int] = o.Threads, json_out: Optional[Path] = o.BenchJson,
) -> None:
    """Samples/s of the view pipelines, the train step and end to end, MoCo-v2 vs LeOCLR, on this device."""
    cpu_threads.apply(threads, workers)
    rows, ratio = run_bench(device=device or "auto", arch=arch, size=size, batch_size=batch_size, steps=steps,
                            images=images, view_size=view_size, workers=workers, json_out=json_out)
    print_table(bench_table(rows, arch=arch, batch_size=batch_size, view_size=view_size, size=size))
    out.print(f"LeOCLR/MoCo-v2 cost per sample (train step): {ratio:.2f}x (paper, 3 A100s end to end: 1.19x)")


# --------------------------------------------------------------------------- pictures, shards, checkpoints


@app.command(epilog=examples("leoclr views --protocol protocols/quickstart.yaml --out views.png"))
def views(
    protocol: Optional[Path] = o.Protocol, method: Optional[str] = o.Method, data: Optional[str] = o.ViewsData,
    source: Optional[str] = o.PretrainSource, split: Optional[str] = o.ViewsSplit, out_file: Path = o.ViewsOut,
    count: int = o.ViewsCount, cell: Optional[int] = o.ViewsCell, sets: Optional[List[str]] = o.Sets,
) -> None:
    """A PNG grid of images sampled across classes, each beside its views (before normalisation), boxes drawn."""
    check_png_name(out_file)
    source = source_for("pretrain", protocol, sets, source, data, say)
    p = pretrain_protocol(protocol, o.overrides(sets, **{"method.name": method, "data.split": split},
                                                **o.data_flags(source, data)))
    lines = views_picture(p, out_file, count, cell)
    out.print("\n".join(lines) + f"\n{len(lines)} images of {p.data.source} with their {p.method.name} views (crop "
              f"boxes drawn on each image): {out_file}", highlight=False, soft_wrap=True)


@app.command(epilog=examples("leoclr shards --data ~/data/mine --out shards/train-%06d.tar"))
def shards(
    data: Path = o.ShardsData, out_pattern: str = o.ShardsOut, source: str = o.ShardsSource, split: str = o.ShardsSplit,
    per_shard: int = o.PerShard, seed: int = o.ShardsSeed, force: bool = o.ShardsForce,
) -> None:
    """Write a dataset as WebDataset tar shards, for data.source webdataset."""
    src = open_data(source, str(data.expanduser()), split, builtin_n=4000)
    r = write_shards(src, out_pattern, per_shard=per_shard, seed=seed, force=force,
                     log=lambda line: err.print(line, highlight=False))
    out.print(f"wrote {r['samples']} images of {source} {split} in {r['shards']} shards; pretrain on them with\n"
              f"  leoclr pretrain --source webdataset --data '{r['pattern']}' ...", highlight=False, soft_wrap=True)


@app.command(epilog=examples("leoclr boxes runs/c10-cc --out boxes.png"))
def boxes(
    run_dir: Path = o.BoxesRun, out_file: Path = o.BoxesOut, count: int = o.BoxesCount, cell: int = o.BoxesCell,
) -> None:
    """Draw the ContrastiveCrop boxes of a run on a grid of its first images (RUN/boxes.safetensors)."""
    r = boxes_picture(run_dir, out_file, count, cell)
    out.print(f"{r['images']} images with their {r['mode']} boxes (computed after epoch {r['epoch']}; "
              f"{100 * r['whole']:.0f}% of all boxes are the whole image): {out_file}")


@app.command(epilog=examples("leoclr info runs/c10/backbone.safetensors"))
def info(path: Path = o.InfoPath) -> None:
    """Show a checkpoint's metadata and tensor count (reads the header; unpickles nothing)."""
    tensors, meta = ckpt.load_tensors(path)
    for key in sorted(meta):
        value = meta[key]
        out.print(f"{key}: {value if len(value) < 200 else value[:200] + '...'}", highlight=False)
    out.print(f"tensors: {len(tensors)} ({sum(t.numel() for t in tensors.values()):,} values)")


@app.command("import", epilog=examples("leoclr import moco_v2_800ep_pretrain.pth.tar --out moco800.safetensors"))
def import_(
    src: Path = o.ImportSrc, out_file: Path = o.ImportOut, arch: Optional[str] = o.ImportArch,
    force: bool = o.ImportForce,
) -> None:
    """Import a foreign PyTorch checkpoint's backbone (torch.load with weights_only=True; no code runs)."""
    if out_file.exists() and not force:
        raise UserError(f"{out_file} already exists; use --force to overwrite it")
    r = ckpt.import_torch_checkpoint(src, out_file, arch=arch)
    out.print(f"imported {r['tensors']} tensors of a {r['arch']} (keys under '{r['prefix']}', fc dropped) "
              f"into {r['out']}")


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except UserError as e:
        err.print(f"{getattr(e, 'prefix', 'error')}: {e.sentence()}", highlight=False, markup=False,
                  soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
