"""Distributed Muon's planning: the same numbers as one process, with no rank repeating another's work.

The engines (:mod:`muonlab.optim.engines`) run the step; this package says where things live and
who computes what, as pure functions of shapes and the world size plus a few collectives:
:mod:`.layouts` (which rank holds which part of each matrix and its state), :mod:`.owners` (which
rank orthogonalizes each matrix, and the all-to-all that moves the pieces), :mod:`.collectives`.
Replicated parameters say how they are trained with :func:`mark_data_parallel` (``"ddp"``,
``"zero1"``, or ``"replicated"`` beside tensor-parallel DTensors);
``muonlab.parallel.parallelize(model, mode or mesh)`` applies the wrapping and the marks; DTensors
(FSDP2, tensor parallelism) are recognised as they are (:mod:`.shards`).

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

__all__ = ["DATA_PARALLEL_MODES", "PARALLEL_ATTR", "DataParallel", "mark_data_parallel"]

DATA_PARALLEL_MODES = ("ddp", "zero1", "replicated")
PARALLEL_ATTR = "_muon_data_parallel"


@dataclass(frozen=True)
class DataParallel:
    """How a replicated parameter is trained: ``mode`` ``"ddp"`` or ``"zero1"`` over ``group``
    (None: the default process group), or ``"replicated"``: every rank already computes the same
    gradient (tensor-parallel ranks, which see the same batch), so nothing is reduced."""

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
