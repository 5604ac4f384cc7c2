"""Sharding the batches across ``torch.distributed`` processes and gathering
their per-image results."""

from typing import Any, List, Tuple

import torch.distributed as dist


def world() -> Tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n_batches: int) -> range:
    """The batch numbers of this process: batch ``b`` runs on process
    ``b % world_size``."""
    rank, size = world()
    return range(rank, n_batches, size)


def gather(local: Any) -> List[Any]:
    """``local`` of every process, in rank order (``[local]`` when not
    distributed)."""
    size = world()[1]
    if size == 1:
        return [local]
    gathered: List[Any] = [None] * size
    dist.all_gather_object(gathered, local)
    return gathered


def barrier() -> None:
    """Wait for every process (nothing when not distributed)."""
    if world()[1] > 1:
        dist.barrier()
