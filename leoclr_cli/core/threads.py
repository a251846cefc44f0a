"""CPU threads of the training process: ``--threads N`` / the protocol's ``threads``, or a fair default.

PyTorch gives every process as many threads as the machine has cores. Two runs on one machine, or
one run and its DataLoader workers, then fight over the same cores: two runs sharing 2 cores did 57
steps in 9.5 minutes, each about 5x faster with one thread. The default here divides the cores this
process may use (``os.sched_getaffinity``, so ``taskset`` and a scheduler's CPU set count) among the
torchrun ranks on this node (``LOCAL_WORLD_SIZE``) and, within a rank, the training process and its
loader workers (PyTorch runs each worker with one thread): ``max(1, cores // ranks - workers)``.
An ``OMP_NUM_THREADS`` in the environment is the user's choice and is kept. :func:`recorded` is
what ``env.json`` stores.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from ..errors import UserError

_choice: dict[str, Any] = {}


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads(workers: int, cores: Optional[int] = None, ranks: Optional[int] = None) -> int:
    """``max(1, cores // ranks - workers)``: this rank's share of the cores, less one per loader worker."""
    cores = available_cores() if cores is None else cores
    ranks = ranks if ranks is not None else max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, cores // ranks - workers)


def apply(requested: Optional[int], workers: int) -> int:
    """Set torch's intra-op threads: ``requested`` if given, else ``OMP_NUM_THREADS``'s if set, else
    :func:`default_threads`; returns the count."""
    if requested and requested > 4 * available_cores():
        raise UserError(f"threads {requested} is more than 4 per CPU core this process may use "
                        f"({available_cores()}); more threads only wait for the cores, and each costs memory")
    if requested:
        n, source = requested, "threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        n, source = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        n, source = default_threads(workers), "default: cores // ranks - workers"
    torch.set_num_threads(n)
    _choice.clear()
    _choice.update({"threads": n, "threads_from": source, "cpus_available": available_cores(),
                    "loader_workers": workers})
    return n


def recorded() -> dict[str, Any]:
    """The last :func:`apply`'s choice (for env.json); the current thread count if none was made."""
    return dict(_choice) if _choice else {"threads": torch.get_num_threads(), "cpus_available": available_cores()}
