"""Data-parallel helpers on top of ``torch.distributed`` (DDP launched by ``torchrun``).

A single process is a :class:`DistContext` with ``world_size == 1``: every collective is then a
no-op, so the training code has one path. Under ``torchrun`` (``WORLD_SIZE > 1``) the process
group is initialised with NCCL on CUDA and Gloo on CPU.

Sharding convention: rank ``r`` of ``R`` owns the rows ``r, r + R, r + 2R, ...`` of a tensor
(rank-strided), both for an epoch's permutation and for the evaluation passes.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistContext", "setup_distributed"]


@dataclass
class DistContext:
    """Rank, world size and the device used for collectives of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    comm_device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """True when running with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files or prints)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Sum a list of numbers over the ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def all_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks (returned on the tensor's device; no-op alone)."""
        if not self.enabled:
            return tensor
        staged = tensor.to(self.comm_device).clone()
        dist.all_reduce(staged)
        return staged.to(tensor.device)

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def shard(self, n: int) -> slice:
        """The rank-strided slice of ``range(n)`` owned by this rank."""
        return slice(self.rank, n, self.world_size)

    def gather_strided(self, local: Tensor, total: int) -> Tensor:
        """Reassemble rank-strided shards (``local`` holds rows ``rank::world_size`` of a
        ``total``-row tensor) into the full tensor, in the original order, on every rank."""
        if not self.enabled:
            return local
        rows = -(-total // self.world_size)
        padded = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=self.comm_device)
        padded[: local.shape[0]] = local.to(self.comm_device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
        for r, part in enumerate(parts):
            count = len(range(r, total, self.world_size))
            out[r :: self.world_size] = part[:count].cpu()
        return out

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank."""
        if not self.enabled:
            return
        for buf in module.buffers():
            staged = buf.to(self.comm_device)
            dist.broadcast(staged, src=0)
            if staged is not buf:
                buf.copy_(staged)

    def close(self) -> None:
        """Destroy the process group if this context created it.

        A DistributedDataParallel module still alive in a reference cycle (the run object)
        would be collected *after* the group is gone, and its reducer then aborts the process
        ("terminate called without an active exception", about 1 run in 4 on a loaded 2-core
        machine): collect it first."""
        if self.owns_group and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(use_cuda: bool) -> DistContext:
    """A :class:`DistContext` for this process: single-process unless ``WORLD_SIZE > 1``
    (torchrun), in which case the default process group is initialised (NCCL with CUDA,
    Gloo otherwise) unless the caller already did."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    comm = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        comm_device=comm,
        owns_group=owns,
    )
