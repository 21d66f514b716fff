"""The engines that run a :class:`~muonlab.optim.Muon` step, one per data-parallel layout.

``Muon.step`` always hands the step to its engine. The engine owns where the gradient, the
optimizer state and the Newton–Schulz work live; the update rule itself is the same few pure
functions everywhere (:mod:`muonlab.optim.update_rule`). The engine is chosen from the
parameters, so the user's code is the same on one process and on N:

=====================  ============================================  =============================
parameters             marked by                                     engine
=====================  ============================================  =============================
plain, unmarked        nothing (one process)                         ``ReplicatedEngine``, world 1
replicated, DDP        ``mark_data_parallel(params, "ddp")``         ``ReplicatedEngine``
replicated, ZeRO-1     ``mark_data_parallel(params, "zero1")``       ``Zero1Engine``
DTensor, any mesh      FSDP2 / tensor parallelism (detected)         ``ShardedEngine``
plain beside DTensors  ``mark_data_parallel(params, "replicated")``  ``ShardedEngine``
=====================  ============================================  =============================

Modules: :mod:`.base` (what all share: parameter records, plan cache, Newton–Schulz on owners,
the Muon and AdamW tails), :mod:`.replicated`, :mod:`.zero1`, :mod:`.sharded`. The layouts and the
communication analysis are in :mod:`muonlab.optim.distributed`. At construction on several
processes the ranks compare their optimizer settings and parameter shapes and fail together,
naming the first difference, rather than hang in a later collective.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..distributed import PARALLEL_ATTR
from ..distributed.collectives import check_same_across_ranks
from ..gradients import NonFinitePolicy
from .base import BucketKey, Engine, ParamSlot
from .replicated import ReplicatedEngine
from .sharded import ShardedEngine, sharded_group
from .zero1 import Zero1Engine

__all__ = ["BucketKey", "Engine", "ParamSlot", "ReplicatedEngine", "ShardedEngine", "Zero1Engine", "build_engine"]


def _is_dtensor(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(p, DTensor)


def build_engine(optimizer, policy: NonFinitePolicy) -> Engine:
    """The engine for ``optimizer``'s parameters (see the module docstring)."""
    params = [(g, i, p) for g in optimizer.param_groups for i, p in enumerate(g["params"])]
    if any(_is_dtensor(p) for _, _, p in params):
        check_same_across_ranks(signature(optimizer, policy), "optimizer settings or parameter shapes",
                                sharded_group(optimizer))
        return ShardedEngine(optimizer, policy)
    specs = [getattr(p, PARALLEL_ATTR, None) for _, _, p in params]
    if all(s is None for s in specs):
        return ReplicatedEngine(optimizer, policy)
    for (group, i, p), spec in zip(params, specs):
        if spec != specs[0]:
            names = group.get("names")
            raise ValueError(
                f"parameter {names[i] if names else i!r} of shape {tuple(p.shape)} is marked {spec} but others "
                f"{specs[0]}; give one Muon the parameters of one model parallelized in one mode"
            )
    spec = specs[0]
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"parameters are marked for {spec.mode!r} but no torch.distributed process group is "
                         "initialized; launch with torchrun (muonlab.parallel.init_runtime does the rest)")
    group = spec.group if spec.group is not None else dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return ReplicatedEngine(optimizer, policy)
    check_same_across_ranks(signature(optimizer, policy), "optimizer settings or parameter shapes", group)
    engine = Zero1Engine if spec.mode == "zero1" else ReplicatedEngine
    return engine(optimizer, policy, group)


_SIGNATURE_KEYS = ("algorithm", "lr", "weight_decay", "momentum", "nesterov", "ns_steps", "ns_coefficients",
                   "ns_dtype", "ns_method", "scale", "update_rms", "betas", "eps", "ns_eps", "role", "tp_mode",
                   "transposed", "blocks", "col_blocks", "normuon", "normuon_beta2", "normuon_eps", "cautious_wd")


def signature(optimizer, policy: NonFinitePolicy) -> list[tuple[str, Any]]:
    """Everything that must agree across ranks: settings per group, name/shape/dtype per parameter."""
    desc: list[tuple[str, Any]] = [("nonfinite", policy.policy), ("max_grad_norm", optimizer.max_grad_norm),
                                   ("qk_clip tau", getattr(optimizer.qk_clip, "tau", None))]
    for gi, group in enumerate(optimizer.param_groups):
        desc += [(f"param group {gi} {key}", str(group.get(key))) for key in _SIGNATURE_KEYS]
        desc.append((f"param group {gi} size", len(group["params"])))
        names = group.get("names")
        for i, p in enumerate(group["params"]):
            label = f"parameter {names[i]!r}" if names else f"parameter {i} of param group {gi}"
            desc.append((f"{label} (shape, dtype)", (tuple(p.shape), str(p.dtype))))
    return desc
