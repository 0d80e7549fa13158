"""The few facts about ``torch.distributed`` the rest of the package needs:
which process this is, how many there are, and starting the group the way
``torchrun`` asks (its environment variables).

Everything works without a process group: one process is rank 0 of 1.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

import torch

__all__ = [
    "rank_and_world",
    "share_of",
    "is_main",
    "barrier",
    "init_from_env",
    "all_reduce_sum",
    "all_gather_objects",
    "shut_down",
]


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> Tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` without one."""
    if not _active():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def share_of(distributed: Optional[bool]) -> Tuple[int, int]:
    """``(rank, world)`` of the share of some work this process does: under
    a process group of several processes its rank's share unless
    ``distributed`` is ``False``; ``(0, 1)``, all of it, otherwise.
    ``distributed=True`` without a process group is refused, not run alone."""
    if distributed and not _active():
        raise ValueError("distributed=True but no torch.distributed process group is initialised")
    rank, world = rank_and_world()
    return (rank, world) if world > 1 and distributed is not False else (0, 1)


def is_main() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    if _active() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over processes (the tensor itself with one)."""
    if _active() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(values)
    return values


def all_gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` with one process)."""
    if not (_active() and torch.distributed.get_world_size() > 1):
        return [obj]
    out: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def init_from_env(device: str = "cpu") -> Tuple[int, int]:
    """Starts the default process group when ``torchrun`` launched several
    processes (``WORLD_SIZE`` > 1 in the environment): NCCL on CUDA, gloo on
    CPU.  Returns ``(rank, world size)``; a no-op for a plain run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not _active():
        if not torch.distributed.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    return rank_and_world()


def shut_down(finished: bool = True) -> None:
    """Ends the default process group.  After a run every process finished,
    all meet at a barrier first: gloo tears its connections down per process,
    and one that closes while a peer still holds an open exchange can abort
    that peer (SIGABRT, "terminate called without an active exception").  After
    a failure there is no barrier: the failed peer would never arrive."""
    if not _active():
        return
    if finished:
        barrier()
    torch.distributed.destroy_process_group()
