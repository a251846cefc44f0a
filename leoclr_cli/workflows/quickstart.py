"""``leoclr quickstart``: pretrain LeOCLR and MoCo-v2 on the built-in data, linear-probe both and a
random-init backbone, over one or more seeds, and summarise as mean ± std.

Uses ``protocols/quickstart.yaml`` (installed as ``leoclr_cli.protocols``, so an installed leoclr runs
it from any directory) with identical hyper-parameters for every method. The probe works on cached
features (``train_augment: none``), so a seed of the whole comparison fits in a few minutes of a
2-core CPU. Finished runs are reused: a second call prints the table again from the run directories;
``--force`` redoes them.

Layout: ``OUT/seed-S/METHOD/`` (a pretraining run with its ``linear-eval/``), ``OUT/seed-S/random-init/``,
``OUT/quickstart.json`` with every run's numbers and the summary, and, when the protocol turns the monitors
on (``monitor.knn_every`` / ``monitor.linear_every``), ``OUT/learning.png``: their top-1 after each epoch
per method and seed beside the random-init backbone's and chance (report/pictures.py).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

import numpy as np
import torch

from ..config import AugmentConfig, installed, load_protocol
from ..core import threads
from ..core.checkpoint import random_backbone_file
from ..core.nets import RANDOM_PREFIX
from ..core.results import QuickstartResult
from ..core.rundir import RunDir, command
from ..data import builtin
from ..data.spec import ViewSpec
from ..evaluate.linear import finished_probe, run_linear_eval
from ..report.pictures import learning_series, write_learning
from .pretrain import run_pretrain

#: the methods the quickstart compares by default, in the order of its table
DEFAULT_METHODS = ("leoclr", "mocov2")
RANDOM_INIT = "random init"
LEARNING_FILE = "learning.png"


#: the linear probe of the quickstart: cached features of the 32-px images (so feature_norm bn and its lr),
#: 100 epochs with the small-data steps, the epoch chosen on a held-out 20% of its train images, tested once on
#: the test split. It reads PROBE_IMAGES (train, test) built-in images, or the protocol's counts if larger (the
#: first train images are the pretraining ones): 2,000 validation and 5,000 test images put the standard error
#: of a top-1 near 50% at 1.1 and 0.7 points, well below the gaps the table reports (the 300 validation images
#: of 0.2 gave 2.8 points).
PROBE_IMAGES = (10_000, 5_000)
PROBE_VAL_FRACTION = 0.2
LINEAR_OVERRIDES = {"train_augment": "none", "epochs": 100, "batch_size": 256, "val_fraction": PROBE_VAL_FRACTION,
                    "transform.size": 32, "transform.resize": 32, "transform.test": "none",
                    "transform.normalize": "builtin"}


def _probe(lin, backbone: Path, run: RunDir, force: bool, quiet: bool, console: Console) -> dict[str, Any]:
    """The linear probe of ``backbone`` in ``run``: reused when finished, else continued or started fresh."""
    if not force and (done := finished_probe(lin, backbone, run)) is not None:
        return done
    resume, fresh = run.resume_or_fresh(force)
    return run_linear_eval(lin, backbone, run.path, resume=resume, force=fresh, quiet=quiet, console=console)


@command
def run_quickstart(methods: tuple[str, ...] | list[str], out_dir: Path, *, seeds: int = 1,
                   epochs: Optional[int] = None, force: bool = False, quiet: bool = False,
                   console: Optional[Console] = None, overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Every method and a random-init backbone for ``seeds`` seeds (the protocol's seed, +1, ...).
    ``overrides``: more dotted protocol fields (e.g. ``augment.crops``) on top of quickstart.yaml, the same
    for every method. Returns ``{"runs": [...], "summary": [...]}`` (also written to quickstart.json)."""
    console = console or Console(stderr=True)
    base = load_protocol("pretrain", installed("quickstart"), {"optim.epochs": epochs, **(overrides or {})})
    threads.apply(base.threads, base.data.num_workers)
    coverage = None
    if base.data.source == "builtin":
        coverage = crop_coverage(base.augment, seed=base.seed)
        lo, hi = base.augment.crop_scale
        console.print(f"built-in data: a random crop (scale {lo:g}-{hi:g})"
                      f" misses the digit in {coverage['miss']:.0f}% of views, cuts it in {coverage['cut']:.0f}% and "
                      f"holds it whole in {coverage['hold']:.0f}%; the original always shows it")
    runs: list[dict[str, Any]] = []
    for seed in range(base.seed, base.seed + seeds):
        seed_dir = out_dir / f"seed-{seed}"
        lin = load_protocol("linear-eval", None, {**LINEAR_OVERRIDES, "data.source": base.data.source,
                                                  "data.builtin_train": max(PROBE_IMAGES[0], base.data.builtin_train),
                                                  "data.builtin_test": max(PROBE_IMAGES[1], base.data.builtin_test),
                                                  "seed": seed,
                                                  "threads": base.threads})
        for method in methods:
            p = load_protocol("pretrain", installed("quickstart"),
                              {"optim.epochs": epochs, **(overrides or {}), "method.name": method, "seed": seed})
            pre = RunDir(seed_dir / method)
            t0 = time.perf_counter()
            resume, fresh = pre.resume_or_fresh(force)
            run_pretrain(p, pre.path, resume=resume, force=fresh, quiet=quiet, console=console)
            r = _probe(lin, pre.backbone, pre.linear_eval, force, quiet, console)
            crops = f", {p.augment.crops} crops" if p.augment.crops != "random" else ""
            crops += f", {p.augment.local_crops} local crops" if p.augment.local_crops else ""
            runs.append({"name": f"{method}{crops}, {p.optim.epochs} epochs", "method": method, "seed": seed,
                         "top1": r["top1"], "top5": r["top5"], "top1_se": standard_error(r),
                         "wall_s": time.perf_counter() - t0})

        t0 = time.perf_counter()
        rand = RunDir(seed_dir / "random-init")
        spec = RANDOM_PREFIX + base.model.arch + ("-cifar" if base.model.cifar_stem else "")
        backbone = random_backbone_file(spec, seed, rand.backbone, base.augment.size, base.model.timm_kwargs)
        r = _probe(lin, backbone, rand.linear_eval, force, quiet, console)
        runs.append({"name": RANDOM_INIT, "method": "random-init", "seed": seed, "top1": r["top1"],
                     "top5": r["top5"], "top1_se": standard_error(r), "wall_s": time.perf_counter() - t0})
    learning = [learning_series(out_dir / f"seed-{s}" / m, m) for s in range(base.seed, base.seed + seeds)
                for m in methods]
    if write_learning(out_dir / LEARNING_FILE, learning) is None:
        console.print(f"{LEARNING_FILE} not drawn: the runs have no monitor records (monitor.knn_every, "
                      "monitor.linear_every)", highlight=False)
    return RunDir(out_dir).write_result(QuickstartResult(methods=list(methods), seeds=seeds, runs=runs,
                                                         summary=summarise(runs), crop_coverage=coverage))


def standard_error(result: dict[str, Any]) -> Optional[float]:
    """The binomial standard error (points) of a linear-eval result's top-1 on its ``num_test`` images: the spread
    that the finite test split alone puts on the number (seeds add their own, shown as std)."""
    n, p = result.get("num_test"), result["top1"] / 100
    return 100 * math.sqrt(p * (1 - p) / n) if n else None


def crop_coverage(cfg: AugmentConfig, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """How often a random crop of a default built-in train image misses its digit or cuts it (LeOCLR's premise):
    the first ``n`` train images' ink masks, one crop each drawn by the view spec of ``cfg`` (the protocol's
    ``augment``). A crop *misses* when it holds under 10% of the digit's ink, *cuts* it when it holds 10-90%, and
    *holds* it otherwise. Returns the three shares in percent."""
    pool, spec = builtin.digit_pool("train"), ViewSpec(cfg, ["crop"])
    counts = {"miss": 0, "cut": 0, "hold": 0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(n):
            _, ink = builtin.render_digit_with_mask(i % 10, np.random.default_rng([seed, 7, i]), pool)
            v = spec.draw("crop", builtin.SIZE, builtin.SIZE)
            share = ink[v.top:v.top + v.height, v.left:v.left + v.width].sum() / max(ink.sum(), 1e-9)
            counts["miss" if share < 0.1 else "cut" if share < 0.9 else "hold"] += 1
    return {k: 100 * v / n for k, v in counts.items()}


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per backbone (in the order of ``runs``): mean and sample std over seeds of top-1, top-5 and
    wall time, the mean standard error of top-1 on the test images, the per-seed top-1, and the paired top-1
    gaps (mean and std over seeds) of each pretrained row to random init and to the next pretrained row, each
    with whether it holds: the gap exceeds twice the larger of the two rows' top-1 std (None with one seed)."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    by_name = {n: {r["seed"]: r for r in runs if r["name"] == n} for n in names}
    rows = []
    for name in names:
        seeds = sorted(by_name[name])
        row: dict[str, Any] = {"name": name, "seeds": seeds, "top1_per_seed": [by_name[name][s]["top1"] for s in seeds]}
        for key in ("top1", "top5", "wall_s"):
            row[key], row[f"{key}_std"] = _mean_std([by_name[name][s][key] for s in seeds])
        ses = [by_name[name][s].get("top1_se") for s in seeds]
        row["top1_se"] = statistics.fmean(ses) if all(v is not None for v in ses) else None
        rows.append(row)
    def gap(row: dict[str, Any], other: dict[str, Any]) -> Optional[dict[str, Any]]:
        common = [s for s in row["seeds"] if s in by_name[other["name"]]]
        if not common:
            return None
        mean, std = _mean_std([by_name[row["name"]][s]["top1"] - by_name[other["name"]][s]["top1"] for s in common])
        spread = [v for v in (row["top1_std"], other["top1_std"]) if v is not None]
        return {"gap": mean, "std": std, "holds": mean > 2 * max(spread) if spread else None}

    floor = next((r for r in rows if r["name"] == RANDOM_INIT), None)
    for row, nxt in zip(rows, rows[1:]):
        if nxt is not floor and (g := gap(row, nxt)):
            row.update({"next": nxt["name"], "gap_to_next": g["gap"], "gap_to_next_std": g["std"],
                        "gap_holds": g["holds"]})
    for row in rows:
        if floor is not None and row is not floor and (g := gap(row, floor)):
            row.update({"gap_to_random": g["gap"], "gap_to_random_std": g["std"], "gap_to_random_holds": g["holds"]})
    return rows


def summary_table(summary: list[dict[str, Any]], seeds: int) -> Table:
    """The summary rows (:func:`summarise`) as the table ``leoclr quickstart`` prints."""
    def pm(mean: float, std: Optional[float], digits: int = 1) -> str:
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    table = Table(title=f"Linear probe on the built-in test split (10 classes), {seeds} seed{'s' * (seeds > 1)}")
    def gap(row: dict[str, Any], key: str, holds: str) -> str:
        if key not in row:
            return ""
        return pm(row[key], row[f"{key}_std"]) + {True: " (holds)", False: " (does not hold)", None: ""}[row[holds]]

    for col in ("backbone", "top-1 %", "SE", "top-5 %", "top-1 per seed", "gap to random init", "gap to next row",
                "wall time"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for row in summary:
        se = f"{row['top1_se']:.1f}" if row.get("top1_se") is not None else ""
        table.add_row(row["name"], pm(row["top1"], row["top1_std"]), se, pm(row["top5"], row["top5_std"]),
                      " / ".join(f"{v:.1f}" for v in row["top1_per_seed"]),
                      gap(row, "gap_to_random", "gap_to_random_holds"), gap(row, "gap_to_next", "gap_holds"),
                      f"{row['wall_s']:.0f} s")
    return table
