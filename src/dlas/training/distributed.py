"""Distributed data-parallel training (``torchrun``), one process per GPU or CPU worker.

``dlas train`` started by ``torchrun --nproc_per_node N -m dlas train ...`` finds ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment, joins the process group (NCCL on CUDA,
gloo on CPU) and wraps the network in :class:`torch.nn.parallel.DistributedDataParallel`. The
recipe's ``batch_size`` stays the *global* batch: each process takes an equal share, and the loss
is normalised by the class weights of the whole global batch, so N processes compute the same
update as one process would (up to floating-point summation order). Only rank 0 writes files and
reports progress.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DistContext", "init_distributed"]

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """This process's place in a distributed run (``world_size`` 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether several processes take part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and reports progress."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes (in place; returned for convenience)."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        """Wait for all processes."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device_type: str) -> DistContext:
    """Join the process group described by the environment, if any (see module docstring)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    log.info("distributed training: rank %d of %d (local rank %d)", rank, world, local)
    return DistContext(rank=rank, world_size=world, local_rank=local, owns_group=owns)
