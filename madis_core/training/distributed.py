"""Process-group setup for ``torchrun`` (one process per GPU, many nodes) and CPU gloo runs.

Why a module of its own: the engine must behave the same with 1 process or N; all
``torch.distributed`` calls go through these helpers, which do nothing when the
world has one process. The environment is torchrun's: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``. Backend: nccl when the run uses
CUDA, gloo otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist

from madis_core.backends.base import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device_pref: str = "auto") -> DistInfo:
    """Join the process group if torchrun started several processes; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref)
    if device.startswith("cuda"):
        if world > 1 and device == "cuda":
            device = f"cuda:{local}"
        torch.cuda.set_device(torch.device(device))
    info = DistInfo(rank, world, local, torch.device(device))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set; start multi-process runs with torchrun")
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        info.initialized_here = True
    return info


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> List[Any]:
    """Every rank's ``obj`` in rank order (a one-element list when not distributed)."""
    if not info.distributed:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    """Average a float tensor over ranks (for logging; gradients are DDP's business)."""
    if not info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size
