"""Multi-process training with PyTorch DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc_per_node N -m elasticrec train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`setup` then joins the process group (gloo on CPU, nccl on CUDA), with any number of
processes: ``--nproc_per_node 1`` runs the same collectives and DDP wrapper (so a one-GPU machine
exercises nccl). Without those variables everything here is a no-op, so single-process code paths
are unchanged.

Data parallelism keeps the *global* batch of a single-process run: every rank takes the
``rank::world`` slice of the same shuffled global batch, losses are summed and divided by the
global number of target tokens, so the averaged gradient equals the single-process one.
Evaluation is sharded the same way and the per-user ranks are gathered, so metrics are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False  # joined a process group (launched by torchrun, any world size)

    @property
    def enabled(self) -> bool:
        return self.group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_pref: str = "auto") -> DistInfo:
    env = os.environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return DistInfo()
    world = int(env["WORLD_SIZE"])
    if world == 1 and "MASTER_ADDR" not in env:  # a lone RANK=0 / WORLD_SIZE=1 without a launcher
        return DistInfo()
    rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if rank == 0:
        print(f"distributed: {dist.get_backend()} process group, {world} process(es)", flush=True)
    return DistInfo(rank, world, local, group=True)


def all_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dev = torch.device("cuda", info.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        y = x.detach().to(dev, copy=True)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        x = y.to(x.device)
    return x


def gather_concat(arr: np.ndarray, info: DistInfo) -> np.ndarray:
    """Concatenate every rank's array in rank order (exact merge of sharded evaluation)."""
    if not info.enabled:
        return arr
    parts: list = [None] * info.world
    dist.all_gather_object(parts, arr)
    return np.concatenate(parts)


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
