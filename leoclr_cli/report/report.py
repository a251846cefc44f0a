"""``leoclr report``: the paper's Tables 1-9 with our numbers beside them, and Figures 3 and 4 as PNGs.

Every ``result.json`` under the given directories is read and recognised by its ``kind`` (keys in the
README). A run feeds a method's row of a paper table only when it follows the paper's protocol for that
table (:func:`differs`: dataset, architecture, pretraining epochs and schedule, MoCo's linear protocol, the
detector's full schedule; ImageNet-1K: an ``imagefolder`` source with 1000 classes); every other run of the
method is printed in a row of its own labelled with how it differs. Every row shows its runs' dataset,
architecture, epochs and schedule. Results inside an ablation directory belong to that ablation only. Every
run also appears in the per-kind tables at the end. Nothing is filled in: a number we do not have is a "—".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional


from ..core.atomic import atomic_write_bytes, atomic_write_text
from ..core.checkpoint import read_metadata
from ..core.engine import read_metrics
from ..core.rundir import RunDir
from ..errors import UserError
from . import paper
from .pictures import learning_picture, learning_series, png_bytes, pyplot

GAP = "—"
KINDS = ("pretrain", "linear-eval", "knn", "crop-test", "ablate", "finetune", "transfer", "detect")
FIGURE3_FILE, FIGURE4_FILE, REPORT_FILE = "figure3_label_fractions.png", "figure4_augmentation_drop.png", "report.md"
CURVES_FILE, LEARNING_FILE = "training_curves.png", "learning.png"
CURVES = (("loss", "training loss"), ("lr", "learning rate"), ("knn_top1", "kNN monitor top-1 (%)"))
PART_ORDER = ("color", "grayscale", "blur", "flip", "all-but-crop")
FRACTION_TICKS = (1, 2, 5, 10, 20, 50, 100)


@dataclass
class Run:
    kind: str
    dir: Path
    result: dict[str, Any]
    dataset: Optional[str] = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.result.get(key, default)

    @property
    def method(self) -> Optional[str]:
        return self.result.get("method")

    @property
    def epochs(self) -> Optional[int]:
        """Pretraining epochs of the backbone this run used."""
        for key in ("pretrain_epoch", "pretrain_epochs"):
            if self.result.get(key) is not None:
                return int(self.result[key])
        if self.kind == "pretrain":
            return self.result.get("epochs")
        return self.extra.get("backbone_epoch")

    @property
    def arch(self) -> Optional[str]:
        return self.result.get("arch")

    def pretrain_optim(self, key: str) -> Any:
        """``schedule`` or ``batch_size`` of the pretraining behind this run (None: not recorded)."""
        if self.kind == "pretrain":
            return (RunDir(self.dir).protocol_tree().get("optim") or {}).get(key)
        return self.result.get(f"pretrain_{key}") or self.extra.get(f"pretrain_{key}")

    @property
    def schedule(self) -> Optional[str]:
        """The detector's iterations x images per batch, or the pretraining lr schedule and batch."""
        solver = self.result.get("solver")
        if self.kind == "detect" and isinstance(solver, dict) and solver.get("max_iter"):
            return f"{solver['max_iter']} it x {solver.get('ims_per_batch', '?')} img"
        sched, batch = self.pretrain_optim("schedule"), self.pretrain_optim("batch_size")
        return ", ".join(x for x in (sched, f"batch {batch}" if batch else None) if x) or None

    def describe(self) -> str:
        """dataset, architecture, pretraining epochs and schedule, as every report row shows them."""
        return ", ".join([self.dataset or "data ?", self.arch or "arch ?",
                          f"{self.epochs} ep" if self.epochs is not None else "epochs ?", self.schedule or "schedule ?"])


# --------------------------------------------------------------------------- reading run directories


def _backbone_info(result: dict[str, Any]) -> dict[str, Any]:
    """Epoch and pretraining dataset from the header of the backbone a run names, if that file is here."""
    path = Path(str(result.get("backbone", "")))
    if not result.get("backbone") or not path.is_file():
        return {}
    try:
        meta = read_metadata(path)
    except UserError:
        return {}
    pre = json.loads(meta.get("protocol", "{}") or "{}")
    optim = pre.get("optim", {})
    return {"backbone_epoch": int(meta["epoch"]) if meta.get("epoch", "").isdigit() else None,
            "pretrain_dataset": pre.get("data", {}).get("source"), "pretrain_dir": path.parent,
            "pretrain_schedule": optim.get("schedule"), "pretrain_batch_size": optim.get("batch_size")}


def dataset_label(source: Optional[str], num_classes: Optional[int]) -> Optional[str]:
    """A data source as the report names it: an ImageNet-layout folder of 1000 classes is ``imagenet``."""
    if source == "imagefolder" and num_classes == 1000:
        return "imagenet"
    return source


def _dataset(kind: str, result: dict[str, Any], run_dir: Path, extra: dict[str, Any]) -> Optional[str]:
    source = result.get("dataset")
    if source is None:
        proto = RunDir(run_dir).protocol_tree()
        source = proto.get("dataset") or (proto.get("data") or {}).get("source")
    if source is None:
        source = result.get("pretrain_dataset") or extra.get("pretrain_dataset")
    return dataset_label(source, result.get("num_classes"))


def collect(run_dirs: Iterable[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """(recognised runs, [(file, why it was not used)]) under ``run_dirs``."""
    files: dict[Path, None] = {}
    for top in run_dirs:
        top = Path(top).expanduser()
        if not top.is_dir():
            raise UserError(f"run directory {top} does not exist")
        found = sorted(top.rglob(RunDir.RESULT))
        if not found:
            raise UserError(f"{top} holds no {RunDir.RESULT} (not a run directory, or the run has not finished)")
        files.update((f.resolve(), None) for f in found)
    runs, ignored = [], []
    for f in files:
        try:  # through the result models that wrote it (core/results.py)
            result = RunDir(f.parent).read_result()
        except UserError as e:
            ignored.append((f, e.sentence()))
            continue
        kind = result["kind"]
        if kind not in KINDS:
            ignored.append((f, f"kind {kind!r}"))
            continue
        extra = _backbone_info(result)
        runs.append(Run(kind, f.parent, result, _dataset(kind, result, f.parent, extra), extra=extra))
    ablations = [r.dir for r in runs if r.kind == "ablate"]
    kept = [r for r in runs if r.kind == "ablate" or not any(a in r.dir.parents for a in ablations)]
    for r in kept:
        r.label = _short(r.dir)
    return kept, ignored


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return GAP
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_paper(value: Any) -> str:
    if value is None:
        return GAP
    return f"{value:g}" if isinstance(value, float) else str(value)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pretrain_hours(run: Run) -> Optional[float]:
    """Wall time of the pretraining behind ``run`` (sum of metrics.jsonl's per-epoch time_s), in hours."""
    pre_dir = run.dir if run.kind == "pretrain" else run.extra.get("pretrain_dir")
    metrics = RunDir(pre_dir).metrics if pre_dir is not None else None
    if metrics is None or not metrics.is_file():
        return None
    total = 0.0
    for line in metrics.read_text().splitlines():
        try:
            total += float(json.loads(line).get("time_s", 0.0))
        except (ValueError, AttributeError):
            return None
    return total / 3600 if total else None


# --------------------------------------------------------------------------- the paper's tables


@dataclass
class TableSpec:
    """How our runs fill a paper table: runs of ``kind`` (and ``where``) fill column group ``slot(run)`` (None: no
    column of this table) with ``cells(run)``; ``datasets`` are the paper's (one: every run has a group, and a run
    on other data is "another protocol"; several: a group per dataset)."""

    table: paper.PaperTable
    kind: str
    datasets: tuple[str, ...]
    header: list[str]
    cells: Callable[[Run], list[Any]]
    slot: Callable[[Run], Optional[int]] = lambda r: 0
    groups: int = 1
    where: Callable[[Run], bool] = lambda r: True


def differs(run: Run, spec: TableSpec, values: tuple[Any, ...]) -> list[str]:
    """Why ``run`` is not the paper's protocol for the row of ``spec.table`` with ``values`` (empty: it is)."""
    proto = paper.PROTOCOLS[spec.table.key]
    why = []
    if len(spec.datasets) == 1 and run.dataset not in spec.datasets:
        why.append(f"{run.dataset or 'unknown'} data, not {spec.datasets[0]}")
    if run.arch != proto.arch:
        why.append(f"{run.arch}, not {proto.arch}" if run.arch else "architecture not recorded")
    epochs = paper.row_epochs(spec.table, values)
    if epochs is not None and run.epochs != epochs:
        why.append(f"{run.epochs if run.epochs is not None else '?'} pretraining epochs, not {epochs}")
    schedule = run.pretrain_optim("schedule")
    if schedule is not None and schedule != proto.schedule:
        why.append(f"{schedule} lr schedule, not {proto.schedule}")
    if proto.detection_images:
        solver = run.get("solver") or {}
        seen = (solver.get("max_iter") or 0) * (solver.get("ims_per_batch") or 0)
        if seen not in proto.detection_images:
            why.append(f"{solver.get('max_iter', '?')} iterations of {solver.get('ims_per_batch', '?')} images, "
                       f"not {' or '.join(f'{n // 16} of 16' for n in proto.detection_images)}")
    if run.kind == "linear-eval":
        augment = RunDir(run.dir).protocol_tree().get("train_augment")
        if run.get("probe", "sgd") != "sgd" or run.get("feature_norm") not in (None, "none") or augment == "none":
            why.append(f"{run.get('probe', 'sgd')} probe, feature_norm {run.get('feature_norm')}, train_augment "
                       f"{augment}: not MoCo's linear protocol")
    if run.kind == "transfer" and run.get("mode", "finetune") != "finetune":
        why.append(f"{run.get('mode')} mode, not fine-tuning")
    return why


def paper_table(spec: TableSpec, runs: list[Run]) -> str:
    """The paper's rows and values with ours beside them: in a method's row only runs of the paper's protocol
    (dataset, architecture, epochs, schedule); every other run of that method in a row of its own, labelled
    with how it differs. Every row names the runs it shows and their dataset, architecture, epochs, schedule."""
    table, n = spec.table, len(spec.header)
    size = n // spec.groups
    header = ["Approach", *[f"{c} (paper)" for c in table.columns], *[f"ours: {c}" for c in spec.header],
              "our run", "its data, arch, epochs, schedule"]

    def fill(chosen: dict[int, Run]) -> list[str]:
        cells = [GAP] * n
        for g, r in chosen.items():
            cells[g * size:(g + 1) * size] = [fmt(v) for v in spec.cells(r)]
        return cells

    def named(used: list[Run]) -> list[str]:
        return [", ".join(dict.fromkeys(r.label for r in used)) or GAP,
                "; ".join(dict.fromkeys(r.describe() for r in used)) or GAP]

    rows = []
    for approach, method, values in table.rows:
        pool = sorted((r for r in runs if r.kind == spec.kind and r.method == method and spec.where(r)
                       and spec.slot(r) is not None), key=lambda r: r.label) if method else []
        chosen: dict[int, Run] = {}
        others = []
        for r in pool:
            if differs(r, spec, values):
                others.append(r)
            else:
                chosen.setdefault(spec.slot(r), r)  # type: ignore[arg-type]
        rows.append([approach, *[fmt_paper(v) for v in values], *fill(chosen), *named(list(chosen.values()))])
        for r in others:
            rows.append([f"{approach}, another protocol: {'; '.join(differs(r, spec, values))}",
                         *[""] * len(values), *fill({spec.slot(r): r}), *named([r])])  # type: ignore[dict-item]
    return f"### {table.title}\n\n" + md_table(header, rows)


def _fraction(run: Run) -> Optional[float]:
    """Percent of labels of a fine-tuning run (``labels`` in percent, or ``fraction`` in [0, 1])."""
    if run.get("labels") is not None:
        return float(run.get("labels"))
    if run.get("fraction") is not None:
        return float(run.get("fraction")) * 100
    return None


def _index(options: tuple[Any, ...], value: Any) -> Optional[int]:
    return options.index(value) if value in options else None


def tables(runs: list[Run]) -> list[str]:
    IN = ("imagenet",)
    hours = (lambda r: f"{pretrain_hours(r):.1f}h" if pretrain_hours(r) is not None else None)
    specs = [
        TableSpec(paper.TABLE1, "linear-eval", IN, ["epochs", "batch", "top-1"],
                  lambda r: [r.epochs, r.pretrain_optim("batch_size"), r.get("top1")]),
        TableSpec(paper.TABLE2, "finetune", IN, ["1%", "10%"], lambda r: [r.get("top1")],
                  slot=lambda r: _index((1.0, 10.0), _fraction(r)), groups=2),
        TableSpec(paper.TABLE3, "transfer", paper.TABLE3_DATASETS, list(paper.TABLE3.columns),
                  lambda r: [r.get("value")], slot=lambda r: _index(paper.TABLE3_DATASETS, r.dataset), groups=5),
        TableSpec(paper.TABLE4, "detect", ("voc",), ["AP50", "AP", "AP75"],
                  lambda r: [r.get("AP50"), r.get("AP"), r.get("AP75")]),
        TableSpec(paper.TABLE5, "linear-eval", IN, ["epochs", "top-1"], lambda r: [r.epochs, r.get("top1")]),
        TableSpec(paper.TABLE6, "linear-eval", paper.TABLE6_DATASETS,
                  ["STL-10 epochs", "STL-10", "CIFAR-10 epochs", "CIFAR-10"], lambda r: [r.epochs, r.get("top1")],
                  slot=lambda r: _index(paper.TABLE6_DATASETS, r.dataset), groups=2),
        TableSpec(paper.TABLE7, "crop-test", IN, ["epochs", "center crop", "random crop", "drop", "time"],
                  lambda r: [r.epochs, r.get("center_top1"), r.get("random_top1"), r.get("drop"), hours(r)]),
        TableSpec(paper.TABLE8, "linear-eval", IN, ["epochs", "top-1"], lambda r: [r.epochs, r.get("top1")]),
        TableSpec(paper.TABLE9, "detect", ("coco",), ["AP50", "AP", "AP75"],
                  lambda r: [r.get("AP50"), r.get("AP"), r.get("AP75")]),
    ]
    return [paper_table(spec, runs) for spec in specs]


def figure4_table(runs: list[Run]) -> str:
    header = ["Method", "removed", "dataset", "arch", "epochs", "schedule", "full aug. top-1", "ablated top-1",
              "drop (points)", "source"]
    rows = [[paper.METHOD_LABELS.get(m, m), part, "imagenet", "resnet50", "200", "cosine, batch 256", fmt_paper(full),
             fmt_paper(abl), f"{full - abl:.1f}", "paper"] for (m, part), (full, abl) in paper.FIGURE4.items()]
    for r in sorted((r for r in runs if r.kind == "ablate"), key=lambda r: r.label):
        rows.append([paper.METHOD_LABELS.get(r.method, str(r.method)), "+".join(r.get("removed", [])),
                     r.dataset or GAP, r.arch or GAP, fmt(r.epochs), r.schedule or GAP, fmt(r.get("baseline_top1")),
                     fmt(r.get("top1")), fmt(r.get("drop")), r.label])
    return "### Figure 4: drop in linear top-1 when augmentation parts are removed\n\n" + md_table(header, rows)


# --------------------------------------------------------------------------- every run, per kind

PER_KIND: dict[str, tuple[tuple[str, Callable[[Run], Any]], ...]] = {
    "pretrain": (("final loss", lambda r: r.get("final_loss")), ("kNN top-1", lambda r: r.get("knn_top1")),
                 ("time (h)", pretrain_hours)),
    "linear-eval": (("probe", lambda r: r.get("probe")), ("feature norm", lambda r: r.get("feature_norm")),
                    ("selected on", lambda r: r.get("selected_on")), ("top-1", lambda r: r.get("top1")),
                    ("top-5", lambda r: r.get("top5")), ("top-1 last epoch", lambda r: r.get("top1_last"))),
    "knn": (("k", lambda r: r.get("k")), ("top-1", lambda r: r.get("top1")), ("top-5", lambda r: r.get("top5"))),
    "crop-test": (("center top-1", lambda r: r.get("center_top1")), ("random top-1", lambda r: r.get("random_top1")),
                  ("drop", lambda r: r.get("drop"))),
    "ablate": (("removed", lambda r: "+".join(r.get("removed", []))), ("top-1", lambda r: r.get("top1")),
               ("baseline top-1", lambda r: r.get("baseline_top1")), ("drop", lambda r: r.get("drop"))),
    "finetune": (("labels %", lambda r: None if _fraction(r) is None else f"{_fraction(r):g}"),
                 ("top-1", lambda r: r.get("top1")), ("top-5", lambda r: r.get("top5"))),
    "transfer": (("mode", lambda r: r.get("mode")), ("metric", lambda r: r.get("metric")),
                 ("value", lambda r: r.get("value"))),
    "detect": (("AP50", lambda r: r.get("AP50")), ("AP", lambda r: r.get("AP")), ("AP75", lambda r: r.get("AP75"))),
}
# every row of every table names its run's dataset, architecture, pretraining epochs and schedule
COMMON: tuple[tuple[str, Callable[[Run], Any]], ...] = (
    ("dataset", lambda r: r.dataset), ("method", lambda r: r.method), ("arch", lambda r: r.arch),
    ("pretrain epochs", lambda r: r.epochs), ("schedule", lambda r: r.schedule))


def run_tables(runs: list[Run]) -> list[str]:
    out = []
    for kind, cols in PER_KIND.items():
        mine = sorted((r for r in runs if r.kind == kind), key=lambda r: r.label)
        if not mine:
            continue
        header = ["run", *[c for c, _ in COMMON + cols]]
        rows = [[r.label, *[fmt(f(r)) for _, f in COMMON + cols]] for r in mine]
        out.append(f"### {kind}\n\n" + md_table(header, rows))
    return out


# --------------------------------------------------------------------------- figures


def figure3(runs: list[Run]) -> tuple[bytes, list[dict[str, Any]]]:
    """Fine-tuning accuracy vs percent of labels: (PNG, the plotted series as read back from the axes)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        if r.kind == "finetune" and _fraction(r) is not None:
            groups.setdefault((r.dataset or "?", str(r.method)), []).append(r)
    for panel, (ax, key) in enumerate(zip(axes, ("top1", "top5"))):
        for (dataset, method), rs in sorted(groups.items()):
            pts = sorted((_fraction(r), r.get(key)) for r in rs if r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"ours: {paper.METHOD_LABELS.get(method, method)} ({dataset})")
        if key == "top1":
            for method, pts in paper.FIGURE3_TOP1.items():
                ax.plot(list(pts), list(pts.values()), linestyle="--", marker="s",
                        label=f"paper: {paper.METHOD_LABELS.get(method, method)} (ImageNet-1K)")
        ax.set_xscale("log")
        ax.set_xticks(FRACTION_TICKS, [f"{t:g}" for t in FRACTION_TICKS])
        ax.minorticks_off()
        ax.set_xlabel("labelled fraction of the training set (%)")
        ax.set_ylabel(f"{'top-1' if key == 'top1' else 'top-5'} accuracy (%)")
        ax.set_title(f"({'ab'[panel]}) {'Top-1' if key == 'top1' else 'Top-5'} accuracy")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Semi-supervised fine-tuning with a fraction of the labels (Figure 3)")
    plotted = [{"panel": key, "label": line.get_label(), "x": [float(v) for v in line.get_xdata()],
                "y": [float(v) for v in line.get_ydata()]} for ax, key in zip(axes, ("top1", "top5")) for line in ax.lines]
    data = png_bytes(fig)
    plt.close(fig)
    return data, plotted


def _part_key(name: str) -> tuple[int, str]:
    first = name.split("+")[0]
    return (PART_ORDER.index(first) if first in PART_ORDER else len(PART_ORDER), name)


def figure4(runs: list[Run]) -> tuple[bytes, list[dict[str, Any]]]:
    """Drop in points per removed augmentation, one bar group per removal: (PNG, the plotted bars)."""
    plt = pyplot()
    series: dict[str, dict[str, float]] = {}
    for (method, part), (full, abl) in paper.FIGURE4.items():
        series.setdefault(f"paper: {paper.METHOD_LABELS.get(method, method)} (ImageNet-1K)", {})[part] = full - abl
    for r in runs:
        if r.kind == "ablate" and r.get("drop") is not None:
            name = f"ours: {paper.METHOD_LABELS.get(r.method, r.method)} ({r.dataset}, {r.epochs} ep)"
            series.setdefault(name, {})["+".join(r.get("removed", []))] = float(r.get("drop"))
    categories = sorted({c for s in series.values() for c in s}, key=_part_key)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(categories) + 3), 4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [categories.index(c) + (i - (len(series) - 1) / 2) * width for c in values]
        bars = ax.bar(xs, list(values.values()), width=width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(categories)), [c.replace("all-but-crop", "only crop") for c in categories])
    ax.set_ylabel("decrease in linear top-1 (points)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title("Drop in top-1 with augmentation parts removed (Figure 4)")
    ax.legend(fontsize=7)
    plotted = [{"label": c.get_label(), "x": float(p.get_x() + p.get_width() / 2), "height": float(p.get_height())}
               for c in ax.containers for p in c.patches]
    data = png_bytes(fig)
    plt.close(fig)
    return data, plotted


def curves(runs: list[Run]) -> tuple[bytes, list[dict[str, Any]]]:
    """Loss, lr and kNN monitor per epoch of every pretraining run (its ``metrics.jsonl``), overlaid:
    (PNG, the plotted series as read back from the axes)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4))
    for r in runs:
        if r.kind != "pretrain":
            continue
        records = read_metrics(RunDir(r.dir).metrics)
        for ax, (key, _) in zip(axes, CURVES):
            pts = [(m["epoch"], m[key]) for m in records if m.get(key) is not None and "epoch" in m]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, markersize=3,
                        label=f"{r.label} ({paper.METHOD_LABELS.get(r.method, r.method)})")
    for ax, (key, title) in zip(axes, CURVES):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no runs" if key != "knn_top1" else "no kNN monitor (monitor.knn_every)",
                    ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Pretraining curves")
    plotted = [{"panel": key, "label": line.get_label(), "x": [float(v) for v in line.get_xdata()],
                "y": [float(v) for v in line.get_ydata()]} for ax, (key, _) in zip(axes, CURVES) for line in ax.lines]
    data = png_bytes(fig)
    plt.close(fig)
    return data, plotted


# --------------------------------------------------------------------------- the report


def build_report(run_dirs: list[Path], out_dir: Path, *, force: bool = False) -> dict[str, Any]:
    runs, ignored = collect(run_dirs)
    out_dir = Path(out_dir)
    targets = [out_dir / REPORT_FILE, out_dir / FIGURE3_FILE, out_dir / FIGURE4_FILE, out_dir / CURVES_FILE,
               out_dir / LEARNING_FILE]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists; use --force to replace the report")
    fig3, fig3_series = figure3(runs)
    fig4, fig4_bars = figure4(runs)
    fig_curves, curve_series = curves(runs)
    fig_learning, learning_lines = learning_picture(
        [learning_series(r.dir, f"{r.label} ({paper.METHOD_LABELS.get(r.method, r.method)})")
         for r in runs if r.kind == "pretrain"])
    counts = {k: sum(r.kind == k for r in runs) for k in KINDS if any(r.kind == k for r in runs)}
    parts = [
        "# LeOCLR: the paper's numbers and ours",
        "Read from: " + ", ".join(f"`{_short(Path(d).expanduser().resolve())}`" for d in run_dirs) + ". Runs: "
        + ", ".join(f"{n} {k}" for k, n in counts.items()) + ".",
        "Paper values are transcribed from the paper's text (`leoclr_cli/report/paper.py`); \"ours\" comes from the run "
        "named in the \"our run\" column, whose dataset, architecture, pretraining epochs and schedule follow it. "
        "A run is printed in a method's row only when it follows the paper's protocol for that table (dataset; "
        "architecture; pretraining epochs and lr schedule; MoCo's linear protocol; the detector's full schedule); "
        "any other run of that method gets a row of its own, \"another protocol\", that says how it differs "
        "(ImageNet-1K = an `imagefolder` source of 1000 classes). "
        f"{GAP} = no such number (the paper has none, or no run of ours matches).",
        "## The paper's tables", *tables(runs),
        "## Figures", f"![Figure 3]({FIGURE3_FILE})", f"![Figure 4]({FIGURE4_FILE})", figure4_table(runs),
        "## Training curves", f"![Training curves]({CURVES_FILE})",
        "## Learning", "The monitors' top-1 on the test split after each pretraining epoch, one panel per seed: "
        "kNN monitor (solid), online linear probe (dashed), the kNN monitor of the random-init backbone of the "
        "same arch and seed (grey line) and chance (dotted).", f"![Learning]({LEARNING_FILE})",
        "## Every run, by kind", *(run_tables(runs) or ["No runs."]),
    ]
    if ignored:
        parts.append("Not used: " + "; ".join(f"`{_short(f)}` ({why})" for f, why in ignored) + ".")
    atomic_write_bytes(targets[1], fig3)
    atomic_write_bytes(targets[2], fig4)
    atomic_write_bytes(targets[3], fig_curves)
    atomic_write_bytes(targets[4], fig_learning)
    atomic_write_text(targets[0], "\n\n".join(parts) + "\n")
    return {"report": targets[0], "figures": targets[1:], "runs": counts, "ignored": len(ignored),
            "figure3": fig3_series, "figure4": fig4_bars, "curves": curve_series, "learning": learning_lines}
