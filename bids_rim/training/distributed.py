"""Data parallelism through ``torch.distributed`` when launched by ``torchrun``; a no-op otherwise.

Every rank draws the same global batch order from the same seed and takes its own slice of
each batch; DistributedDataParallel averages the gradients, so all ranks keep identical weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def local_slice(batch_indices: torch.Tensor, context: DistContext) -> torch.Tensor:
    """This rank's share of a global batch of indices."""
    return batch_indices[context.rank :: context.world_size]


def wrap(module: nn.Module, context: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` when distributed, else ``module`` itself."""
    if not context.is_distributed:
        return module
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    # The objectives use some parameters twice (QSM stem in two views) and others not at all
    # (the classifier head while pretraining); their graph is the same every step, hence static.
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, static_graph=True)


def all_ranks_agree(value: float, context: DistContext) -> float:
    """Rank 0's value on every rank (keeps early-stopping decisions in step)."""
    if not context.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())
