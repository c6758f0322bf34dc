"""Data parallelism applied from outside the model code: DDP or FSDP2 (``fully_shard`` per block).

Launch with torchrun; the trainer reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the
environment and uses NCCL on CUDA, gloo on CPU. One node, 8 GPUs::

    torchrun --standalone --nproc-per-node 8 -m bltkit.cli train CONFIG --out DIR

Several nodes (run on every node, the same rendezvous endpoint, ``--node-rank`` 0..N-1)::

    torchrun --nnodes 4 --nproc-per-node 8 --node-rank $NODE_RANK \\
        --rdzv-backend c10d --rdzv-endpoint $HEAD_NODE:29500 --rdzv-id $JOB_ID \\
        -m bltkit.cli train CONFIG --out DIR

``DIR`` must be on a filesystem that every node sees (checkpoints are written by rank 0 and
each rank's RNG state beside them). ``parallel: fsdp`` shards every transformer block and then
the root (torchtitan's layout, docs/reference-semantics.md §13: bf16 parameters, fp32 reductions on CUDA);
``parallel: ddp`` replicates. The global batch (``data.batch_size`` rows) is split over ranks,
so any world size trains on the same rows a step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from ..runtime import resolve_device


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (or reuse an existing one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistEnv(rank, world, local, resolve_device(device_pref, local_rank=local, what="device"), owns_group=False)
    if world <= 1:
        return DistEnv(device=resolve_device(device_pref, local_rank=0, what="device"))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(device_pref, local_rank=local, what="device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world, local, device, owns_group=True)


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def resolve_mode(mode: str, env: DistEnv) -> str:
    if not env.distributed:
        return "none"
    return "ddp" if mode in ("auto", "none") else mode


def wrap_model(model: nn.Module, units: list[nn.Module], mode: str, env: DistEnv,
               param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """DDP-wrap, or ``fully_shard`` each unit and then the root (in place), per ``mode``."""
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
        for unit in units:
            fully_shard(unit, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"parallel must be 'none', 'ddp' or 'fsdp', got {mode!r}")


def grad_sync(model: nn.Module, mode: str, sync: bool):
    """Context that skips gradient synchronisation on non-final accumulation micro-batches."""
    import contextlib

    if mode == "ddp" and not sync:
        return model.no_sync()
    if mode == "fsdp":
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()
