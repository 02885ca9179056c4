"""Full-batch gradient descent across processes and machines with torch.distributed.

Launch with torchrun, e.g. ``torchrun --nproc_per_node 2 -m gdlab train --task digits ...`` (multi-node: the
usual ``--nnodes``, ``--node_rank``, ``--rdzv_endpoint`` arguments). Backend: gloo on CPU, NCCL on CUDA.

Each rank holds a contiguous shard of the training (and test) rows; shard sizes differ by at most one row. The
full-batch gradient is the sum over ranks of each shard's gradient weighted by its rows / N (one all-reduce of
the flattened gradients), so every rank gets exactly the single-process full-batch gradient and takes the same
update; the regulariser is added once, after the all-reduce.

Mini-batch and stochastic regimes follow DistributedSampler's partition semantics: every rank draws the same
seeded permutation of the N global rows each epoch and each row is processed by the one rank that holds it,
once per epoch. Unlike torch's DistributedSampler, the global batch is B (not B per rank): each rank takes the
rows of the step's batch that lie in its shard, and the weighted all-reduce gives the exact gradient of the
B-row batch, so a distributed run takes the same steps as the single-process run with the same seed.

Only rank 0 prints and writes files; an error on any rank ends that process with a non-zero status,
and torchrun then stops the others; collective operations time out after
``GDLAB_DIST_TIMEOUT_S`` seconds (default 300) so no rank waits forever.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gdlab.errors import GdlabError

TIMEOUT_ENV = "GDLAB_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Shard:
    """This rank's part of the data: global row counts, its train/test offsets and sizes."""

    rank: int
    world_size: int
    n_train: int
    n_test: int
    train_start: int
    train_stop: int
    test_start: int
    test_stop: int


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process job (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that prints and writes."""
    return rank() == 0


def init_from_env(device: str = "cpu") -> None:
    """Join the process group torchrun described (no-op for a single process): gloo on CPU, NCCL on CUDA."""
    if not launched_by_torchrun() or is_initialized():
        return
    if not dist.is_available():
        raise GdlabError("this torch build has no torch.distributed; run a single process")
    timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    backend = "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """Contiguous rows [start, stop) of ``rank_`` among ``world`` ranks; sizes differ by <= 1."""
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


def make_shard(n_train: int, n_test: int) -> Shard | None:
    """This process's shard, or None when not running distributed."""
    if not is_initialized() or world_size() == 1:
        return None
    r, w = rank(), world_size()
    if n_train < w:
        raise GdlabError(f"{n_train} training rows cannot be shared by {w} processes; use fewer processes")
    return Shard(r, w, n_train, n_test, *shard_bounds(n_train, r, w), *shard_bounds(n_test, r, w))


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over all ranks, in place: one all-reduce per dtype (flattened)."""
    if not is_initialized():
        return
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for same in groups.values():
        flat = torch.cat([t.reshape(-1) for t in same])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for t, part in zip(same, flat.split([t.numel() for t in same])):
            t.copy_(part.view_as(t))


def agree_max(value: float) -> float:
    """The maximum of ``value`` over ranks (so decisions on wall time are taken together)."""
    if not is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not is_initialized():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)
