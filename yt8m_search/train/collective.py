"""Object collectives between a trial's workers (torch.distributed, set up by Ray Train); the
identity with one worker or outside a process group, so every piece also runs in a plain test."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def _single() -> bool:
    return not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1


def gather(obj: Any) -> list[Any] | None:
    """All workers' objects on rank 0 (None elsewhere); ``[obj]`` with one worker."""
    if _single():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if _single():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


__all__ = ["broadcast", "gather"]
