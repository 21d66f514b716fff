"""The process a training run is: rank, world size, device, and the process group behind them.

Under ``torchrun`` the environment names the rank and world size (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); :func:`init_runtime` joins the process group
from it — NCCL on CUDA, gloo on CPU — and pins this process to its GPU. Without ``torchrun`` (or
with one process) it is a plain single process and no group is created: the distributed path
with world size 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .mesh import data_parallel_group, data_parallel_rank, data_parallel_size, init_mesh

__all__ = ["PARALLEL_MODES", "Runtime", "init_runtime"]

PARALLEL_MODES = ("none", "ddp", "zero1", "fsdp", "mesh")


@dataclass
class Runtime:
    """This process's place in a run.

    Attributes:
        rank, world_size, local_rank: from ``torchrun`` (0, 1, 0 for a single process).
        device: where this rank computes (``cuda:<local_rank>`` on GPUs).
        mode: the parallel mode (``"none"`` on a single process).
        owns_group: whether :func:`init_runtime` created the process group (and
            :meth:`shutdown` should destroy it).
        mesh: under mode ``"mesh"``, the named device mesh (:mod:`muonlab.parallel.mesh`).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mode: str
    owns_group: bool = False
    mesh: Any = None

    @property
    def parallelism(self):
        """What :func:`~muonlab.parallel.parallelize` applies: the mesh, or the mode's name."""
        return self.mesh if self.mesh is not None else self.mode

    @property
    def dp_rank(self) -> int:
        """Which data shard this rank reads: its rank, or on a mesh its data-parallel coordinate over
        ``dp_shard × ep`` (tensor-parallel peers read the same batch)."""
        return data_parallel_rank(self.mesh) if self.mesh is not None else self.rank

    @property
    def dp_size(self) -> int:
        """How many different data shards the ranks read per step."""
        return data_parallel_size(self.mesh) if self.mesh is not None else self.world_size

    @property
    def dp_group(self):
        """The process group of the ranks that read different data (None: all ranks do)."""
        return data_parallel_group(self.mesh) if self.mesh is not None else None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, metrics, progress and configs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def mean(self, value: float | torch.Tensor) -> float:
        """The average of ``value`` over all ranks (the value itself on one process)."""
        if not self.distributed:
            return float(value)
        t = torch.as_tensor(value, dtype=torch.float64, device=self.device).clone()
        dist.all_reduce(t)
        return float(t) / self.world_size

    def require_same(self, values: dict, what: str) -> None:
        """Fail on every rank, naming the first differing key, unless ``values`` agree across ranks."""
        if self.distributed:
            from ..optim.distributed.collectives import check_same_across_ranks

            check_same_across_ranks([(f"{what} {k}", v) for k, v in values.items()], f"{what}s")

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing on one process)."""
        if self.distributed:
            dist.barrier()

    def shutdown(self) -> None:
        """Leave the process group if this runtime created it."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()  # every rank has finished its collectives before any rank tears down
            dist.destroy_process_group()
            self.owns_group = False


def _device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available; use device='cpu' or 'auto'")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device(name if name != "auto" else "cpu")


def init_runtime(mode: str = "none", device: str = "auto", timeout_s: float = 600.0,
                 mesh_shape: dict[str, int] | None = None) -> Runtime:
    """Join the process group ``torchrun`` describes (if any) and pick this rank's device.

    Args:
        mode: one of ``PARALLEL_MODES``; must not be ``"none"`` when there are several processes.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        timeout_s: how long a collective may wait for a missing rank before failing.
        mesh_shape: with mode ``"mesh"``, the sizes of the mesh dims (e.g. ``{"dp_shard": 2, "ep": 2, "tp": 1}``);
            their product must be the number of processes.
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; valid: {list(PARALLEL_MODES)}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "mesh" and math.prod((mesh_shape or {}).values()) != world_size:
        raise ValueError(f"parallel='mesh' with {mesh_shape} needs {math.prod((mesh_shape or {}).values())} "
                         f"processes but {world_size} were launched; launch that many with torchrun or change the "
                         "mesh sizes")
    if world_size <= 1:
        return Runtime(0, 1, 0, _device(device, 0), "none")
    if mode == "none":
        raise ValueError(
            f"this process is one of {world_size} (WORLD_SIZE={world_size}, e.g. from torchrun) but parallel='none' "
            "would train them independently; choose parallel 'ddp', 'zero1', 'fsdp' or 'mesh'"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        timeout = timedelta(seconds=timeout_s)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun --max-restarts reuses its store across attempts; without a per-attempt namespace
        # the restarted ranks read the dead ranks' addresses and never connect (seen on torch 2.13).
        store = dist.PrefixStore(f"muonlab/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world_size, timeout=timeout,
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    mesh = init_mesh(dev.type, **mesh_shape) if mode == "mesh" else None
    return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, dev, mode, owns, mesh)
