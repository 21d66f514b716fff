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

AdamW (Loshchilov & Hutter, in ``torch.optim.AdamW``'s foreach arithmetic order)::

    m ← β₁ m + (1 − β₁) g,  v ← β₂ v + (1 − β₂) g²,  W ← W (1 − lr λ) − lr · m̂ / (sqrt(v̂) + ε)
"""

from __future__ import annotations

import torch

__all__ = ["adamw_", "decoupled_update_", "exchange_dtypes", "momentum_", "newton_schulz_input_", "unit_rms_"]


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


def decoupled_update_(param: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float,
                      scale: float) -> None:
    """``W ← W·(1 − lr·λ) − lr·s·Õ`` in place (``update`` has ``param``'s shape, any float dtype)."""
    if weight_decay != 0.0:
        param.mul_(1.0 - lr * weight_decay)
    param.add_(update, alpha=-lr * scale)


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


def exchange_dtypes(ns_dtype: torch.dtype, method: str, momentum_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """Dtypes of a Newton–Schulz input and output: ``ns_dtype`` both ways, except that the exact SVD
    reads the momentum at full precision and returns fp32 (fp64 when asked for)."""
    if method != "svd":
        return ns_dtype, ns_dtype
    return momentum_dtype, (torch.float64 if ns_dtype == torch.float64 else torch.float32)

