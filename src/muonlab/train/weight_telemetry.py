"""Weight RMS and block-output RMS at telemetry steps (Moonlight, arXiv 2502.16982 §2.2, Figure 2; App. D).

Without weight decay, Muon's weights and layer outputs keep growing in RMS over a long run; with
weight decay (on the RMSNorm gains too, App. D) they stay bounded. The training loop logs, on
telemetry steps (``muonlab.train.loop``):

- ``weight_rms/<type>`` = sqrt(Σ w² / N) over all N elements of all parameters of one *type*: the
  parameter's name with its block index replaced by ``*`` (``layers.3.attn.wq.weight`` →
  ``layers.*.attn.wq.weight``; ``embed.weight`` stays itself), on the whole weights after the
  step's update: a DTensor (FSDP2, tensor parallelism) adds its shards' sums of squares over its
  mesh; DDP and ZeRO-1 parameters are whole on every rank.
- ``output_rms/layer{i}`` = sqrt(Σ x² / N) of block i's output (the residual stream after it) over
  the step's training micro-batches, on every data-parallel rank together, recorded by the blocks
  themselves (``muonlab.models.output_rms``) only while armed; ``output_rms/max`` is the largest.
"""

from __future__ import annotations

import math
import re

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..models.output_rms import OutputRMSTracker

__all__ = ["output_trackers", "parameter_type", "take_output_rms", "track_output_rms", "weight_rms"]

_BLOCK_INDEX = re.compile(r"(^|\.)layers\.\d+\.")


def parameter_type(name: str) -> str:
    """``name`` with the block index replaced by ``*``: ``layers.0.mlp.w_up.weight`` → ``layers.*.mlp.w_up.weight``."""
    return _BLOCK_INDEX.sub(r"\1layers.*.", name)


def _sum_of_squares(param: Tensor) -> float:
    """Σ w² over the whole parameter, in float64. A DTensor (FSDP2, tensor parallelism, a device mesh) reduces
    its shards itself: the sum of a sharded tensor is a partial sum that ``full_tensor`` adds up over the
    processes holding the shards, once per element whatever the placements (a collective on every process
    of its mesh)."""
    total = param.detach().double().square().sum()
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    return float(total)


@torch.no_grad()
def weight_rms(model: nn.Module) -> dict[str, float]:
    """``weight_rms/<type>`` for every parameter type of ``model`` (module docstring), in float64.

    With DTensor parameters every process of their mesh must call this (one reduction per parameter).
    """
    sums: dict[str, list[float]] = {}  # type -> [sum of squares, element count]
    for name, param in model.named_parameters():
        entry = sums.setdefault(parameter_type(name), [0.0, 0])
        entry[0] += _sum_of_squares(param)
        entry[1] += param.numel()  # a DTensor's numel is the whole tensor's
    return {f"weight_rms/{kind}": math.sqrt(sumsq / count) for kind, (sumsq, count) in sums.items()}


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
    summed over every process of the default group when there are several (tensor-parallel peers hold the
    same activations: they add equal sums and counts, which leaves the ratio unchanged); then disarm and reset.

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
