"""Starting a run's processes: the launcher tie, the process group, the thread count — with their checks."""

from __future__ import annotations

import os

import torch

from ..parallel import Runtime, init_runtime
from ..parallel.launcher import die_with_launcher
from .config import TrainConfig

__all__ = ["start_runtime"]


def start_runtime(config: TrainConfig) -> Runtime:
    """Join the process group (under torchrun), check that every rank got the same config, set threads.

    Refuses (``ValueError``, one sentence) more threads than the machine has cores and a parallel
    mode without the processes to run it; a torchrun worker is tied to its launcher first."""
    die_with_launcher()  # a worker must not outlive a killed torchrun and go on writing the run folder
    cores = os.cpu_count() or 1
    if config.threads > cores:
        raise ValueError(f"threads={config.threads} exceeds the {cores} CPU cores of this machine, which would run "
                         f"many times slower; use at most {cores} (0: torch's default)")
    if config.parallel not in ("none", "mesh") and int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        raise ValueError(f"parallel={config.parallel!r} needs several processes but this is one; launch it with "
                         "torchrun --nproc_per_node=N -m muonlab.cli train ..., or use parallel='none'")
    mesh_shape = {"dp_shard": config.dp_shard, "ep": config.ep, "tp": config.tp} if config.parallel == "mesh" else None
    runtime = init_runtime(config.parallel, config.device, mesh_shape=mesh_shape)
    runtime.require_same(config.to_dict(), "config")  # ranks launched with different settings stop here
    if runtime.distributed and runtime.mode in ("fsdp", "mesh") and config.spectra_every:
        raise ValueError("spectra_every needs whole weight matrices, which FSDP2 shards across ranks; use "
                         "parallel='ddp' or 'zero1' for SVD-entropy logging, or spectra_every=0")
    if config.threads:
        torch.set_num_threads(config.threads)
    return runtime
