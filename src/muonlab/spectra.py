"""SVD entropy of weight matrices (Moonlight, arXiv 2502.16982 §3.4, Figure 4).

For a matrix with singular values σ₁ … σ_n::

    H(σ) = −(1 / log n) · Σᵢ pᵢ log pᵢ,   pᵢ = σᵢ² / Σⱼ σⱼ²

normalised to [0, 1]: 1 when all singular values are equal, 0 for a rank-one matrix. Training logs
it (``svd_entropy/<name>[/<expert>]``); :mod:`muonlab.analysis.spectra` groups those by matrix type.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .optim.routing import route_parameters

__all__ = ["svd_entropies", "svd_entropy"]


def svd_entropy(matrix: torch.Tensor) -> float:
    """Normalised SVD entropy ``H(σ)`` of one 2-D matrix (computed in float64)."""
    if matrix.ndim != 2:
        raise ValueError(f"svd_entropy needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    sigma = torch.linalg.svdvals(matrix.detach().double())
    n = sigma.numel()
    if n < 2:
        return 0.0
    p = sigma.square() / sigma.square().sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum() / math.log(n))


@torch.no_grad()
def svd_entropies(model: nn.Module) -> dict[str, float]:
    """``{"svd_entropy/<param name>": H}`` for every 2-D weight except embeddings and the LM head.

    3-D expert stacks ``[E, A, B]`` give one entry per expert: ``svd_entropy/<name>/<e>``.
    """
    result: dict[str, float] = {}
    for rp in route_parameters(model):
        if rp.algorithm != "muon" and rp.role != "router":
            continue
        weight = rp.param
        if weight.ndim == 3 and rp.role == "expert":
            for e, expert in enumerate(weight.unbind(0)):
                result[f"svd_entropy/{rp.name}/{e}"] = svd_entropy(expert)
        else:
            result[f"svd_entropy/{rp.name}"] = svd_entropy(weight.reshape(weight.shape[0], -1))
    return result
