"""What the command line runs, imported when a command runs, not when ``leoclr --help`` is asked for.

``cli.py`` and ``options.py`` reach every runner (every module that imports torch) and the protocols
(pydantic: a sixth of a second to import) through this module, as ``lazy.NAME``. The imports under
``TYPE_CHECKING`` below are the table: type checkers and ``tests/test_imports.py`` (its import graph and
cycle check) read them as ordinary imports, and :func:`__getattr__` (PEP 562) imports a name's module
the first time the CLI asks for it. So the CLI module and its flags load without torch or pydantic and
``--help`` answers at once; ``tests/test_help.py`` runs every ``--help`` in a fresh interpreter and checks
that torch stayed out. A new runner is one more name below (docs/architecture.md)."""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import PROTOCOLS, describe, dump, field_rows, find_protocol, listing, load_protocol, parse_set
    from .config import resolved, value_at
    from .core import checkpoint as ckpt
    from .core import threads as cpu_threads
    from .core.backbone import STATE_DICT_TARGETS, export_state_dict
    from .core.results import FinetuneSweepResult
    from .core.rundir import RunDir
    from .data import open_data
    from .data.shards import write_shards
    from .detection.export import write_detectron2_pickle
    from .detection.run import run_detect
    from .evaluate.crop_test import linear_run_defaults, run_crop_test
    from .evaluate.embed import run_embed
    from .evaluate.finetune import label_fractions, run_finetune, run_finetune_sweep, sweep_table
    from .evaluate.inputs import (backbone_and_defaults, evaluation_inputs, own_stats, pixel_stats, source_for,
                                  switch_source)
    from .evaluate.knn_run import run_knn
    from .evaluate.linear import describe_selection, find_linear_run, run_linear_eval
    from .evaluate.transfer import run_transfer
    from .report.pictures import boxes_picture, check_png_name, views_picture
    from .report.report import build_report
    from .workflows.ablate import ablation, linear_protocols, run_ablate
    from .workflows.bench import bench_table, run_bench
    from .workflows.own_data import pretrain_protocol
    from .workflows.pretrain import run_pretrain
    from .workflows.quickstart import DEFAULT_METHODS, run_quickstart, summary_table


@functools.lru_cache(maxsize=1)
def table() -> dict[str, tuple[str, str]]:
    """Name -> (module, what the import takes from it), read from the ``TYPE_CHECKING`` imports above."""
    tree = ast.parse(Path(__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    return {alias.asname or alias.name: (f"{__package__}.{node.module}", alias.name)
            for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}


def __getattr__(name: str) -> Any:
    """Import ``name`` as its ``from MODULE import WHAT`` line says (WHAT: a name in MODULE, or a submodule)."""
    try:
        module, what = table()[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    parent = importlib.import_module(module)
    value = getattr(parent, what) if hasattr(parent, what) else importlib.import_module(f"{module}.{what}")
    globals()[name] = value  # the next access is an ordinary attribute lookup
    return value
