"""The Muon and AdamW update rules, as pure functions on tensors (or lists of them).

Every engine (one process, DDP, ZeRO-1, FSDP2) runs exactly these functions; the engines differ
only in which tensors they pass: whole parameters, local row shards, or flat ranges of a
partition. Element-wise math gives the same bits on a piece as on the whole tensor, so the
layouts agree up to the order in which gradients were summed across ranks.

Muon (Moonlight, arXiv 2502.16982, Eq. 1, footnote 1 and Eq. 4)::

    M ← μ M + G                           momentum_
    Õ = NS(G + μ M)  (Nesterov) or NS(M)  newton_schulz_input_, then newton_schulz.orthogonalize
    W ← W − lr · (s · Õ + λ · W)          decoupled_update_
    (scale="update_norm": Õ ← Õ / RMS(Õ) per logical matrix first, unit_rms_)

Refinements, per parameter group (``Muon``'s ``normuon``, ``cautious_wd``, blocks)::

    NorMuon (arXiv 2510.05491, Algorithm 1), on each orthogonalized block Õ [m, n]:
        v ← β₂ v + (1 − β₂) mean_cols(Õ ⊙ Õ),  Ô = Õ ⊘ (sqrt(v) + ε),  Õ ← Ô · sqrt(min(m, n)) / ‖Ô‖_F
                                               normuon_ (then s·Õ = 0.2·sqrt(mn)/‖Ô‖_F · Ô under "moonlight")
    cautious weight decay (arXiv 2510.12402, Algorithm 1), with U the scaled update:
        W ← W − lr · (U + λ · 𝟙(U ⊙ W ≥ 0) ⊙ W)   cautious_mask, decoupled_update_(mask=...)
    per-block scale (muonlab.optim.blocks): each block scaled by its own shape, holder_scale

AdamW (Loshchilov & Hutter, in ``torch.optim.AdamW``'s foreach arithmetic order)::

    m ← β₁ m + (1 − β₁) g,  v ← β₂ v + (1 − β₂) g²,  W ← W (1 − lr λ) − lr · m̂ / (sqrt(v̂) + ε)
"""

from __future__ import annotations

import math

import torch

from .scaling import SCALE_RULES

__all__ = ["adamw_", "cautious_mask", "cautious_update", "decoupled_update_", "exchange_dtypes", "holder_scale",
           "momentum_", "newton_schulz_input_", "normuon_", "normuon_row_factor_", "row_mean_squares", "scale_rows_",
           "unit_rms_"]


def momentum_(buf: torch.Tensor, grad: torch.Tensor, momentum: float) -> None:
    """``M ← G + μM`` in place, in one pass over ``M`` (the gradient cast to ``M``'s dtype)."""
    torch.add(grad if grad.dtype == buf.dtype else grad.to(buf.dtype), buf, alpha=momentum, out=buf)


def newton_schulz_input_(out: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, momentum: float,
                         nesterov: bool) -> None:
    """Write the Newton–Schulz input, ``G + μM`` (Nesterov) or ``M``, into ``out`` (any dtype, e.g.
    a slot of the bf16 batch), after :func:`momentum_`. The shapes must match ``out``'s."""
    if nesterov:
        torch.add(grad if grad.dtype == buf.dtype else grad.to(buf.dtype), buf, alpha=momentum, out=out)
    else:
        out.copy_(buf)


def unit_rms_(matrices: torch.Tensor) -> None:
    """``O ← O / RMS(O)`` in place for each matrix of a batch ``[N, rows, cols]`` (Moonlight Eq. 6's
    ``O / RMS(O)``), the RMS and the division in at least fp32, so the result has RMS 1 up to the
    rounding of each element to the batch's dtype. An all-zero matrix stays zero."""
    wide = matrices.to(torch.promote_types(matrices.dtype, torch.float32))
    rms = wide.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt().clamp_min(torch.finfo(torch.float32).tiny)
    matrices.copy_(wide / rms)


def normuon_(O: torch.Tensor, v: torch.Tensor, beta2: float, eps: float) -> None:
    """NorMuon's row normalization of a batch of orthogonalized blocks ``O`` ``[N, m, n]`` in place,
    with its per-row second moment ``v`` ``[N, m]`` (fp32, updated in place). Li et al., arXiv
    2510.05491, Algorithm 1::

        v ← β₂ v + (1 − β₂) · mean_cols(O ⊙ O)
        Ô = O ⊘ (sqrt(v) + ε)
        O ← Ô · sqrt(min(m, n)) / ‖Ô‖_F

    The last line gives ``Ô`` the Frobenius norm of an exact semi-orthogonal ``[m, n]`` matrix, so
    that the scale rule then acts as on any orthogonalized update: under ``"moonlight"``,
    ``s·O = 0.2·sqrt(m·n)/‖Ô‖_F · Ô``, the paper's ``η̂ / η`` exactly (update RMS 0.2). Two passes
    over ``O`` (:func:`row_mean_squares`, :func:`scale_rows_`), the rest on one value per row
    (:func:`normuon_row_factor_`); :mod:`muonlab.optim.fused` compiles the two passes."""
    scale_rows_(O, normuon_row_factor_(row_mean_squares(O), v, beta2, eps, O.shape[-1]))


def row_mean_squares(O: torch.Tensor) -> torch.Tensor:
    """``mean_cols(O ⊙ O)``: each row's mean square, ``O`` ``[..., n]`` → ``[...]``, in at least fp32."""
    return torch.linalg.vector_norm(O.to(torch.promote_types(O.dtype, torch.float32)), dim=-1).square() / O.shape[-1]


def normuon_row_factor_(mean_sq: torch.Tensor, v: torch.Tensor, beta2: float, eps: float, cols: int) -> torch.Tensor:
    """NorMuon's per-row factor ``f`` ``[N, m]``, with ``f ⊙ O`` (by rows) ``= Ô·sqrt(min(m, n))/‖Ô‖_F``
    (:func:`normuon_`), from the rows' mean squares ``[N, m]`` of blocks of ``n = cols`` columns; updates
    the second moment ``v`` in place. No pass over ``O``, since
    ``‖Ô‖_F² = Σ_i n · mean_cols(O ⊙ O)_i / (sqrt(v_i) + ε)²``."""
    v.mul_(beta2).add_(mean_sq.to(v.dtype), alpha=1.0 - beta2)
    inverse = (v.sqrt().to(mean_sq.dtype) + eps).reciprocal_()
    frobenius = (mean_sq * inverse.square()).sum(dim=-1, keepdim=True).mul_(cols).sqrt_().clamp_min(
        torch.finfo(torch.float32).tiny)
    return inverse.mul_(math.sqrt(min(mean_sq.shape[-1], cols)) / frobenius)


def scale_rows_(O: torch.Tensor, factor: torch.Tensor) -> None:
    """``O ← f ⊙ O`` by rows in place (``factor`` ``[...]`` for ``O`` ``[..., n]``), in at least fp32 and
    rounded once to ``O``'s dtype. A narrower ``O`` (bf16) is widened, multiplied and narrowed back:
    a CPU multiplies a bf16 tensor by a fp32 factor in place ~8× slower, with the same rounding."""
    wide = O.to(torch.promote_types(O.dtype, torch.float32))
    if wide is O:
        O.mul_(factor.unsqueeze(-1))
    else:
        O.copy_(wide.mul_(factor.unsqueeze(-1)))


def cautious_mask(update: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Cautious weight decay's mask ``𝟙(U ⊙ W ≥ 0)`` (Chen et al., arXiv 2510.12402, Algorithm 1):
    decay only where the update and the weight agree in sign. Element-wise, so exact on any piece;
    ``update`` may be the unscaled ``Õ`` (a positive scale does not change a sign). As 1.0 / 0.0 in
    ``param``'s dtype, so that the decay multiplies by it in place (a bool mask would be converted
    on every use: several times slower on a CPU)."""
    return (update * param).ge_(0).to(param.dtype)


def holder_scale(key, group: dict) -> float:
    """The scale ``s`` the holders multiply a unit's result by: ``s`` of its blocks' one shape under
    the group's rule, or 1 where blocks differ in shape (the owner folded each block's ``s`` in)."""
    shape = key.blocks.uniform
    return 1.0 if shape is None else SCALE_RULES[group["scale"]](*shape, group["update_rms"])


def decoupled_update_(param: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float,
                      scale: float, mask: torch.Tensor | None = None) -> None:
    """``W ← W·(1 − lr·λ) − lr·s·Õ`` in place (``update`` has ``param``'s shape, any float dtype);
    with ``mask`` (cautious decay), ``W ← W − lr·λ·(mask ⊙ W) − lr·s·Õ``."""
    if weight_decay != 0.0:
        if mask is None:
            param.mul_(1.0 - lr * weight_decay)
        else:
            param.addcmul_(param, mask, value=-lr * weight_decay)
    param.add_(update, alpha=-lr * scale)


def cautious_update(param: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float,
                    scale: float) -> torch.Tensor:
    """Cautious weight decay and the update as one out-of-place element-wise expression (Chen et al.,
    arXiv 2510.12402, Algorithm 1), in the dtype ``param`` and ``update`` promote to::

        W − lr·(s·Õ + λ·𝟙(Õ ⊙ W ≥ 0) ⊙ W)  =  (W + (−lr·λ)·(mask ⊙ W)) + (−lr·s)·Õ

    the arithmetic of :func:`cautious_mask` then :func:`decoupled_update_` (a product ``Õ ⊙ W`` of 0,
    where ``Õ = 0`` or ``W = 0``, decays), up to their rounding of the last sum. The learning rate
    and coefficients multiply as tensors, never as ``alpha=``/``value=`` arguments, so that a
    compiler keeps them as inputs instead of constants (:mod:`muonlab.optim.fused`)."""
    wide = torch.promote_types(param.dtype, update.dtype)
    W, O = param.to(wide), update.to(wide)
    mask = (O * W).ge(0).to(wide)
    return W + W * mask * (-lr * weight_decay) + O * (-lr * scale)


def adamw_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
           exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], *, beta1: float, beta2: float,
           lr: float, weight_decay: float, eps: float, want_updates: bool = False, cautious: bool = False
           ) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
    """One AdamW step in place; returns ``(updates, masks)``: with ``want_updates`` the lr-free updates
    ``m̂ / (sqrt(v̂) + ε)``; with ``cautious`` the decay masks ``𝟙(u ⊙ W ≥ 0)`` (cautious weight decay,
    arXiv 2510.12402: ``W ← W − lr·(u + λ·mask ⊙ W)``)."""
    torch._foreach_add_(steps, 1.0)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    step_counts = [float(s) for s in steps]
    bias1 = [1.0 - beta1**t for t in step_counts]
    bias2_sqrt = [(1.0 - beta2**t) ** 0.5 for t in step_counts]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, eps)
    updates = masks = None
    if want_updates or cautious:
        updates = torch._foreach_div(exp_avgs, denom)
        torch._foreach_div_(updates, bias1)
    if weight_decay != 0.0 and cautious:
        masks = [cautious_mask(u, p) for u, p in zip(updates, params)]
        torch._foreach_addcmul_(params, params, masks, value=-lr * weight_decay)
    elif weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / b for b in bias1])
    return updates, masks


def exchange_dtypes(ns_dtype: torch.dtype, method: str, momentum_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """Dtypes of a Newton–Schulz input and output: ``ns_dtype`` both ways, except that the exact SVD
    reads the momentum at full precision and returns fp32 (fp64 when asked for)."""
    if method != "svd":
        return ns_dtype, ns_dtype
    return momentum_dtype, (torch.float64 if ns_dtype == torch.float64 else torch.float32)

