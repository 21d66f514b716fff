"""Gradient checks before a step: the non-finite policy and global-norm clipping.

A step validates every gradient *before* it changes anything, so a refused or skipped step leaves
weights and optimizer state exactly as they were. :class:`NonFinitePolicy` owns the decision
(raise :class:`NonFiniteGradientError`, or skip and count) and the ``skipped_steps`` counter; the
engines only find the first parameter whose gradient is not finite.

Two ways to look at the gradient, one per layout:

- :func:`check_and_clip_whole` — every rank holds the whole (already reduced) gradient: one
  process or DDP.
- :func:`check_and_clip_pieces` — each rank holds part of the reduced gradient (ZeRO-1, FSDP2):
  one all-reduce of ``Σ g²`` gives the global norm and the finite check, and every rank takes the
  same decision.

Clipping scales the gradient by ``max_norm / (‖g‖₂ + 1e-6)`` when that is below 1, as
``torch.nn.utils.clip_grad_norm_`` does.

The policy covers the update too. A finite gradient can still give a NaN or inf update where a
sum of squares overflows: AdamW's ``g²``, and the Newton–Schulz normalisation ``X / ‖X‖_F`` of
Muon's input ``X = G + μM`` (or ``M``), which has held every past gradient since
``M = Σ_k μ^k G_{t−k}``. With ``S = sqrt(largest bf16) ≈ 1.84e19`` (bf16's, a little below fp32's:
Newton–Schulz may run in either), a parameter's gradient (after clipping) must have

    ‖G‖₂ < S            (AdamW: every g² is finite)
    ‖G‖₂ < S · (1 − μ)  (Muon: then ‖M‖, ‖X‖ ≤ max_t ‖G_t‖ / (1 − μ) < S, so ‖X‖²_F is finite)

(:func:`update_limit`); a gradient past its limit is treated as a non-finite one — raised as
:class:`NonFiniteGradientError`, naming it, or skipped — before anything changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["NONFINITE_POLICIES", "SQUARE_LIMIT", "NonFiniteGradientError", "NonFinitePolicy", "check_and_clip_pieces",
           "check_and_clip_whole", "update_limit"]

NONFINITE_POLICIES = ("raise", "skip")
SQUARE_LIMIT = math.sqrt(torch.finfo(torch.bfloat16).max)
"""``S``: the largest norm whose square bf16 (and fp32) can hold, ≈ 1.84e19."""


def update_limit(algorithm: str, momentum: float) -> float:
    """The gradient norm at and past which a parameter's update may not be finite (module docstring):
    ``S·(1 − μ)`` for ``"muon"``, ``S`` for ``"adamw"``."""
    return SQUARE_LIMIT * (1.0 - momentum) if algorithm == "muon" else SQUARE_LIMIT


class NonFiniteGradientError(FloatingPointError):
    """A gradient contained NaN or inf; no parameter or optimizer state was changed."""


class NonFinitePolicy:
    """What a step does when a gradient holds NaN or inf: ``"raise"`` or ``"skip"`` (and count)."""

    def __init__(self, policy: str) -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"unknown nonfinite policy {policy!r}; valid: {list(NONFINITE_POLICIES)}")
        self.policy = policy
        self.skipped_steps = 0

    def found(self, description: str, norm: float | None = None, limit: float | None = None) -> None:
        """A gradient (of the parameter ``description`` names) is not finite, or (``norm`` given) finite but
        at or past ``limit``, where its update would not be: raise, or count a skip."""
        if self.policy == "skip":
            self.skipped_steps += 1
            return
        size = f"{norm:.3g}" if norm is not None and math.isfinite(norm) else "past float32's range"
        what = "contains NaN or inf" if norm is None else (
            f"is finite but too large to update with: its norm ({size}) is at or past {limit:.3g}, where the "
            "update's sums of squares overflow and would turn the weights to NaN/inf")
        raise NonFiniteGradientError(f"gradient of parameter {description} {what}; no parameter or optimizer state "
                                     "was changed (pass nonfinite='skip' to skip such steps instead)")


def _first_past_limit(norms: torch.Tensor, limits: torch.Tensor, scale: torch.Tensor) -> int | None:
    """The first index whose norm (float64; non-finite where a float32 norm overflowed) is not finite or,
    scaled by the clip factor ``scale``, at or past its limit; None if there is none (one sync)."""
    bad = ~torch.isfinite(norms) | (norms * scale >= limits)
    return int(bad.nonzero()[0]) if bool(bad.any()) else None


def _clip_scale(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The factor clipping to ``max_norm`` multiplies the gradient by (1 without clipping)."""
    if max_norm <= 0:
        return torch.ones((), dtype=torch.float64, device=norms.device)
    return (max_norm / (norms.square().sum().sqrt() + 1e-6)).clamp(max=1.0)


def check_and_clip_whole(params: Sequence[torch.Tensor], describe: Callable[[int], str], policy: NonFinitePolicy,
                         max_norm: float, limits: Sequence[float]) -> bool:
    """Finite check and clipping of the whole gradients of ``params`` (those with a ``.grad``).

    ``describe(i)`` names ``params[i]`` in an error (called only when there is one); ``limits[i]`` is
    its :func:`update_limit`. Raises ``RuntimeError`` for a sparse or complex gradient. True if the
    step may proceed.
    """
    for i, p in enumerate(params):
        if p.grad.is_sparse:
            raise RuntimeError(
                f"parameter {describe(i)} has a sparse gradient; Muon and AdamW here need dense gradients"
            )
        if p.grad.is_complex():
            raise RuntimeError(f"parameter {describe(i)} has a complex gradient; only real gradients are supported")
    if not params:
        return False
    grads = [p.grad for p in params]
    # One fused norm per tensor and one sync: a norm is not finite when an entry is not (or when the
    # squares of huge finite entries overflow: then that gradient is past its limit anyway).
    tensor_norms = torch._foreach_norm(grads)
    norms = torch.stack([n.double() for n in tensor_norms])
    first = _first_past_limit(norms, norms.new_tensor(list(limits)), _clip_scale(norms, max_norm))
    if first is not None:
        finite = bool(torch.isfinite(grads[first]).all())
        policy.found(describe(first), *((float(norms[first]), limits[first]) if finite else ()))
        return False
    if max_norm > 0:  # clip_grad_norm_'s total norm, from the per-tensor norms already taken (no second pass)
        total = torch.linalg.vector_norm(torch.stack([n.to(norms.device) for n in tensor_norms]))
        torch.nn.utils.clip_grads_with_norm_(list(params), max_norm, total)
    return True


def check_and_clip_pieces(pieces: Sequence[tuple[int, torch.Tensor]], describe: Callable[[int], str],
                          policy: NonFinitePolicy, max_norm: float, device: torch.device, group,
                          limits: Sequence[float], counts: torch.Tensor | None = None,
                          replicas: Sequence[torch.Tensor] = ()) -> bool:
    """Finite check and clipping when each rank holds pieces of the reduced gradient.

    ``pieces``: ``(parameter index, local gradient piece)``; ``limits[index]`` is that parameter's
    :func:`update_limit`. Each parameter's squared norm is summed over its pieces and over ranks in
    one all-reduce, with ``counts`` (float64, summed in place). If some entry is not finite, the
    smallest index over ranks with a non-finite piece is named by ``describe(index)`` in the error;
    else the first parameter past its limit is. ``replicas``: gradient pieces that another rank also
    holds and passes in its ``pieces`` (tensor-parallel replicas); they are clipped with the rest but
    left out of the norm. True if the step may proceed.
    """
    import torch.distributed as dist

    grads = [g for _, g in pieces]
    sumsq = torch.zeros(len(limits), dtype=torch.float64, device=device)
    if grads:
        index = torch.tensor([k for k, _ in pieces], device=device)
        sumsq.index_add_(0, index, torch.stack([n.double() for n in torch._foreach_norm(grads)]).square())
    reduced = torch.cat([sumsq, counts if counts is not None else sumsq.new_empty(0)])
    dist.all_reduce(reduced, group=group)
    norms = reduced[: len(limits)].sqrt()
    if counts is not None:
        counts.copy_(reduced[len(limits):])
    scale = _clip_scale(norms, max_norm)
    past = _first_past_limit(norms, norms.new_tensor(list(limits)), scale)
    if past is not None:
        bad = [k for k, g in pieces if not bool(torch.isfinite(g).all())]
        first = torch.tensor(min(bad) if bad else 2**62, device=device)
        dist.all_reduce(first, op=dist.ReduceOp.MIN, group=group)
        if int(first) < 2**62:
            policy.found(describe(int(first)))
        else:
            policy.found(describe(past), float(norms[past]), limits[past])
        return False
    if max_norm > 0 and float(scale) < 1.0:
        torch._foreach_mul_(grads + list(replicas), float(scale))
    return True
