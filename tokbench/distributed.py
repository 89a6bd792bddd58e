"""Rank, world size and barriers for runs under ``torchrun`` (gloo on CPU, nccl never needed: ranks only sync).

A process started by torchrun carries ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; only then is a process group
initialised. Without them every helper answers as a world of one process.
"""

from __future__ import annotations

import os
from datetime import timedelta

TIMEOUT = timedelta(hours=12)  # rank 0 waits at the barrier while the slowest rank finishes its clips


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init() -> None:
    """Join the process group of a torchrun launch (gloo); a no-op otherwise or when already joined."""
    if not launched_by_torchrun():
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TIMEOUT)


def device(requested: str = "cpu"):
    """The ``torch.device`` of this process: ``cuda`` means this rank's own GPU (``cuda:LOCAL_RANK`` under
    torchrun); a one-line error where torch sees no CUDA device."""
    import torch

    from tokbench.errors import ConfigError

    if not requested.startswith("cuda"):
        return torch.device(requested)
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}, but torch sees no CUDA device")
    if requested == "cuda" and launched_by_torchrun():
        requested = f"cuda:{os.environ['LOCAL_RANK']}"
    dev = torch.device(requested)
    torch.cuda.set_device(dev)
    return dev


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist else 0


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    dist = _dist()
    if dist:
        dist.barrier()


def all_ok(ok: bool) -> bool:
    """Whether ``ok`` holds on every rank (a rank that failed its checks makes every rank stop, not hang)."""
    dist = _dist()
    if not dist:
        return ok
    import torch

    flag = torch.tensor([0 if ok else 1])
    dist.all_reduce(flag)
    return int(flag) == 0


def shard(indices: range | list[int]) -> list[int]:
    """This rank's share of clip indices: clip ``i`` goes to rank ``i % world``."""
    r, w = rank(), world_size()
    return [i for i in indices if i % w == r]


def finish() -> None:
    """Leave the process group (end of a torchrun command)."""
    dist = _dist()
    if dist:
        dist.destroy_process_group()
