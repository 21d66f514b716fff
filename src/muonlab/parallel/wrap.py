"""Apply a data-parallel mode to an unmodified model (torchtitan's ``parallelize`` habit).

=======  ============================================================================================
mode     what happens to the model
=======  ============================================================================================
none     nothing (one process)
ddp      ``DistributedDataParallel``: gradients all-reduced during backward; parameters marked so
         that Muon splits Newton–Schulz among ranks and shares the results
zero1    parameters replicated (synchronised from rank 0) and marked: Muon reduce-scatters the
         gradients, keeps 1/N of the optimizer state per rank and all-gathers the parameters
         (Moonlight's Distributed Muon, arXiv 2502.16982 Algorithm 1)
fsdp     FSDP2 ``fully_shard`` on every block (each element of a top-level ``nn.ModuleList``) and the
         root: parameters become ``Shard(0)`` DTensors, which Muon detects
mesh     a ``DeviceMesh`` from :func:`~muonlab.parallel.mesh.init_mesh` instead of a mode: tensor
         parallelism over ``tp``, expert parallelism over ``ep`` and FSDP2 over ``dp_shard × ep``
         (:mod:`muonlab.parallel.mesh`)
=======  ============================================================================================

Before wrapping, the ranks compare parameter names, shapes and dtypes and fail together naming
the first mismatch (instead of hanging in the first collective).
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import nn

from ..optim.distributed import mark_data_parallel
from ..optim.distributed.collectives import check_same_across_ranks
from .mesh import check_model_fits, parallelize_on_mesh
from .runtime import PARALLEL_MODES

__all__ = ["STEP_STATISTICS_ATTR", "TELEMETRY_STATISTICS_ATTR", "parallelize", "sum_step_statistics", "unwrap"]

STEP_STATISTICS_ATTR = "data_parallel_sum_buffers"
"""A module lists in this attribute the names of buffers that count something per step on each
rank (e.g. an MoE layer's tokens per expert) and must be summed over data-parallel ranks before
the model's ``after_optimizer_step`` reads them."""

TELEMETRY_STATISTICS_ATTR = "data_parallel_sum_telemetry_buffers"
"""A module lists in this attribute the names of buffers that accumulate statistics on each rank
for its ``telemetry()`` (e.g. an MoE layer's routed load since the last telemetry row); they must be
summed over data-parallel ranks right before ``telemetry()`` reads and resets them."""


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile`` and DDP wrappers (FSDP2 wraps in place)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _describe(model: nn.Module) -> list[tuple[str, tuple]]:
    return [
        (f"parameter {name!r} (shape, dtype)", (tuple(p.shape), str(p.dtype))) for name, p in model.named_parameters()
    ]


@torch.no_grad()
def _broadcast_from_rank0(model: nn.Module) -> None:
    """Make every rank start from rank 0's weights and buffers (as DDP does at construction)."""
    tensors = list(model.parameters()) + list(model.buffers())
    for t in tensors:
        dist.broadcast(t, src=0)


def parallelize(model: nn.Module, mode) -> nn.Module:
    """Apply ``mode`` — a name or a device mesh (see the module docstring) — and return the module
    to call for forward passes.

    ``model`` itself stays the user's module (for checkpoints, hooks, telemetry): with ``"ddp"``
    the returned wrapper holds it; with ``"fsdp"`` it is sharded in place; with ``"zero1"`` and
    ``"none"`` the return value is ``model``. Call after moving the model to its device and
    before building the optimizer. With one process (or no process group), every mode is
    ``"none"``.
    """
    if not isinstance(mode, str):
        check_model_fits(model, mode)  # every rank alike, before any communication
        if mode.size() == 1:
            return model
        check_same_across_ranks(_describe(model), "model parameters")
        _broadcast_from_rank0(model)
        return parallelize_on_mesh(model, mode)
    if mode not in PARALLEL_MODES or mode == "mesh":
        raise ValueError(f"unknown parallel mode {mode!r}; valid: {[m for m in PARALLEL_MODES if m != 'mesh']} "
                         "or a device mesh from muonlab.parallel.init_mesh")
    if mode == "none" or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    check_same_across_ranks(_describe(model), "model parameters")
    device = next(model.parameters()).device
    if mode == "ddp":
        mark_data_parallel(model.parameters(), "ddp")
        # Buffers are identical on every rank (synchronised at construction); no per-forward sync.
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, **no_sync
        )
    _broadcast_from_rank0(model)
    if mode == "zero1":
        mark_data_parallel(model.parameters(), "zero1")
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@torch.no_grad()
def sum_step_statistics(model: nn.Module, attr: str = STEP_STATISTICS_ATTR, group=None) -> None:
    """All-reduce (sum) over ``group`` every buffer a module names in its attribute ``attr``.

    Call on every rank before ``model.after_optimizer_step()``, so that non-gradient updates
    driven by per-step counts (MoE load balancing) see the global batch, as on one process; and
    with ``attr=TELEMETRY_STATISTICS_ATTR`` before ``model.telemetry()``, so that it reports the
    global batch's statistics. ``group``: the ranks that read different data (``Runtime.dp_group``;
    None: all ranks) — tensor-parallel peers count the same tokens and must not be summed twice.
    """
    if group is not None and dist.get_world_size(group) == 1:
        return
    for module in unwrap(model).modules():
        for name in getattr(module, attr, ()):
            dist.all_reduce(getattr(module, name), group=group)
