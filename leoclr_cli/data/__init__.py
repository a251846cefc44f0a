"""Data: sources by name (the built-in ones and local datasets in their official layouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError
from .builtin import BuiltinDigits, BuiltinScenes, BuiltinTextures
from .shards import ShardSource
from .sources import open_source


def open_data(source: str, root: Optional[str], split: str, *, verify_checksums: bool = True,
              builtin_n: int = 4000, shard_samples: Optional[int] = None,
              allow_pipe: bool = False) -> torch.utils.data.Dataset:
    """A dataset of (PIL RGB image, label) with ``classes``, ``num_classes`` and ``targets``; for
    ``webdataset`` the :class:`ShardSource` of the shard list ``root`` (streamed, ``split`` unused; a
    ``pipe:`` shard only with ``allow_pipe``)."""
    if source == "builtin":
        return BuiltinDigits(split, n=builtin_n)
    if source == "builtin-photos":
        return BuiltinScenes(split, n=builtin_n)
    if source == "builtin-textures":
        return BuiltinTextures(split, n=builtin_n)
    if source == "webdataset" and root is not None:
        return ShardSource(root, shard_samples, allow_pipe=allow_pipe)
    if root is None:
        raise UserError(f"data source '{source}' needs a path: give --data PATH")
    return open_source(source, Path(root).expanduser(), split, verify_checksums=verify_checksums)


def open_pretrain_data(d, allow_pipe: bool = False) -> torch.utils.data.Dataset:
    """The images of a pretraining protocol's ``data`` section (a :class:`~..config.DataConfig`)."""
    return open_data(d.source, d.root, d.split, verify_checksums=d.verify_checksums, builtin_n=d.builtin_train,
                     shard_samples=d.shard_samples, allow_pipe=allow_pipe)


def default_eval_splits(source: str) -> tuple[str, str]:
    """(train, test) split names of a labelled source."""
    if source == "pets":
        return ("trainval", "test")
    return ("train", "val") if source == "imagefolder" else ("train", "test")
