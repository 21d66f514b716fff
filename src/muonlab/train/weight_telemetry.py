"""Weight RMS and block-output RMS at telemetry steps (Moonlight, arXiv 2502.16982 §2.2, Figure 2; App. D).

Without weight decay, Muon's weights and layer outputs keep growing in RMS over a long run; with
weight decay (on the RMSNorm gains too, App. D) they stay bounded. The training loop logs, on
telemetry steps (``muonlab.train.loop``):

- ``weight_rms/<type>`` = sqrt(Σ w² / N) over all N elements of all parameters of one *type*: the
  parameter's name with its block index replaced by ``*`` (``layers.3.attn.wq.weight`` →
  ``layers.*.attn.wq.weight``; ``embed.weight`` stays itself), on the whole weights after the
  step's update: an FSDP2 ``Shard(0)`` DTensor adds its shards' sums of squares over its mesh;
  DDP and ZeRO-1 parameters are whole on every rank.
- ``output_rms/layer{i}`` = sqrt(Σ x² / N) of block i's output (the residual stream after it) over
  the step's training micro-batches, on every data-parallel rank together, recorded by the blocks
  themselves (``muonlab.models.output_rms``) only while armed; ``output_rms/max`` is the largest.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..models.output_rms import OutputRMSTracker

__all__ = ["output_trackers", "parameter_type", "take_output_rms", "track_output_rms", "weight_rms"]

_BLOCK_INDEX = re.compile(r"(^|\.)layers\.\d+\.")


def parameter_type(name: str) -> str:
    """``name`` with the block index replaced by ``*``: ``layers.0.mlp.w_up.weight`` → ``layers.*.mlp.w_up.weight``."""
    return _BLOCK_INDEX.sub(r"\1layers.*.", name)


def _local_part(name: str, param: Tensor) -> tuple[Tensor, Any]:
    """The elements of ``param`` this process holds, and the mesh whose processes hold the rest (None:
    all of them are here — a plain tensor, or a DTensor replicated on every process)."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None:
        return param, None
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(param.placements)
    if all(isinstance(p, Replicate) for p in placements):
        return param.to_local(), None
    if mesh.ndim != 1 or not isinstance(placements[0], Shard):
        raise ValueError(f"weight_rms reads plain tensors and 1-D sharded DTensors (FSDP2); parameter {name!r} has "
                         f"placements {placements} on a {mesh.ndim}-D mesh")
    return param.to_local(), mesh


@torch.no_grad()
def weight_rms(model: nn.Module) -> dict[str, float]:
    """``weight_rms/<type>`` for every parameter type of ``model`` (module docstring), in float64.

    With FSDP2-sharded parameters every process of their mesh must call this (one all-reduce per mesh).
    """
    named = list(model.named_parameters())
    kinds = list(dict.fromkeys(parameter_type(name) for name, _ in named))
    index = {kind: i for i, kind in enumerate(kinds)}
    counts = [0] * len(kinds)
    sums: dict[Any, Tensor] = {}  # mesh (None: whole tensors here) -> sum of squares per type
    for name, param in named:
        i = index[parameter_type(name)]
        counts[i] += param.numel()  # a DTensor's numel is the whole tensor's
        local, mesh = _local_part(name, param)
        if mesh not in sums:
            sums[mesh] = torch.zeros(len(kinds), dtype=torch.float64, device=local.device)
        sums[mesh][i] += local.detach().double().square().sum()
    total = torch.zeros(len(kinds), dtype=torch.float64)
    for mesh, per_type in sums.items():
        if mesh is not None:
            dist.all_reduce(per_type, group=mesh.get_group())
        total += per_type.cpu()
    return {f"weight_rms/{kind}": math.sqrt(float(total[i]) / counts[i]) for kind, i in index.items()}


def output_trackers(model: nn.Module) -> list[OutputRMSTracker]:
    """The modules of ``model`` that record their output RMS (its blocks), in ``modules()`` order: block i."""
    return [m for m in model.modules() if isinstance(m, OutputRMSTracker)]


def track_output_rms(model: nn.Module, on: bool = True) -> None:
    """Arm (or disarm) every block's output-RMS recording for the next training forwards."""
    for tracker in output_trackers(model):
        tracker.track_output_rms = on


@torch.no_grad()
def take_output_rms(model: nn.Module) -> dict[str, float]:
    """``output_rms/layer{i}`` and ``output_rms/max`` of the forwards recorded since ``track_output_rms``,
    summed over every process of the default group when there are several; then disarm and reset.

    Empty when nothing was recorded. Every data-parallel process must call this (one all-reduce).
    """
    trackers = output_trackers(model)
    recorded = [(t.output_sumsq, t.output_count) for t in trackers]
    for tracker in trackers:
        tracker.track_output_rms, tracker.output_sumsq, tracker.output_count = False, None, 0
    if all(sumsq is None for sumsq, _ in recorded):
        return {}
    missing = [i for i, (sumsq, _) in enumerate(recorded) if sumsq is None]
    if missing:
        raise ValueError(f"blocks {missing} recorded no output while the others did: every block must run a "
                         "training forward with track_output_rms set before take_output_rms")
    sums = torch.stack([sumsq.double() for sumsq, _ in recorded])
    totals = torch.stack([sums, torch.tensor([n for _, n in recorded], dtype=torch.float64, device=sums.device)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    rms = (totals[0] / totals[1]).sqrt().tolist()
    keys = {f"output_rms/layer{i}": value for i, value in enumerate(rms)}
    keys["output_rms/max"] = max(rms)
    return keys
