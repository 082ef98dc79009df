"""Data parallelism through ``torch.distributed`` when launched by ``torchrun``; a no-op otherwise.

Every rank draws the same global batch order from the same seed and takes its own slice of
each batch; DistributedDataParallel averages the gradients, so all ranks keep identical weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from bids_rim.errors import InputError


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


def rank_device(device: torch.device, environ: Mapping[str, str] = os.environ, gpu_count: int | None = None
                ) -> torch.device:
    """The device of this process. Under ``torchrun`` with several processes on CUDA, each process
    takes the GPU of its ``LOCAL_RANK`` (NCCL refuses two ranks on one GPU); otherwise ``device``.

    ``gpu_count`` defaults to the GPUs torch sees. A GPU index given with several processes is
    refused: it would put every rank on that one GPU.
    """
    if int(environ.get("WORLD_SIZE", "1")) <= 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise InputError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                         "give --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    available = torch.cuda.device_count() if gpu_count is None else gpu_count
    if local_rank >= available:
        raise InputError(f"torchrun process {local_rank} has no GPU: {available} visible; start at most "
                         f"{available} processes per node (--nproc-per-node)")
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on
    CUDA, where ``device`` must be this rank's GPU: :func:`rank_device`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if device.type == "cuda":
        torch.cuda.set_device(device)
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
