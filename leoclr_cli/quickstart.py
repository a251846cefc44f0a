"""``leoclr quickstart``: pretrain on the built-in data, linear-evaluate, compare with random init.

Uses ``protocols/quickstart.yaml`` (installed as ``leoclr_cli.protocols``, so an installed leoclr runs
it from any directory). Linear evaluation uses cached features (``train_augment: none``), so the
whole run fits in a few minutes of a 2-core CPU. A finished quickstart directory is reused: the
second call prints the table again from the checkpoints; ``--force`` redoes it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console

from . import checkpoint as ckpt
from .checkpoint import latest_state
from .evaluate.linear import run_linear_eval
from .nets import build_backbone
from .pretrain import run_pretrain
from .schema import load_protocol, protocol_json



def protocol_file(name: str) -> Path:
    """A protocol shipped with leoclr (the repo's protocols/, installed as leoclr_cli.protocols)."""
    in_checkout = Path(__file__).resolve().parent.parent / "protocols" / name
    if in_checkout.is_file():
        return in_checkout
    from importlib.resources import files

    return Path(str(files("leoclr_cli.protocols").joinpath(name)))
LINEAR_OVERRIDES = {"train_augment": "none", "epochs": 100, "lr": 10.0, "batch_size": 256,
                    "transform.size": 32, "transform.resize": 32, "transform.test": "none",
                    "transform.normalize": "builtin"}


def _resume_or_fresh(run_dir: Path, force: bool) -> tuple[Optional[str], bool]:
    if not force and run_dir.exists() and latest_state(run_dir) is not None:
        return "auto", False
    return None, True


def run_quickstart(method: str, out_dir: Path, *, epochs: Optional[int] = None, force: bool = False,
                   quiet: bool = False, console: Optional[Console] = None,
                   overrides: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """``overrides``: more dotted protocol fields (e.g. ``augment.crops``) on top of quickstart.yaml."""
    console = console or Console(stderr=True)
    p = load_protocol("pretrain", protocol_file("quickstart.yaml"),
                      {"method.name": method, "optim.epochs": epochs, **(overrides or {})})
    lin_over = {**LINEAR_OVERRIDES, "data.builtin_train": p.data.builtin_train,
                "data.builtin_test": p.data.builtin_test, "seed": p.seed}
    rows = []

    pre_dir = out_dir / "pretrain"
    resume, fresh = _resume_or_fresh(pre_dir, force)
    t0 = time.perf_counter()
    run_pretrain(p, pre_dir, resume=resume, force=fresh, quiet=quiet, console=console)
    lin = load_protocol("linear-eval", None, lin_over)
    resume, fresh = _resume_or_fresh(out_dir / "linear-eval", force)
    r = run_linear_eval(lin, pre_dir / "backbone.safetensors", out_dir / "linear-eval", resume=resume, force=fresh,
                        quiet=quiet, console=console)
    crops = f", {p.augment.crops} crops" if p.augment.crops != "random" else ""
    rows.append({"name": f"{method}{crops}, {p.optim.epochs} epochs", "top1": r["top1"], "top5": r["top5"],
                 "wall_s": time.perf_counter() - t0})

    t0 = time.perf_counter()
    rand_dir = out_dir / "random-init"
    torch.manual_seed(p.seed)
    backbone = build_backbone(p.model.arch, cifar_stem=p.model.cifar_stem)
    ckpt.save_backbone(rand_dir / "backbone.safetensors", backbone, arch=p.model.arch, cifar_stem=p.model.cifar_stem,
                       method="random-init", epoch=0, protocol_json=protocol_json(p))
    resume, fresh = _resume_or_fresh(rand_dir / "linear-eval", force)
    r = run_linear_eval(lin, rand_dir / "backbone.safetensors", rand_dir / "linear-eval", resume=resume, force=fresh,
                        quiet=quiet, console=console)
    rows.append({"name": "random init", "top1": r["top1"], "top5": r["top5"],
                 "wall_s": time.perf_counter() - t0})
    from .rundir import write_json

    write_json(out_dir / "quickstart.json", {"method": method, "rows": rows})
    return rows
