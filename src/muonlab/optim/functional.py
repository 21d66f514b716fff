"""The element-wise and batched pieces of a Muon/AdamW step, as pure functions on tensor lists.

Every data-parallel layout (one process, DDP, ZeRO-1, FSDP2) runs exactly these functions; they
differ only in which tensors they pass: whole parameters, local row shards, or flat ranges of a
partition. Element-wise math gives the same bits on a piece as on the whole tensor, so the
layouts agree up to the order in which gradients were summed across ranks.

Muon (Moonlight, arXiv 2502.16982, Eq. 1, footnote 1 and Eq. 4)::

    M ← μ M + G                           muon_momentum_
    Õ = NS(G + μ M)  (Nesterov) or NS(M)  orthogonalize_stack
    W ← W − lr · (s · Õ + λ · W)          decoupled_update_

AdamW (Loshchilov & Hutter, in ``torch.optim.AdamW``'s foreach arithmetic order)::

    m ← β₁ m + (1 − β₁) g,  v ← β₂ v + (1 − β₂) g²,  W ← W (1 − lr λ) − lr · m̂ / (sqrt(v̂) + ε)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .newton_schulz import orthogonalize

__all__ = ["adamw_", "decoupled_update_", "exchange_dtypes", "muon_momentum_", "orthogonalize_stack"]


def muon_momentum_(bufs: list[torch.Tensor], grads: list[torch.Tensor], momentum: float,
                   nesterov: bool) -> list[torch.Tensor]:
    """``M ← μM + G`` in place on ``bufs``; returns the Newton–Schulz input (``G + μM`` or ``M``)."""
    grads = [g if g.dtype == b.dtype else g.to(b.dtype) for g, b in zip(grads, bufs)]
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    return torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs


def decoupled_update_(params: Sequence[torch.Tensor], updates: Sequence[torch.Tensor], lr: float,
                      weight_decay: float, scales: Sequence[float]) -> None:
    """``W ← W·(1 − lr·λ) − lr·s·Õ`` for each parameter (or piece), ``Õ`` cast to its dtype."""
    for p, O, s in zip(params, updates, scales):
        if weight_decay != 0.0:
            p.mul_(1.0 - lr * weight_decay)
        p.add_(O.to(p.dtype), alpha=-lr * s)


def adamw_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
           exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], *, beta1: float, beta2: float,
           lr: float, weight_decay: float, eps: float, want_updates: bool = False) -> list[torch.Tensor] | None:
    """One AdamW step in place; with ``want_updates``, also the lr-free updates ``m̂ / (sqrt(v̂) + ε)``."""
    torch._foreach_add_(steps, 1.0)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    step_counts = [float(s) for s in steps]
    bias1 = [1.0 - beta1**t for t in step_counts]
    bias2_sqrt = [(1.0 - beta2**t) ** 0.5 for t in step_counts]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, eps)
    updates = None
    if want_updates:
        updates = torch._foreach_div(exp_avgs, denom)
        torch._foreach_div_(updates, bias1)
    torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / b for b in bias1])
    return updates


def orthogonalize_stack(mats: list[torch.Tensor], coefficients, steps: int, dtype: torch.dtype, eps: float,
                        method: str) -> list[torch.Tensor]:
    """Newton–Schulz on same-shape ``[batch, rows, cols]`` tensors in one batched call; same shapes out."""
    stacked = torch.cat(mats) if len(mats) > 1 else mats[0]
    ortho = orthogonalize(stacked, coefficients, steps, dtype, eps, method)
    return list(ortho.split([m.shape[0] for m in mats]))


def exchange_dtypes(ns_dtype: torch.dtype, method: str, momentum_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """Dtypes of a Newton–Schulz input and output: ``ns_dtype`` both ways, except that the exact SVD
    reads the momentum at full precision and returns fp32 (fp64 when asked for)."""
    if method != "svd":
        return ns_dtype, ns_dtype
    return momentum_dtype, (torch.float64 if ns_dtype == torch.float64 else torch.float32)
