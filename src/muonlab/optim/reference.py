"""A deliberately slow, float64 Muon used only to check the fast paths.

Everything here is a plain loop over parameters and experts, in float64, with the exact polar
factor from an SVD where asked; it follows Moonlight (arXiv 2502.16982) Eq. 1, footnote 1 and
Eq. 4 literally::

    M ← μ M + G
    Õ = NS(G + μ M)   (Nesterov)   or   NS(M)
    W ← W − lr · (s(A, B) · Õ + λ · W)

(``scale="update_norm"``: each matrix's Õ divided by its RMS first, Eq. 6.)

:func:`reference_variant_step` adds the refinements, each from its paper's formula, block by block
with plain loops: per-head blocks (each block ``B`` of the logical matrix orthogonalized and scaled by
its own shape), NorMuon (arXiv 2510.05491, Algorithm 1) and cautious weight decay (arXiv 2510.12402,
Algorithm 1); :func:`reference_adamw_step` takes ``cautious`` too.
"""

from __future__ import annotations

import torch

from .newton_schulz import get_coefficient_set
from .scaling import DEFAULT_UPDATE_RMS, SCALE_RULES, logical_matrix_shape, update_scale

__all__ = ["reference_adamw_step", "reference_decoupled_update", "reference_muon_step", "reference_newton_schulz",
           "reference_polar", "reference_variant_step"]


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
    cautious: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AdamW step (Loshchilov & Hutter, decoupled decay ``W ← W(1 − lr·λ)``) in float64; with
    ``cautious``, ``W ← W − lr·(u + λ·𝟙(u⊙W ≥ 0)⊙W)`` (arXiv 2510.12402, Algorithm 1).

    ``step`` is the 1-based step count after this update. Returns ``(param, exp_avg, exp_avg_sq)``.
    """
    b1, b2 = betas
    W, G = param.double(), grad.double()
    m = b1 * exp_avg.double() + (1 - b1) * G
    v = b2 * exp_avg_sq.double() + (1 - b2) * G * G
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    u = m_hat / (v_hat.sqrt() + eps)
    return reference_decoupled_update(W, u, lr=lr, weight_decay=weight_decay, cautious=cautious), m, v


def reference_decoupled_update(param: torch.Tensor, update: torch.Tensor, *, lr: float, weight_decay: float,
                               cautious: bool = False) -> torch.Tensor:
    """``W − lr·(U + λ·D)`` in float64 with ``U`` the scaled update: decoupled decay ``D = W``, or with
    ``cautious`` ``D = 𝟙(U ⊙ W ≥ 0) ⊙ W`` (Chen et al., arXiv 2510.12402, Algorithm 1: a coordinate
    where ``U`` or ``W`` is 0 decays)."""
    W, U = param.double(), update.double()
    D = W * (U * W >= 0) if cautious else W
    return W - lr * (U + weight_decay * D)


def _edges(sizes) -> list[tuple[int, int]]:
    out, start = [], 0
    for size in sizes:
        out.append((start, start + size))
        start += size
    return out


def reference_variant_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor,
    row_state: torch.Tensor | None = None,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.95,
    nesterov: bool = True,
    row_blocks: tuple[int, ...] | None = None,
    col_blocks: tuple[int, ...] | None = None,
    normuon: bool = False,
    beta2: float = 0.95,
    normuon_eps: float = 1e-8,
    cautious: bool = False,
    update_rms: float = DEFAULT_UPDATE_RMS,
    coefficients="jordan",
    steps: int = 5,
    transposed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One Muon step of a 2-D parameter (logical ``[out, in]``, stored transposed if asked) with the
    refinements, in float64, under ``scale="moonlight"``; returns ``(param, momentum, row_state)``.

    For each block ``B`` (rows ``row_blocks`` × columns ``col_blocks`` of the logical matrix;
    whole by default), with ``m × n`` its shape::

        O_B = NS(X_B)                                  X = G + μM (Nesterov) or M, M = μM + G
        NorMuon:  v_B = β₂ v_B + (1 − β₂) mean_cols(O_B²);  Ô_B = O_B / (sqrt(v_B) + ε)
                  U_B = 0.2·sqrt(m·n) / ‖Ô_B‖_F · Ô_B        (the paper's η̂ / η)
        else:     U_B = 0.2·sqrt(max(m, n)) · O_B
        W ← W − lr·(U + λ·D),   D = 𝟙(U ⊙ W ≥ 0) ⊙ W if cautious else W

    ``row_state`` is ``[len(col_blocks) · out]`` (column block j's rows at ``j·out``), zeros at first.
    """
    W, G, M = param.double(), grad.double(), momentum_buffer.double()
    if transposed:
        W, G, M = W.T, G.T, M.T
    out_features, in_features = W.shape
    M = momentum * M + G
    X = G + momentum * M if nesterov else M
    rows = _edges(row_blocks or (out_features,))
    cols = _edges(col_blocks or (in_features,))
    v = (row_state.double().clone() if row_state is not None
         else torch.zeros(len(cols) * out_features, dtype=torch.float64))
    U = torch.zeros_like(W)
    for j, (c0, c1) in enumerate(cols):
        for r0, r1 in rows:
            O = reference_newton_schulz(X[r0:r1, c0:c1], coefficients, steps)
            m, n = O.shape
            if normuon:
                rows_v = v[j * out_features + r0 : j * out_features + r1]
                rows_v.mul_(beta2).add_((1 - beta2) * (O * O).mean(dim=1))
                O_hat = O / (rows_v.sqrt()[:, None] + normuon_eps)
                U[r0:r1, c0:c1] = update_rms * (m * n) ** 0.5 / O_hat.norm() * O_hat
            else:
                U[r0:r1, c0:c1] = update_rms * max(m, n) ** 0.5 * O
    W = reference_decoupled_update(W, U, lr=lr, weight_decay=weight_decay, cautious=cautious)
    if transposed:
        W, M = W.T, M.T
    return W, M, v if normuon else None
