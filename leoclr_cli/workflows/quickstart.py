"""``leoclr quickstart``: pretrain LeOCLR and MoCo-v2 on the built-in data, linear-probe both and a
random-init backbone, over one or more seeds, and summarise as mean ± std.

Uses ``protocols/quickstart.yaml`` (installed as ``leoclr_cli.protocols``, so an installed leoclr runs
it from any directory) with identical hyper-parameters for every method. The probe works on cached
features (``train_augment: none``), so a seed of the whole comparison fits in a few minutes of a
2-core CPU. Finished runs are reused: a second call prints the table again from the run directories;
``--force`` redoes them.

Layout: ``OUT/seed-S/METHOD/`` (a pretraining run with its ``linear-eval/``), ``OUT/seed-S/random-init/``,
and ``OUT/quickstart.json`` with every run's numbers and the summary.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from ..config import load_protocol
from ..core import threads
from ..core.checkpoint import random_backbone_file
from ..core.nets import RANDOM_PREFIX
from ..core.results import QuickstartResult
from ..core.rundir import RunDir, command
from ..evaluate.linear import run_linear_eval
from .pretrain import run_pretrain

#: the methods the quickstart compares by default, in the order of its table
DEFAULT_METHODS = ("leoclr", "mocov2")
RANDOM_INIT = "random init"


def protocol_file(name: str) -> Path:
    """A protocol shipped with leoclr (the repo's protocols/, installed as leoclr_cli.protocols)."""
    in_checkout = Path(__file__).resolve().parents[2] / "protocols" / name
    if in_checkout.is_file():
        return in_checkout
    from importlib.resources import files

    return Path(str(files("leoclr_cli.protocols").joinpath(name)))


#: the linear probe of the quickstart: cached features of the 32-px images (so feature_norm bn and its lr),
#: 100 epochs with the small-data steps, the epoch chosen on a held-out 10% of train, tested once
LINEAR_OVERRIDES = {"train_augment": "none", "epochs": 100, "batch_size": 256,
                    "transform.size": 32, "transform.resize": 32, "transform.test": "none",
                    "transform.normalize": "builtin"}


def _probe(lin, backbone: Path, run: RunDir, force: bool, quiet: bool, console: Console) -> dict[str, Any]:
    """The linear probe of ``backbone`` in ``run``: continued, reused or started fresh."""
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
    base = load_protocol("pretrain", protocol_file("quickstart.yaml"), {"optim.epochs": epochs, **(overrides or {})})
    threads.apply(base.threads, base.data.num_workers)
    runs: list[dict[str, Any]] = []
    for seed in range(base.seed, base.seed + seeds):
        seed_dir = out_dir / f"seed-{seed}"
        lin = load_protocol("linear-eval", None, {**LINEAR_OVERRIDES, "data.source": base.data.source,
                                                  "data.builtin_train": base.data.builtin_train,
                                                  "data.builtin_test": base.data.builtin_test, "seed": seed,
                                                  "threads": base.threads})
        for method in methods:
            p = load_protocol("pretrain", protocol_file("quickstart.yaml"),
                              {"optim.epochs": epochs, **(overrides or {}), "method.name": method, "seed": seed})
            pre = RunDir(seed_dir / method)
            t0 = time.perf_counter()
            resume, fresh = pre.resume_or_fresh(force)
            run_pretrain(p, pre.path, resume=resume, force=fresh, quiet=quiet, console=console)
            r = _probe(lin, pre.backbone, pre.linear_eval, force, quiet, console)
            crops = f", {p.augment.crops} crops" if p.augment.crops != "random" else ""
            crops += f", {p.augment.local_crops} local crops" if p.augment.local_crops else ""
            runs.append({"name": f"{method}{crops}, {p.optim.epochs} epochs", "method": method, "seed": seed,
                         "top1": r["top1"], "top5": r["top5"], "wall_s": time.perf_counter() - t0})

        t0 = time.perf_counter()
        rand = RunDir(seed_dir / "random-init")
        spec = RANDOM_PREFIX + base.model.arch + ("-cifar" if base.model.cifar_stem else "")
        backbone = random_backbone_file(spec, seed, rand.backbone, base.augment.size, base.model.timm_kwargs)
        r = _probe(lin, backbone, rand.linear_eval, force, quiet, console)
        runs.append({"name": RANDOM_INIT, "method": "random-init", "seed": seed, "top1": r["top1"],
                     "top5": r["top5"], "wall_s": time.perf_counter() - t0})
    return RunDir(out_dir).write_result(QuickstartResult(methods=list(methods), seeds=seeds, runs=runs,
                                                         summary=summarise(runs)))


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per backbone (in the order of ``runs``): mean and sample std over seeds of top-1, top-5 and
    wall time, the per-seed top-1, and the paired top-1 gap to the next row (mean and std over seeds) with
    whether it holds: the gap exceeds twice the larger of the two rows' top-1 std (None with one seed)."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    by_name = {n: {r["seed"]: r for r in runs if r["name"] == n} for n in names}
    rows = []
    for name in names:
        seeds = sorted(by_name[name])
        row: dict[str, Any] = {"name": name, "seeds": seeds, "top1_per_seed": [by_name[name][s]["top1"] for s in seeds]}
        for key in ("top1", "top5", "wall_s"):
            row[key], row[f"{key}_std"] = _mean_std([by_name[name][s][key] for s in seeds])
        rows.append(row)
    for row, nxt in zip(rows, rows[1:]):
        common = [s for s in row["seeds"] if s in by_name[nxt["name"]]]
        if not common:
            continue
        gap, gap_std = _mean_std([by_name[row["name"]][s]["top1"] - by_name[nxt["name"]][s]["top1"] for s in common])
        spread = [v for v in (row["top1_std"], nxt["top1_std"]) if v is not None]
        row.update({"next": nxt["name"], "gap_to_next": gap, "gap_to_next_std": gap_std,
                    "gap_holds": gap > 2 * max(spread) if spread else None})
    return rows


def summary_table(summary: list[dict[str, Any]], seeds: int) -> Table:
    """The summary rows (:func:`summarise`) as the table ``leoclr quickstart`` prints."""
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
