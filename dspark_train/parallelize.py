"""Distributed setup and the one place parallelism is applied to the (single-device) draft model.

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; or srun's, see
launch_env.py); without it the run is
a world of one and no process group is created, so `python -m dspark_train` and tests need no launcher.
Backend: NCCL when CUDA is available, else gloo (CPU, tests).

`parallelize()` wraps the model, in a fixed order: FSDP2 (`fully_shard` on each decoder layer, then the
root) when asked, else DDP when world size > 1, else nothing. Model code never sees any of it. Frozen
target-derived tensors (embedding, lm_head rows) are sharded with the rest under FSDP and ignored by
DDP's gradient reduction (they have no gradient).
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from dspark_train.launch_env import apply_slurm_env


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group when launched by torchrun or srun (idempotent); pick this rank's device."""
    apply_slurm_env()  # srun-started tasks: RANK/WORLD_SIZE/... from SLURM_PROCID/SLURM_NTASKS/... (launch_env.py)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device in (None, "auto") else device.startswith("cuda")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None,
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: nn.Module, info: DistInfo, *, fsdp: bool) -> nn.Module:
    """Return the module the training step calls (the model itself, DDP- or FSDP2-wrapped)."""
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if not dist.is_initialized():
            raise ValueError("train.fsdp=true needs a distributed launch (torchrun / --nproc-per-node >= 2)")
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for layer in getattr(model, "layers", []):  # one all-gather per layer: overlap and peak memory
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        with warnings.catch_warnings():
            # torch >= 2.13 renames it forward_sync_buffers, but only broadcast_buffers=False also skips the
            # init broadcast of the (large, identical on every rank) frozen embedding buffer.
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            return DistributedDataParallel(
                model,
                device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                broadcast_buffers=False,  # frozen target tensors and RoPE tables are identical by construction
            )
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying model (DDP keeps it in `.module`; FSDP2 shards in place)."""
    return getattr(model, "module", model)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place), a no-op in a world of one."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
