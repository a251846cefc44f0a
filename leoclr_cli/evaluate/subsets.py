"""Labelled subsets for semi-supervised fine-tuning: SimCLR's list files and seeded class-balanced draws.

A subset file holds one train image per line:

* for sources with image files (``imagefolder``, ``cars``, ``pets``, ``birdsnap``) a file name:
  SimCLR's ``1percent.txt`` / ``10percent.txt`` format (``n01440764_10026.JPEG``, the class is the
  prefix before the first ``_``) or ``<class>/<file>`` (a path relative to the split's folder);
* for array datasets (``cifar10``, ``cifar100``, ``stl10``, ``builtin``) the image's index in the split.

Every run writes the list it used as ``subset.txt`` in its run directory, in this format, so that
``--subset-file RUN/subset.txt`` reproduces the same subset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.atomic import atomic_write_text
from ..errors import UserError


def _draw_per_class(targets: list[int], count: Callable[[int, int], int], seed: int) -> list[int]:
    """Sorted indices: ``count(class, n_c)`` images of each class c, drawn with a generator seeded by ``seed``.
    Unlabelled images (label < 0) are never drawn."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        if t >= 0:
            by_class.setdefault(int(t), []).append(i)
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in sorted(by_class):
        members = by_class[c]
        order = torch.randperm(len(members), generator=gen)[:count(c, len(members))].tolist()
        chosen.extend(members[j] for j in order)
    return sorted(chosen)


def balanced_subset(targets: list[int], classes: list[str], percent: float, seed: int) -> list[int]:
    """Sorted indices of ``percent``% of each class's images (round(n_c * percent / 100) of class c),
    drawn with a generator seeded by ``seed``. Unlabelled images (label < 0) are never drawn."""

    def count(c: int, n: int) -> int:
        k = round(n * percent / 100)
        if k == 0:
            name = classes[c] if c < len(classes) else str(c)
            raise UserError(f"--labels {percent:g}% leaves class '{name}' empty (it has {n} train images, "
                            f"so at least {100 * 0.5 / n:.3g}% is needed)")
        return k

    return _draw_per_class(targets, count, seed)


def balanced_split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(fit, val) sorted indices: ``fraction`` of each class (at least one image, none of a class with a single
    image) held out for validation, drawn with a generator seeded by ``seed``; the rest is the fit set."""
    val = _draw_per_class(targets, lambda c, n: min(n - 1, max(1, round(n * fraction))), seed)
    held = set(val)
    return [i for i, t in enumerate(targets) if t >= 0 and i not in held], val


def subset_lines(source: Any, indices: list[int]) -> list[str]:
    """The subset file's lines for ``indices`` (file names, SimCLR-style where the name allows it)."""
    files = getattr(source, "files", None)
    if files is None:
        return [str(i) for i in indices]
    lines = []
    for i in indices:
        rel = files[i]
        head, name = os.path.split(rel)
        imagefolder = getattr(source, "name", "") == "imagefolder"
        lines.append(name if imagefolder and head and name.startswith(head + "_") and "/" not in head else rel)
    return lines


def write_subset_file(path: Path, source: Any, indices: list[int]) -> None:
    atomic_write_text(Path(path), "".join(line + "\n" for line in subset_lines(source, indices)))


def read_subset_file(path: Path, source: Any) -> list[int]:
    """Indices into ``source`` of the images a subset file lists (file order kept).

    A listed file that is not in ``source``, a bad index, a duplicate or an empty list is a
    UserError naming the file and the line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"subset file {path} does not exist")
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    if not lines:
        raise UserError(f"subset file {path} lists no images")
    split = f"{getattr(source, 'name', 'data')} split '{getattr(source, 'split', '?')}'"
    files = getattr(source, "files", None)
    indices: list[int] = []
    if files is None:
        for n, line in lines:
            if not line.lstrip("-").isdigit() or not 0 <= int(line) < len(source):
                raise UserError(f"subset file {path}, line {n}: {line!r} is not an image index of the {split} "
                                f"(0..{len(source) - 1}; this source has no file names)")
            indices.append(int(line))
    else:
        where = {rel: i for i, rel in enumerate(files)}
        imagefolder = getattr(source, "name", "") == "imagefolder"
        for n, line in lines:
            rel = f"{line.split('_', 1)[0]}/{line}" if imagefolder and "/" not in line else line
            if rel not in where:
                raise UserError(f"subset file {path}, line {n}: {line} is not in the {split} at {source.root}")
            indices.append(where[rel])
    seen: set[int] = set()
    for (n, line), i in zip(lines, indices):
        if i in seen:
            raise UserError(f"subset file {path}, line {n}: {line} is listed twice")
        seen.add(i)
    if any(source.targets[i] < 0 for i in indices):
        raise UserError(f"subset file {path} lists unlabelled images")
    return indices


def take(source: Any, indices: list[int]) -> torch.utils.data.Subset:
    """``source`` restricted to ``indices``, keeping ``targets``, ``classes`` and ``num_classes``."""
    sub = torch.utils.data.Subset(source, indices)
    sub.targets = [source.targets[i] for i in indices]  # type: ignore[attr-defined]
    sub.classes = source.classes  # type: ignore[attr-defined]
    sub.num_classes = source.num_classes  # type: ignore[attr-defined]
    return sub
