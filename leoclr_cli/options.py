"""The command line's flags: every ``--option`` and argument of every command, with its help text and
default, declared once here (``cli.py`` names them in its commands' signatures, ``o.Name``). An option
several commands share is one object, so its flag, help and default are the same wherever it appears.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperCommand

from . import lazy
from .console import say

TARGET_HELP = ("a pretraining run directory, a backbone.safetensors, or random:ARCH, a seeded random-init backbone "
               "(random:resnet18, random:resnet18-cifar, random:resnet50)")
METHOD_HELP = "leoclr, mocov2, simclr, leoclr-e2e, leoclr-random-original or leoclr-attract-all"
CROPS_HELP = "random (RandomResizedCrop), contrastive (ContrastiveCrop) or center-box"



def find_protocol(value: Optional[Path]) -> Optional[Path]:
    """``-p``: a file, or an installed protocol by name (a relative path missing here falls back to the
    installed protocol of its file name, with a note on stderr)."""
    if value is None:
        return None
    path, note = lazy.find_protocol(value)
    if note:
        say(f"note: {note}")
    return path


# shared by several commands
Protocol = typer.Option(None, "--protocol", "-p", callback=find_protocol,
                        help="a protocol by name (-p quickstart; leoclr protocols lists them) or a YAML file")
Method = typer.Option(None, "--method", "-m", help=METHOD_HELP)
Crops = typer.Option(None, "--crops", help=CROPS_HELP)
PretrainSource = typer.Option(None, "--source", help="builtin, folder (unlabeled images at any depth), imagefolder, "
                                                     "cifar10, cifar100, stl10, webdataset (default: inferred from "
                                                     "--data's layout)")
Arch = typer.Option(None, "--arch", help="backbone: resnet18, resnet34, resnet50, ..., or timm:NAME (any timm model)")
Epochs = typer.Option(None, "--epochs", help="training epochs")
Batch = typer.Option(None, "--batch-size", "-b", help="images per step (all GPUs together)")
Lr = typer.Option(None, "--lr", help="learning rate")
Workers = typer.Option(None, "--workers", "-j", help="DataLoader worker processes")
Seed = typer.Option(None, "--seed", help="random seed of the run")
Device = typer.Option(None, "--device", help="auto, cpu or cuda")
Resume = typer.Option(None, "--resume", help="a checkpoint file, a run directory, or 'auto'")
PartsResume = typer.Option(None, "--resume", help="'auto' (or the run directory itself): continue in --out a run "
                           "stopped by a signal (exit 75) or a kill; finished parts (grid cells, trials) are kept and "
                           "the interrupted one continues from its checkpoint")
Force = typer.Option(False, "--force", help="delete and redo an existing run directory")
Quiet = typer.Option(False, "--quiet", "-q", help="no progress: only warnings and the final summary")
LogEvery = typer.Option(None, "--log-every", min=1, help="stderr not a terminal (a log file, a pipe): a progress line "
                                                         "every N steps (default: about every 30 s)")
Threads = typer.Option(None, "--threads", min=1, help="CPU threads of the training process (default: the cores this "
                                                      "process may use less one per loader worker; OMP_NUM_THREADS is "
                                                      "kept)")
Sets = typer.Option(None, "--set", help="override any protocol field: --set optim.lr=0.1 (repeatable; "
                                         "leoclr protocols show NAME --fields lists them)")
Target = typer.Argument(..., help=TARGET_HELP)
Json = typer.Option(False, "--json", help="print the run's result.json on stdout instead of the summary line (stdout "
                                          "then holds that JSON only; progress and notes stay on stderr)")
LabelledData = typer.Option(None, "--data", help="labelled dataset root")
Source = typer.Option(None, "--source", help="imagefolder, cifar10, cifar100, stl10, builtin, ... (default: the "
                                            "pretraining run's, or inferred from --data's layout)")
EvalSeed = typer.Option(None, "--seed", help="the run's seed, and the seed of a random:ARCH backbone (default 0)")

# leoclr pretrain
PretrainData = typer.Option(None, "--data", help="dataset root (official on-disk layout), or for --source webdataset "
                                                 "the shards: 'train-{000000..000099}.tar' or URLs")
PretrainSplit = typer.Option(None, "--split", help="split to pretrain on")
OnBadImage = typer.Option(None, "--on-bad-image", help="an undecodable image: error (stop, naming it) or skip (count "
                                                       "it)")
CheckpointEverySteps = typer.Option(None, "--checkpoint-every-steps", help="also checkpoint every N steps (0 = off)")
AllowPipe = typer.Option(False, "--allow-pipe", help="let a protocol's webdataset data.root run a 'pipe:CMD' shell "
                                                   "command (a pipe given with --data or --set data.root runs anyway)")
PretrainOut = typer.Option(Path("runs/pretrain"), "--out", "-o", help="run directory")

# leoclr linear-eval
TrainAugment = typer.Option(None, "--train-augment", help="random-resized-crop (paper) or none (cached features)")
Probe = typer.Option(None, "--probe", help="sgd (default) or lbfgs (cached features)")
Selection = typer.Option(None, "--selection", help="val (default: a held-out 10% of train chooses the classifier) or "
                                                   "test (MoCo's best test epoch)")
LinearOut = typer.Option(None, "--out", "-o", help="run directory (default RUN/linear-eval)")

# leoclr knn
K = typer.Option(None, "--k", help="neighbours that vote")
T = typer.Option(None, "--t", help="temperature of the similarity weights exp(sim / t)")
KnnOut = typer.Option(None, "--out", "-o", help="run directory (default RUN/knn)")

# leoclr crop-test
LinearRun = typer.Argument(..., help="a linear-eval run directory (or a pretraining run holding linear-eval/)")
MovedBackbone = typer.Option(None, "--backbone", help="the backbone file, if it has moved")
Repeats = typer.Option(None, "--repeats", help="random-crop passes over the test split")
CropTestOut = typer.Option(None, "--out", "-o", help="run directory (default LINEAR_RUN/crop-test)")

# leoclr ablate
Remove = typer.Option(..., "--remove", help="color, grayscale, blur, flip, all-but-crop (repeat, or comma-separated)")
Baseline = typer.Option(None, "--baseline", help="the full-augmentation run (pretraining run with linear-eval/, or a "
                                                 "linear-eval run); its protocols are the defaults")
Metric = typer.Option(None, "--metric", help="top1 (default: the classifier selected on validation) or top1_last")
AblateProtocol = typer.Option(None, "--protocol", "-p", callback=find_protocol,
                              help="pretraining protocol, by name or file (default: the baseline's)")
RawData = typer.Option(None, "--data", help="dataset root (official on-disk layout)")
LinearProtocol = typer.Option(None, "--linear-protocol", callback=find_protocol,
                              help="linear-eval protocol, by name or file (default: the baseline's)")
LinearSets = typer.Option(None, "--linear-set", help="override a linear-eval field (repeatable)")
AblateOut = typer.Option(None, "--out", "-o", help="run directory (default runs/ablate-METHOD-PARTS)")
AblateResume = typer.Option(False, "--resume", help="continue an interrupted ablation in --out")

# leoclr export
ExportTo = typer.Option("detectron2", "--to", help="target format: detectron2 (a .pkl), torchvision or timm (a .pth "
                                                   "state dict that the stock ResNet loads with strict=False, only "
                                                   "fc.* missing)")
ExportOut = typer.Option(..., "--out", "-o", help="output file (.pkl for detectron2, .pth for torchvision and timm)")

# leoclr embed
EmbedData = typer.Option(..., "--data", help="the images: a folder (any depth, unlabeled) or any dataset root that "
                                             "--data takes elsewhere")
EmbedOut = typer.Option(..., "--out", "-o", help="FILE.safetensors (features, labels, head; paths in its metadata) or "
                                                 "FILE.parquet (needs pyarrow)")
EmbedSource = typer.Option(None, "--source", help="folder (unlabeled images at any depth), imagefolder, cifar10, "
                                                 "cifar100, stl10, ... (default: inferred from --data's layout)")
EmbedSplit = typer.Option(None, "--split", help="split of a labelled dataset (default: its train split)")
Head = typer.Option(False, "--head", help="also the projection head's output (a pretraining run directory)")
EmbedBatch = typer.Option(256, "--batch-size", "-b", help="images per forward pass")
EmbedWorkers = typer.Option(0, "--workers", "-j", help="DataLoader worker processes")
EmbedDevice = typer.Option("auto", "--device", help="auto, cpu or cuda")
EmbedOnBadImage = typer.Option("error", "--on-bad-image", help="an undecodable image: error (stop, naming it) or skip "
                                                               "(leave its row out, counted)")
EmbedForce = typer.Option(False, "--force", help="overwrite an existing --out file")

# leoclr detect
DetectDataset = typer.Argument(..., help="voc or coco")
DetectData = typer.Option(None, "--data", help="VOCdevkit (voc) or the coco folder (coco)")
Schedule = typer.Option(None, "--schedule", help="24k (voc), 1x or 2x (coco)")
Backend = typer.Option(None, "--backend", help="auto (detectron2 if importable), detectron2, torchvision")
Gpus = typer.Option(None, "--gpus", help="GPUs to use (default: all visible; the batch, lr and schedule are rescaled "
                                         "from 8)")
Trials = typer.Option(None, "--trials", help="independent runs (seeds seed..seed+N-1)")
DetectOut = typer.Option(None, "--out", "-o", help="run directory (default RUN/detect-DATASET)")

# leoclr finetune
Labels = typer.Option(None, "--labels", help="label fraction: 1%, 10%, N%, or a sweep 1,2,5,10,20,50,100 (default: the "
                                             "protocol's labels, 10%)")
SubsetFile = typer.Option(None, "--subset-file", help="SimCLR list (1percent.txt) or a run's subset.txt")
FinetuneEpochs = typer.Option(None, "--epochs", help="default: 60 below 10% labels, 30 from 10% up")
FinetuneSeed = typer.Option(None, "--seed", help="seed of the class-balanced draw (subset_seed) and of a random:ARCH "
                                                 "backbone")
FinetuneOut = typer.Option(None, "--out", "-o", help="run directory (default RUN/finetune-Npct)")

# leoclr transfer
TransferDataset = typer.Argument(..., help="cifar10, cifar100, cars, pets or birdsnap")
TransferData = typer.Option(None, "--data", help="the dataset's root (official layout)")
Mode = typer.Option(None, "--mode", help="finetune (default) or linear (L-BFGS on frozen features)")
TransferOut = typer.Option(None, "--out", "-o", help="run directory (default RUN/transfer-DATASET-MODE)")

# leoclr report
RunDirs = typer.Argument(..., help="run directories, searched recursively for result.json")
ReportOut = typer.Option(Path("report"), "--out", "-o", help="where report.md and the PNGs go")
ReportForce = typer.Option(False, "--force", help="replace an existing report in --out")

# leoclr quickstart
Methods = typer.Option(None, "--method", "-m", help=f"repeatable; default leoclr and mocov2 ({METHOD_HELP})")
Seeds = typer.Option(1, "--seeds", min=1, help="seeds to repeat everything with (mean ± std when > 1)")
QuickstartOut = typer.Option(None, "--out", "-o", help="default runs/quickstart")

# leoclr bench
BenchArch = typer.Option("resnet18", "--arch", help="backbone of the train-step and end-to-end rows")
BenchSize = typer.Option(32, "--size", help="view size of the train-step and end-to-end rows")
ViewSize = typer.Option(224, "--view-size", help="view size of the view-pipeline rows")
BenchBatch = typer.Option(64, "--batch-size", "-b", help="images per train step")
BenchSteps = typer.Option(5, "--steps", help="timed train steps per method")
BenchImages = typer.Option(128, "--images", help="images through each view pipeline")
BenchWorkers = typer.Option(0, "--workers", "-j", help="DataLoader workers of the end-to-end rows")
BenchRounds = typer.Option(3, "--rounds", min=1, help="rounds of the interleaved measurements (each row: their median)")
BenchJson = typer.Option(None, "--json", help="also write the numbers as JSON")

# leoclr views
ViewsData = typer.Option(None, "--data", help="dataset root (official on-disk layout), or shards")
ViewsSplit = typer.Option(None, "--split", help="split to draw the images from")
ViewsOut = typer.Option(Path("views.png"), "--out", "-o", help="PNG file to write")
ViewsCount = typer.Option(8, "--count", "-n", min=1, max=256, help="images (rows) in the grid")
ViewsCell = typer.Option(None, "--cell", min=16, max=1024, help="pixels per tile (default: the view size, at least 64)")

# leoclr shards
ShardsData = typer.Option(..., "--data", help="dataset root (official on-disk layout)")
ShardsOut = typer.Option(..., "--out", "-o", help="shard file names with one number field, e.g. shards/train-%06d.tar")
ShardsSource = typer.Option("imagefolder", "--source", help="imagefolder, cifar10, cifar100, stl10, ...")
ShardsSplit = typer.Option("train", "--split", help="the split to write")
PerShard = typer.Option(1000, "--per-shard", min=1, help="images per shard")
ShardsSeed = typer.Option(0, "--seed", help="seed of the order the images are written in")
ShardsForce = typer.Option(False, "--force", help="overwrite existing shards")

# leoclr boxes
BoxesRun = typer.Argument(..., help="a pretraining run directory made with --crops contrastive or center-box")
BoxesOut = typer.Option(Path("boxes.png"), "--out", "-o", help="PNG file to write")
BoxesCount = typer.Option(16, "--count", "-n", min=1, max=256, help="images in the grid")
BoxesCell = typer.Option(128, "--cell", min=16, max=1024, help="pixels per image in the grid")

# leoclr protocols show
ShowName = typer.Argument(..., help="an installed protocol (leoclr protocols lists them), a protocol file, or a kind "
                                    "(pretrain, linear-eval, knn, finetune, transfer, detect, crop-test, ablate) for "
                                    "its built-in defaults")
ShowFields = typer.Option(False, "--fields", help="every field with its type, value and description, one per row")

# leoclr info
InfoPath = typer.Argument(..., help="any .safetensors file written by leoclr")

# leoclr import
ImportSrc = typer.Argument(..., help="a .pth / .pth.tar checkpoint (MoCo's releases, torchvision state dicts)")
ImportOut = typer.Option(..., "--out", "-o", help="the backbone.safetensors to write")
ImportArch = typer.Option(None, "--arch", help="default: the 'arch' stored in the file")
ImportForce = typer.Option(False, "--force", help="overwrite an existing --out file")


# --------------------------------------------------------------------------- flags -> protocol overrides


def overrides(sets: Optional[List[str]], **flags: Any) -> dict[str, Any]:
    """The protocol fields a command's flags set (unset flags left out), then every ``--set field=value``."""
    merged = {k: v for k, v in flags.items() if v is not None}
    merged.update(lazy.parse_set(sets or []))
    return merged


#: the protocol each command's flags set, where it is not the command's own name
KIND = {"ablate": "pretrain", "quickstart": "pretrain", "views": "pretrain"}
#: commands that always read one installed protocol (their --help shows its values)
DEFAULT_PROTOCOL = {"quickstart": "quickstart"}
_DATA = {"source": "data.source", "data": "data.root"}
_PRETRAIN = {"method": "method.name", "arch": "model.arch", "epochs": "optim.epochs", "batch_size": "optim.batch_size",
             "workers": "data.num_workers", "seed": "seed", "device": "device", "threads": "threads", **_DATA}
_EVAL = {"device": "device", "threads": "threads", **_DATA}

#: the protocol field each flag of a command sets (the command's --help names it and its default: the value of
#: -p's protocol when one is given, else the built-in default); :func:`fields` turns the flags given into them
FIELDS: dict[str, dict[str, str]] = {
    "pretrain": {**_PRETRAIN, "crops": "augment.crops", "split": "data.split", "lr": "optim.lr",
                 "on_bad_image": "data.on_bad_image", "checkpoint_every_steps": "checkpoint_every_steps"},
    "linear-eval": {**_EVAL, "epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "workers": "data.num_workers",
                    "train_augment": "train_augment", "probe": "probe", "selection": "selection", "seed": "seed"},
    "knn": {**_EVAL, "k": "k", "t": "t"},
    "crop-test": {**_EVAL, "repeats": "repeats"},
    "ablate": dict(_PRETRAIN),
    "detect": {"dataset": "dataset", "schedule": "schedule", "backend": "backend", "gpus": "gpus", "trials": "trials",
               "seed": "seed", "device": "device", "threads": "threads", "workers": "num_workers", "data": "root"},
    "finetune": {**_EVAL, "epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "seed": "subset_seed",
                 "workers": "data.num_workers", "subset_file": "subset_file"},
    "transfer": {"dataset": "dataset", "mode": "mode", "batch_size": "batch_size", "device": "device",
                 "workers": "num_workers", "threads": "threads", "seed": "seed", "data": "root"},
    "quickstart": {"crops": "augment.crops", "epochs": "optim.epochs", "threads": "threads"},
    "views": {"method": "method.name", "split": "data.split", **_DATA},
}


def pipe_allowed(flag: bool, data: Optional[str], sets: Optional[List[str]]) -> bool:
    """Whether a ``pipe:`` data root may run: ``--allow-pipe``, or the root was given on the command line."""
    return flag or data is not None or any(item.split("=", 1)[0].strip() == "data.root" for item in sets or [])


def fields(command: str, flags: dict[str, Any]) -> dict[str, Any]:
    """The protocol fields (dotted) that ``command``'s flags given in ``flags`` (its ``locals()``) set; paths
    with ``~`` expanded."""
    found = {}
    for name, field in FIELDS[command].items():
        value = flags.get(name)
        if isinstance(value, Path) or (value is not None and field.endswith("root")):
            value = os.path.expanduser(str(value))
        found[field] = value
    return found


def protocol_given(args: list[str]) -> Optional[str]:
    """The value of ``-p``/``--protocol`` among a command line's arguments, if any."""
    for i, arg in enumerate(args):
        if arg in ("-p", "--protocol") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--protocol="):
            return arg.split("=", 1)[1]
    return None


class ProtocolCommand(TyperCommand):
    """A command whose ``--help`` ends each flag's help with the protocol field it sets and that field's
    default (the protocol's own value with ``-p NAME --help``)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["leoclr.args"] = list(args)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        table = FIELDS.get(self.name or "")
        if table:
            kind = KIND.get(self.name or "", self.name or "")
            # the quickstart's defaults are its own protocol's (protocols/quickstart.yaml), not the model's
            given = protocol_given(ctx.meta.get("leoclr.args", [])) or DEFAULT_PROTOCOL.get(self.name or "")
            path = lazy.find_protocol(given)[0] if given else None
            tree = lazy.resolved(lazy.PROTOCOLS[kind], path)
            for param in self.params:
                field = table.get(param.name or "")
                if field and param.param_type_name == "option":
                    value = lazy.value_at(tree, field)
                    shown = "" if value is None else f", {value} in {path.stem}" if path else f", default {value}"
                    base = param.__dict__.setdefault("leoclr_help", param.help)
                    param.help = f"{base} (protocol field {field}{shown})"
        super().format_help(ctx, formatter)
