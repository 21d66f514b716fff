"""Data parallelism applied to an unmodified model, and the launch side of a multi-process run.

::

    runtime = init_runtime("fsdp")                   # joins the torchrun process group (gloo/NCCL)
    forward = parallelize(model, runtime.mode)       # DDP wrapper, FSDP2 in place, or ZeRO-1 marks
    optimizer = Muon(param_groups(model), ...)       # the same Muon: it reads the mode from the parameters

Modes (``PARALLEL_MODES``): ``none``, ``ddp``, ``zero1`` (Moonlight's Distributed Muon), ``fsdp``
(FSDP2 ``fully_shard``); or a named device mesh, ``parallelize(model, init_mesh("cpu", dp_shard=2,
tp=2))`` or ``init_mesh("cpu", dp_shard=2, ep=2)``: FSDP2 × tensor parallelism × expert parallelism
(:mod:`.mesh`, :mod:`.experts`). See :mod:`muonlab.optim.engines` for what the
optimizer does in each, and :mod:`muonlab.rundir.checkpoint.sharded` for checkpoints that load at
any world size.
"""

from .mesh import MESH_DIMS, data_parallel_group, data_parallel_rank, data_parallel_size, init_mesh
from .runtime import PARALLEL_MODES, Runtime, init_runtime
from .wrap import STEP_STATISTICS_ATTR, TELEMETRY_STATISTICS_ATTR, parallelize, sum_step_statistics, unwrap

__all__ = ["MESH_DIMS", "PARALLEL_MODES", "STEP_STATISTICS_ATTR", "TELEMETRY_STATISTICS_ATTR", "Runtime",
           "data_parallel_group", "data_parallel_rank", "data_parallel_size", "init_mesh", "init_runtime",
           "parallelize", "sum_step_statistics", "unwrap"]
