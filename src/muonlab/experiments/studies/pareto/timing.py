"""The compute–time plane (Essential AI, arXiv 2505.02222 §2.3, Figures 1–2): devices against time to a target loss.

A batch of ``B`` sequences is split over ``n = B / b`` devices of ``b`` sequences each (``devices_for``;
one device when ``B ≤ b``). Data parallelism with the optimizer step *replicated*: every device
computes the forward/backward of its ``b`` sequences, the gradients are summed with a ring
all-reduce, and every device then runs the whole optimizer step — Newton–Schulz on every matrix
included, as plain DDP does and as Moonlight's Distributed Muon does (each rank orthogonalizes every
full matrix). Essential AI's all-to-all layer sharding would split the Newton–Schulz work ``n``
ways instead; the replicated model is Muon's worst case. Per step::

    t_step(B) = t_fwd_bwd(b) + t_optimizer + t_allreduce(n)
    t_allreduce(n) = 2 (n − 1)/n · bytes / bandwidth          (ring all-reduce, no overlap with backward)

and the time to a target loss is ``S_L(B) · t_step(B)`` with ``S_L(B)`` the steps the run needed.
``t_fwd_bwd`` and ``t_optimizer`` are measured (``measured_step_times``: from a timing run's
per-step rows, the step time minus the optimizer step's time).

Muon's extra cost per model FLOP (Essential AI's infra blog, PAPERS.md §2.10): five Newton–Schulz
iterations on an ``m × n`` matrix (``m ≤ n``) cost ``5 (4 m²n + 2 m³)`` FLOPs, against ``6 m n B``
for its forward/backward over ``B`` tokens; for the MLP's ``d × 4d`` that is ``≈ 5 d / B``
(``ns_overhead_rule``). ``ns_overhead_flops`` is the same ratio for a whole model: every matrix Muon
orthogonalizes, against the model's training FLOPs (attention and head included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ....analysis.runs import Run

__all__ = ["NS_STEPS", "StepTimes", "devices_for", "frontier", "measured_step_times", "ns_flops_per_step",
           "ns_overhead_rule", "overhead_exponents", "ring_allreduce_s", "step_time_s"]

NS_STEPS = 5
SKIPPED_STEPS = 3
"""Timing runs' first steps (allocator and cache warm-up) left out of the median."""


@dataclass(frozen=True)
class StepTimes:
    """Seconds of one training step's forward/backward and of its optimizer step."""

    fwd_bwd_s: float
    optimizer_s: float


def measured_step_times(run: Run) -> StepTimes:
    """Medians over a timing run's steps (after the first ``SKIPPED_STEPS``) of the forward/backward time
    (step time ``tokens_per_step / tokens_per_s`` minus the optimizer step) and of the optimizer step
    (``optim_step_ms``). The run must log every step (``log_every = 1``)."""
    rows = sorted((r for r in run.rows if "tokens_per_s" in r and "optim_step_ms" in r), key=lambda r: r["step"])
    rows = rows[SKIPPED_STEPS:]
    if not rows:
        raise ValueError(f"timing run {run.name} has no timed steps after its first {SKIPPED_STEPS}; it needs "
                         "log_every=1 and more steps")
    per_step = float(run.config["tokens_per_step"])
    step = np.array([per_step / r["tokens_per_s"] for r in rows])
    optimizer = np.array([r["optim_step_ms"] / 1e3 for r in rows])
    return StepTimes(float(np.median(step - optimizer)), float(np.median(optimizer)))


def devices_for(batch: int, device_batch: int) -> int:
    """``B / b`` devices for a batch of ``B`` sequences at ``b`` a device (one when ``B ≤ b``)."""
    if batch <= device_batch:
        return 1
    if batch % device_batch:
        raise ValueError(f"batch {batch} is not a whole number of per-device batches of {device_batch} sequences")
    return batch // device_batch


def ring_allreduce_s(devices: int, nbytes: float, bandwidth: float) -> float:
    """Seconds of a ring all-reduce of ``nbytes`` over ``devices`` at ``bandwidth`` bytes/s per link:
    ``2 (n − 1)/n · bytes / bandwidth`` (0 on one device)."""
    return 2.0 * (devices - 1) / devices * nbytes / bandwidth


def step_time_s(times: StepTimes, devices: int, grad_bytes: float, bandwidth: float) -> float:
    """``t_fwd_bwd + t_optimizer + t_allreduce(n)``: one data-parallel step with the optimizer replicated."""
    return times.fwd_bwd_s + times.optimizer_s + ring_allreduce_s(devices, grad_bytes, bandwidth)


def frontier(points: Sequence[tuple[int, float]]) -> dict[int, float]:
    """For each device count among ``points`` (``(devices, time)``), the least time reachable with at most
    that many devices: the iso-loss Pareto frontier, as a step function of the devices."""
    counts = sorted({n for n, _ in points})
    return {n: min(t for m, t in points if m <= n) for n in counts}


def ns_overhead_rule(width: int, batch_tokens: int) -> float:
    """Essential AI's rule of thumb: Muon costs ``5 d / B`` extra FLOPs per model FLOP."""
    return 5.0 * width / batch_tokens


def ns_flops_per_step(model_config) -> int:
    """Newton–Schulz FLOPs of one Muon step on ``model_config``'s model: ``NS_STEPS · (4 m²n + 2 m³)`` per
    matrix Muon orthogonalizes (``muonlab.optim.ns_flops``, standard form), summed."""
    import torch

    from ....models import Transformer
    from ....optim import ns_flops, param_groups

    with torch.device("meta"):
        model = Transformer(model_config)
    shapes = [tuple(p.shape) for g in param_groups(model) if g["algorithm"] == "muon" for p in g["params"]]
    return sum(ns_flops(min(s), max(s), NS_STEPS, "standard") for s in shapes)


def overhead_exponents(widths: Sequence[float], batches: Sequence[float], ratios: Sequence[float]
                       ) -> tuple[float, float]:
    """``(α, β)`` of the least-squares fit ``log ρ = c + α log d + β log B`` (the rule has α = 1, β = −1);
    needs two distinct widths and two distinct batch sizes, and positive ratios."""
    d, b, r = (np.asarray(x, dtype=float) for x in (widths, batches, ratios))
    if len(np.unique(d)) < 2 or len(np.unique(b)) < 2 or (r <= 0).any():
        raise ValueError("the overhead fit needs two widths, two batch sizes and positive ratios, got "
                         f"widths {sorted(set(d.tolist()))}, batches {sorted(set(b.tolist()))}, ratios {r.tolist()}")
    design = np.stack([np.ones_like(d), np.log(d), np.log(b)], axis=1)
    (_, alpha, beta), *_ = np.linalg.lstsq(design, np.log(r), rcond=None)
    return float(alpha), float(beta)

