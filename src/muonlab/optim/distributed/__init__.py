"""Distributed Muon: the same numbers as one process, with no rank repeating another's work.

:class:`~muonlab.optim.Muon` picks its engine from the parameters it is given, so the user's code
is the same on one process and on N:

=====================  ===========================================  =================================
parameters             marked by                                    engine
=====================  ===========================================  =================================
plain, unmarked        nothing (one process)                        ``ReplicatedEngine``, world 1
replicated, DDP        ``mark_data_parallel(params, "ddp")``        ``ReplicatedEngine``
replicated, ZeRO-1     ``mark_data_parallel(params, "zero1")``      ``Zero1Engine``
DTensor ``Shard(0)``   FSDP2 ``fully_shard`` (detected)             ``ShardedEngine``
=====================  ===========================================  =================================

``muonlab.parallel.parallelize(model, mode)`` applies the wrapping and the marks. At
construction the ranks compare their optimizer settings and parameter shapes and fail together,
naming the first difference, rather than hang in a later collective.

**Relation to Moonlight's Algorithm 1** (arXiv 2502.16982 §2.3). Algorithm 1 partitions a flat
buffer of all parameters into equal DP chunks; a matrix cut by a chunk boundary must be
"DP-gathered" (bf16) and is orthogonalized redundantly by every rank holding part of it.
``Zero1Layout`` keeps the equal chunks (so reduce-scatter and all-gather are the plain fp32
collectives of ZeRO-1) but assigns whole matrices to ranks (largest first, balanced) and fills
each chunk up with AdamW elements, which split freely. Matrices are then cut only when one rank's
matrices overflow its chunk; only those pieces travel, to the owner and back, and each matrix is
orthogonalized exactly once. Per rank and step, with Ψ parameters (fp32 master weights) of which
Ψ_cut lie in cut matrices outside their owner's chunk and ``N`` ranks:

    ZeRO-1 AdamW:        4Ψ(N−1)/N  (reduce-scatter)  + 4Ψ(N−1)/N  (all-gather)
    Algorithm 1 (paper): the above + 2·Ψ_muon·(N−1)/N at most (bf16 gather): ratio in (1, 1.25]
    muonlab ZeRO-1:      the above + 2·2·Ψ_cut (bf16 there and back), Ψ_cut = 0 whenever each
                         chunk's AdamW share can absorb the imbalance of the matrix assignment

so the ratio to ZeRO-1 AdamW is 1 (+ padding of fewer than N elements) in the common case, and
never above the paper's upper bound as long as Ψ_cut ≤ Ψ_muon·(N−1)/(2N).

**FSDP2** (Essential AI's layer sharding, arXiv 2505.02222 infra note): each 2-D matrix's row
blocks go to one owner in an all-to-all (bf16 with bf16 Newton–Schulz), the owner orthogonalizes
it, and the row blocks go back: 2·2·Ψ_2D·(N−1)/N bytes per rank and step, Newton–Schulz FLOPs per
rank ≤ 1/N of the total + one largest matrix. Expert stacks ``[E, A, B]`` are sharded on E, so
whole experts are already where they are needed: no communication at all.

**DDP**: gradients are already averaged; each matrix is orthogonalized by one owner and its
result (NS dtype) shared with all ranks: 2·Ψ_muon·(N−1)/N bytes per rank instead of N× the NS work.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .collectives import check_same_across_ranks
from .engines import Engine, ReplicatedEngine, ShardedEngine, Zero1Engine

__all__ = [
    "DATA_PARALLEL_MODES",
    "DataParallel",
    "Engine",
    "build_engine",
    "mark_data_parallel",
]

DATA_PARALLEL_MODES = ("ddp", "zero1")
PARALLEL_ATTR = "_muon_data_parallel"


@dataclass(frozen=True)
class DataParallel:
    """How a replicated parameter is trained: ``mode`` ``"ddp"`` or ``"zero1"`` over ``group``
    (None: the default process group)."""

    mode: str
    group: Any = None

    def __post_init__(self) -> None:
        if self.mode not in DATA_PARALLEL_MODES:
            raise ValueError(f"unknown data-parallel mode {self.mode!r}; valid: {list(DATA_PARALLEL_MODES)}")


def mark_data_parallel(params: Iterable[torch.Tensor], mode: str, group=None) -> None:
    """Tell :class:`~muonlab.optim.Muon` that these replicated parameters train under ``mode``."""
    spec = DataParallel(mode, group)
    for p in params:
        setattr(p, PARALLEL_ATTR, spec)


def _is_dtensor(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(p, DTensor)


def build_engine(optimizer) -> Engine:
    """The engine for ``optimizer``'s parameters (see the module docstring)."""
    params = [(g, i, p) for g in optimizer.param_groups for i, p in enumerate(g["params"])]
    if any(_is_dtensor(p) for _, _, p in params):
        check_same_across_ranks(signature(optimizer), "optimizer settings or parameter shapes",
                                next(p for _, _, p in params if _is_dtensor(p)).device_mesh.get_group())
        return ShardedEngine(optimizer)
    specs = [getattr(p, PARALLEL_ATTR, None) for _, _, p in params]
    if all(s is None for s in specs):
        return ReplicatedEngine(optimizer, None)
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
        return ReplicatedEngine(optimizer, None)
    check_same_across_ranks(signature(optimizer), "optimizer settings or parameter shapes", group)
    return ReplicatedEngine(optimizer, group) if spec.mode == "ddp" else Zero1Engine(optimizer, group)


_SIGNATURE_KEYS = ("algorithm", "lr", "weight_decay", "momentum", "nesterov", "ns_steps", "ns_coefficients",
                   "ns_dtype", "ns_method", "scale", "betas", "eps", "ns_eps", "role")


def signature(optimizer) -> list[tuple[str, Any]]:
    """Everything that must agree across ranks: settings per group, name/shape/dtype per parameter."""
    desc: list[tuple[str, Any]] = [("nonfinite", optimizer.nonfinite), ("max_grad_norm", optimizer.max_grad_norm)]
    for gi, group in enumerate(optimizer.param_groups):
        desc += [(f"param group {gi} {key}", str(group.get(key))) for key in _SIGNATURE_KEYS]
        desc.append((f"param group {gi} size", len(group["params"])))
        names = group.get("names")
        for i, p in enumerate(group["params"]):
            label = f"parameter {names[i]!r}" if names else f"parameter {i} of param group {gi}"
            desc.append((f"{label} (shape, dtype)", (tuple(p.shape), str(p.dtype))))
    return desc
