"""Data: sources by name (the built-in ones and local datasets in their official layouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError
from .builtin import BuiltinScenes, BuiltinTextures


def open_data(source: str, root: Optional[str], split: str, *, verify_checksums: bool = True,
              builtin_n: int = 4000) -> torch.utils.data.Dataset:
    """A dataset of (PIL RGB image, label) with ``classes``, ``num_classes`` and ``targets``."""
    if source == "builtin":
        return BuiltinScenes(split, n=builtin_n)
    if source == "builtin-textures":
        return BuiltinTextures(split, n=builtin_n)
    from .sources import open_source

    if root is None:
        raise UserError(f"data source '{source}' needs a path: give --data PATH")
    return open_source(source, Path(root).expanduser(), split, verify_checksums=verify_checksums)


def default_eval_splits(source: str) -> tuple[str, str]:
    """(train, test) split names of a labelled source."""
    if source == "pets":
        return ("trainval", "test")
    return ("train", "val") if source == "imagefolder" else ("train", "test")
