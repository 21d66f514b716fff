"""A deliberately slow, float64 Muon used only to check the fast paths.

Everything here is a plain loop over parameters and experts, in float64, with the exact polar
factor from an SVD where asked; it follows Moonlight (arXiv 2502.16982) Eq. 1, footnote 1 and
Eq. 4 literally::

    M ← μ M + G
    Õ = NS(G + μ M)   (Nesterov)   or   NS(M)
    W ← W − lr · (s(A, B) · Õ + λ · W)

(``scale="update_norm"``: each matrix's Õ divided by its RMS first, Eq. 6.)
"""

from __future__ import annotations

import torch

from .newton_schulz import get_coefficient_set
from .scaling import DEFAULT_UPDATE_RMS, SCALE_RULES, logical_matrix_shape, update_scale

__all__ = ["reference_adamw_step", "reference_muon_step", "reference_newton_schulz", "reference_polar"]


def reference_polar(G: torch.Tensor) -> torch.Tensor:
    """Exact polar factor ``U Vᵀ`` of one matrix, in float64."""
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def reference_newton_schulz(G: torch.Tensor, coefficients="jordan", steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton–Schulz on one matrix in float64, exactly as Moonlight Eq. 2 writes it."""
    cset = get_coefficient_set(coefficients)
    X = G.double()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (cset.norm_margin * X.norm() + eps)
    for a, b, c in cset.schedule(steps):
        A = X @ X.T
        X = a * X + b * A @ X + c * A @ A @ X
    return X.T if tall else X


def _matrices(t: torch.Tensor) -> list[torch.Tensor]:
    # The logical matrices of a parameter-shaped tensor, as views.
    rows, cols = logical_matrix_shape(tuple(t.shape))
    if t.ndim == 3:
        return list(t.unbind(0))
    return [t.reshape(rows, cols)]


def reference_muon_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.95,
    nesterov: bool = True,
    scale: str = "moonlight",
    update_rms: float = DEFAULT_UPDATE_RMS,
    coefficients="jordan",
    steps: int = 5,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Muon step on one parameter; returns ``(new_param, new_momentum)`` in float64.

    ``exact=True`` uses the SVD polar factor instead of Newton–Schulz.
    """
    W, G, M = param.double(), grad.double(), momentum_buffer.double()
    M = momentum * M + G
    direction = G + momentum * M if nesterov else M
    out = torch.empty_like(direction)
    s = update_scale(scale, tuple(W.shape), update_rms=update_rms)
    for src, dst in zip(_matrices(direction), _matrices(out)):
        O = reference_polar(src) if exact else reference_newton_schulz(src, coefficients, steps)
        if SCALE_RULES[scale].normalizes:
            O = O / O.pow(2).mean().sqrt()
        dst.copy_(O.reshape(dst.shape))
    W = W - lr * (s * out + weight_decay * W)
    return W, M


def reference_adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AdamW step (Loshchilov & Hutter, decoupled decay ``W ← W(1 − lr·λ)``) in float64.

    ``step`` is the 1-based step count after this update. Returns ``(param, exp_avg, exp_avg_sq)``.
    """
    b1, b2 = betas
    W, G = param.double(), grad.double()
    m = b1 * exp_avg.double() + (1 - b1) * G
    v = b2 * exp_avg_sq.double() + (1 - b2) * G * G
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    W = W * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)
    return W, m, v
