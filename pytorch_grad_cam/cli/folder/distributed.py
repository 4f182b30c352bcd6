"""Folder mode under ``torchrun``: this process's rank, joining the process group (gloo
on the CPU, nccl on one GPU per local rank), each rank's share of the CPU threads, and
gathering every rank's summary on rank 0. Each rank explains the shard
``files[rank::world_size]`` of the sorted file list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import List, Optional

import torch

from pytorch_grad_cam.cli.jobs import CLIError

#: How long a rank waits for the others at the end (a resumed shard may be far behind).
_COLLECTIVE_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environment(cls) -> "Ranks":
        """From torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE.

        Raises:
            CLIError: if they are not whole numbers.
        """
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            return cls(
                rank=int(os.environ.get("RANK", "0")) if world_size > 1 else 0,
                world_size=world_size,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            )
        except ValueError as error:
            raise CLIError(f"torchrun's environment is not understood ({error}); run under torchrun or without it")

    @property
    def distributed(self) -> bool:
        """Whether there are several processes (torchrun's WORLD_SIZE > 1)."""
        return self.world_size > 1


def start_process_group(ranks: Ranks, device: torch.device) -> torch.device:
    """Join torchrun's process group (nccl for a GPU, one per local rank; gloo on the CPU);
    the device this rank computes on."""
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=_COLLECTIVE_TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=_COLLECTIVE_TIMEOUT)
    return device


def set_threads(ranks: Ranks) -> None:
    """Several ranks on one machine share its cores: without OMP_NUM_THREADS (torchrun sets
    it to 1 unless given), each rank takes its share."""
    if ranks.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_world_size))


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def gather_on_rank_0(ranks: Ranks, value: object) -> Optional[List[object]]:
    """Every rank's ``value``, in rank order, on rank 0; None on the other ranks."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    gathered: Optional[List[object]] = [None] * ranks.world_size if ranks.rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
