"""Data-parallel training across processes (torchrun / SLURM), the few pieces the rest needs.

``leoclr pretrain`` runs unchanged under ``torchrun --nproc_per_node N -m leoclr_cli pretrain ...``
(one process per GPU; env:// rendezvous from ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/
``WORLD_SIZE``/``LOCAL_RANK``). Under SLURM, ``srun`` with one task per GPU works too: when
``RANK`` is unset, ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` stand in for it (set
``MASTER_ADDR`` to the first node and ``MASTER_PORT`` in the batch script).

What is distributed:

* the data: a :class:`~torch.utils.data.distributed.DistributedSampler` seeded from the protocol's
  seed, reshuffled per epoch; ``optim.batch_size`` is the global batch (``distributed.batch_size:
  global``) or the per-rank one with the lr scaled linearly (``per_rank``);
* the gradients: the task is wrapped in ``DistributedDataParallel`` (the query encoder's
  gradients are averaged across ranks);
* the keys: all-gathered before they are enqueued, so every rank's queue holds every rank's keys;
* the end-to-end methods' negatives: every rank's embeddings, gathered with their gradient;
* BatchNorm: MoCo's shuffle-BN across ranks for the key encoder (:func:`batch_shuffle`,
  :func:`batch_unshuffle`), or SyncBatchNorm (``distributed.bn: sync``, CUDA only); the running
  statistics are averaged across ranks before anything is saved;
* side effects: only rank 0 writes the run directory, logs, metrics and checkpoints.

With one process (no torchrun), every function here is the identity or a no-op. ``torchrun
--nproc_per_node 1`` (``WORLD_SIZE=1`` set) joins a 1-rank process group, so one GPU runs the
distributed code paths (DDP, the gathered queue, shuffle-BN across ranks, SyncBatchNorm) with the
same arithmetic as one process; SLURM's variables start a group only for more than one task.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist

from ..errors import UserError


def _env_int(*names: str) -> Optional[int]:
    for name in names:
        if os.environ.get(name, "").strip():
            try:
                return int(os.environ[name])
            except ValueError:
                raise UserError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None
    return None


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, else SLURM's, else (0, 1, 0)."""
    world = _env_int("WORLD_SIZE")
    if world is not None:
        return _env_int("RANK") or 0, world, _env_int("LOCAL_RANK") or 0
    if _env_int("SLURM_NTASKS") and os.environ.get("MASTER_ADDR"):
        return _env_int("SLURM_PROCID") or 0, _env_int("SLURM_NTASKS") or 1, _env_int("SLURM_LOCALID") or 0
    return 0, 1, 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group the environment describes (if any); returns (rank, world, device).

    On CUDA each process takes the GPU ``LOCAL_RANK`` and uses NCCL; on the CPU it uses gloo. One
    process joins a group only when ``WORLD_SIZE`` says so (torchrun with one process).
    """
    rk, world, local = env_world()
    if active() or world <= 1 and _env_int("WORLD_SIZE") is None:
        return rank(), world_size(), device
    if not os.environ.get("MASTER_ADDR"):
        raise UserError("WORLD_SIZE is set but MASTER_ADDR is not: start with torchrun, or set MASTER_ADDR and "
                        "MASTER_PORT for env:// rendezvous")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"] = str(rk), str(world), str(local)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} has no GPU: this node has {torch.cuda.device_count()}")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(minutes=30))
    global _control
    # host-side flags (the stop signal) travel over gloo on CPU tensors, so reading one never waits for the GPU
    _control = dist.new_group(backend="gloo") if backend != "gloo" else None
    return rank(), world_size(), device


_control = None  # the gloo group for host-side flags when the main group is NCCL


def shutdown() -> None:
    global _control
    if active():
        dist.destroy_process_group()
    _control = None


class HostFlag:
    """An int every rank reports each step, reduced (max) across ranks without a device sync.

    ``exchange(v)`` starts the reduction of ``v`` on a CPU tensor (asynchronously, over gloo) and
    returns the result of the previous call's reduction, so every rank reads the same value at the
    same step and the host never waits for the GPU; the answer arrives one step late. One process:
    ``v`` itself, at once.
    """

    def __init__(self) -> None:
        self._pending: Optional[tuple[torch.Tensor, object]] = None

    def exchange(self, value: int) -> int:
        if not active():
            return value
        previous = self.drain()
        flag = torch.tensor([value], dtype=torch.int64)
        self._pending = (flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control, async_op=True))
        return previous

    def drain(self) -> int:
        """Wait for the reduction in flight (if any) and return it (0 when none)."""
        if self._pending is None:
            return 0
        flag, work = self._pending
        self._pending = None
        work.wait()  # type: ignore[attr-defined]
        return int(flag[0])


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0, in rank order. No gradient."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum over ranks of the gradient of its own slice
    (an all-reduce, then the slice: backend-agnostic, gloo included)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        return all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_grad(x: torch.Tensor) -> torch.Tensor:
    """:func:`all_gather` that gradients flow back through, to the rank each slice came from. With
    each rank's loss a mean over its own rows and DDP averaging the parameter gradients, the update
    is that of one process whose loss is the mean over the global batch."""
    if not active():
        return x
    return _GatherGrad.apply(x)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(x)
    return x


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's ``batch_shuffle_ddp``: this rank's part of a global permutation of the global batch,
    and the index that undoes it. One process: a local permutation."""
    if not active():
        perm = torch.randperm(x.shape[0], device=x.device)
        return x[perm], torch.argsort(perm)
    local = x.shape[0]
    gathered = all_gather(x)
    perm = torch.randperm(gathered.shape[0], device=x.device)
    dist.broadcast(perm, src=0)
    unshuffle = torch.argsort(perm)
    mine = perm.view(world_size(), -1)[rank()]
    assert mine.numel() == local
    return gathered[mine], unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """MoCo's ``batch_unshuffle_ddp``: this rank's rows of the original order."""
    if not active():
        return x[unshuffle]
    gathered = all_gather(x)
    return gathered[unshuffle.view(world_size(), -1)[rank()]]


def wrap(task: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``task`` in DistributedDataParallel when distributed (buffers stay per rank), else ``task``."""
    if not active():
        return task
    ids = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(task, device_ids=ids, broadcast_buffers=False)


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average the BatchNorm running statistics across ranks (before saving): with per-rank BN
    each rank has seen its own share of the batch."""
    if not active():
        return
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world_size())


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type != "cuda":
        raise UserError("distributed.bn 'sync' needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                        "use distributed.bn=shuffle on the CPU")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


def sampler(dataset: torch.utils.data.Dataset, *, shuffle: bool, seed: int) -> Optional[torch.utils.data.Sampler]:
    """A DistributedSampler over this rank's share (None with one process)."""
    if not active():
        return None
    return torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=world_size(), rank=rank(),
                                                           shuffle=shuffle, seed=seed, drop_last=True)
