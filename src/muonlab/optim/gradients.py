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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["NONFINITE_POLICIES", "NonFiniteGradientError", "NonFinitePolicy", "check_and_clip_pieces",
           "check_and_clip_whole"]

NONFINITE_POLICIES = ("raise", "skip")


class NonFiniteGradientError(FloatingPointError):
    """A gradient contained NaN or inf; no parameter or optimizer state was changed."""


class NonFinitePolicy:
    """What a step does when a gradient holds NaN or inf: ``"raise"`` or ``"skip"`` (and count)."""

    def __init__(self, policy: str) -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"unknown nonfinite policy {policy!r}; valid: {list(NONFINITE_POLICIES)}")
        self.policy = policy
        self.skipped_steps = 0

    def found(self, description: str) -> None:
        """A gradient (of the parameter ``description`` names) is not finite: raise, or count a skip."""
        if self.policy == "skip":
            self.skipped_steps += 1
            return
        raise NonFiniteGradientError(
            f"gradient of parameter {description} contains NaN or inf; no parameter or optimizer state "
            "was changed (pass nonfinite='skip' to skip such steps instead)"
        )


def check_and_clip_whole(params: Sequence[torch.Tensor], describe: Callable[[int], str], policy: NonFinitePolicy,
                         max_norm: float) -> bool:
    """Finite check and clipping of the whole gradients of ``params`` (those with a ``.grad``).

    ``describe(i)`` names ``params[i]`` in an error (called only when there is one). Raises
    ``RuntimeError`` for a sparse or complex gradient. True if the step may proceed.
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
    # One sum per tensor and one sync; a sum is finite when every entry is (it can overflow for
    # huge finite entries, so a non-finite sum is re-checked entry by entry).
    sums = torch.stack([g.sum(dtype=torch.float64) if g.dtype == torch.float64 else g.float().sum() for g in grads])
    if not bool(torch.isfinite(sums).all()):
        finite = torch.stack([torch.isfinite(g).all() for g in grads])
        if not bool(finite.all()):
            policy.found(describe(int((~finite).nonzero()[0])))
            return False
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    return True


def check_and_clip_pieces(pieces: Sequence[tuple[int, torch.Tensor]], describe: Callable[[int], str],
                          policy: NonFinitePolicy, max_norm: float, device: torch.device, group,
                          counts: torch.Tensor | None = None, replicas: Sequence[torch.Tensor] = ()) -> bool:
    """Finite check and clipping when each rank holds pieces of the reduced gradient.

    ``pieces``: ``(parameter index, local gradient piece)``. If some entry is not finite, the
    smallest index over ranks with a non-finite piece is named by ``describe(index)`` in the error.
    ``counts`` (float64) are summed over ranks in the same all-reduce, in place. ``replicas``:
    gradient pieces that another rank also holds and passes in its ``pieces`` (tensor-parallel
    replicas); they are clipped with the rest but left out of the norm. True if the step may proceed.
    """
    import torch.distributed as dist

    grads = [g for _, g in pieces]
    norms = torch._foreach_norm(grads) if grads else []
    sumsq = torch.stack(norms).double().pow(2).sum() if norms else torch.zeros((), dtype=torch.float64, device=device)
    reduced = torch.cat([sumsq.reshape(1), counts if counts is not None else sumsq.new_empty(0)])
    dist.all_reduce(reduced, group=group)
    sumsq = reduced[0]
    if counts is not None:
        counts.copy_(reduced[1:])
    if not math.isfinite(float(sumsq)):
        bad = [k for k, g in pieces if not bool(torch.isfinite(g).all())]
        first = torch.tensor(min(bad) if bad else 2**62, device=device)
        dist.all_reduce(first, op=dist.ReduceOp.MIN, group=group)
        policy.found(describe(int(first)))
        return False
    if max_norm > 0:
        coef = max_norm / (math.sqrt(float(sumsq)) + 1e-6)
        if coef < 1.0:
            torch._foreach_mul_(grads + list(replicas), coef)
    return True
