"""Curve fits the studies report, as pure numpy functions (tested on synthetic data with known answers).

Scaling laws (Moonlight, arXiv 2502.16982 §3.2, Table 3)::

    L(C) = a · C^b                                   fit_power_law (least squares in log-log)
    C_Muon / C_AdamW at equal loss                   equal_loss_compute_ratio
    a bootstrap interval over seeds                  bootstrap_compute_ratio

Width scaling of the telescoping study (Essential AI, arXiv 2505.02222 §3.4)::

    L(d) = A / d^α + E                               fit_saturating_power

Batch size (Essential AI §2.4–2.5, App. D.1 and F)::

    T_L = tokens to first reach loss L               tokens_to_loss (on an EMA-smoothed curve)
    R_L(B) = T_L,AdamW(B) / T_L,Muon(B)              token ratio (Eq. 2)
    log S_L(B) = −log B + b1       for B ≤ B*        fit_critical_batch: steps to reach L, piecewise
    log S_L(B) =  m log B + b2     for B > B*        linear in log-log, continuous at B*, −1 ≤ m ≤ 0
    B_tok,L = max {B : T_L(B) ≤ (1 + δ) min T_L}     token_optimal_batch (Eq. 6, with a noise margin δ)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CriticalBatchFit",
    "PowerLaw",
    "SaturatingPowerLaw",
    "bootstrap_compute_ratio",
    "equal_loss_compute_ratio",
    "ema",
    "fit_critical_batch",
    "fit_power_law",
    "fit_saturating_power",
    "token_optimal_batch",
    "tokens_to_loss",
]


@dataclass(frozen=True)
class PowerLaw:
    """``L = a · C^b`` (b < 0 for a loss that falls with compute)."""

    a: float
    b: float

    def __call__(self, c):
        return self.a * np.power(c, self.b)

    def inverse(self, loss):
        """The compute at which the fit reaches ``loss``: ``C = (L / a)^(1/b)``."""
        return np.power(np.asarray(loss, dtype=float) / self.a, 1.0 / self.b)


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> PowerLaw:
    """Least-squares fit of ``log L = log a + b·log C``; needs ≥ 2 distinct positive compute values."""
    x, y = np.log(np.asarray(compute, dtype=float)), np.log(np.asarray(loss, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"a power-law fit needs at least two distinct compute values, got {list(compute)}")
    b, log_a = np.polyfit(x, y, 1)
    return PowerLaw(float(math.exp(log_a)), float(b))


def equal_loss_compute_ratio(muon: PowerLaw, adamw: PowerLaw, adamw_compute) -> np.ndarray:
    """``C_Muon / C_AdamW`` where both fits reach the loss AdamW's fit has at ``adamw_compute``.

    With ``L = a_A·C_A^b_A = a_M·C_M^b_M``: ``C_M = (a_A·C_A^b_A / a_M)^(1/b_M)``. Below 1 means Muon
    needs less compute for the same loss (Moonlight reports ≈ 0.52).
    """
    c = np.asarray(adamw_compute, dtype=float)
    return muon.inverse(adamw(c)) / c


def bootstrap_compute_ratio(compute: Sequence[float], muon_losses: Sequence[Sequence[float]],
                            adamw_losses: Sequence[Sequence[float]], at: Sequence[float], samples: int = 2000,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-loss compute ratio at compute values ``at``, with a 95 % bootstrap interval over seeds.

    ``muon_losses[i]`` (and ``adamw_losses[i]``) are the final losses of every seed at ``compute[i]``.
    Each bootstrap sample redraws, for every size and optimizer, as many seeds as there are (with
    replacement), fits both power laws to the seed means and evaluates the ratio. Returns
    ``(point estimate from all seeds, 2.5th percentile, 97.5th percentile)``, each shaped like ``at``.
    """
    rng = np.random.default_rng(seed)
    muon_losses = [np.asarray(v, dtype=float) for v in muon_losses]
    adamw_losses = [np.asarray(v, dtype=float) for v in adamw_losses]

    def ratio(m_means, a_means):
        return equal_loss_compute_ratio(fit_power_law(compute, m_means), fit_power_law(compute, a_means), at)

    point = ratio([v.mean() for v in muon_losses], [v.mean() for v in adamw_losses])
    draws = np.stack([
        ratio([rng.choice(v, len(v)).mean() for v in muon_losses], [rng.choice(v, len(v)).mean() for v in adamw_losses])
        for _ in range(samples)
    ])
    return point, np.percentile(draws, 2.5, axis=0), np.percentile(draws, 97.5, axis=0)


@dataclass(frozen=True)
class SaturatingPowerLaw:
    """``L = A / d^α + E``: a power law in width that saturates at the irreducible loss ``E``."""

    A: float
    alpha: float
    E: float
    r2: float

    def __call__(self, d):
        return self.A / np.power(d, self.alpha) + self.E


def fit_saturating_power(width: Sequence[float], loss: Sequence[float], grid: int = 400) -> SaturatingPowerLaw:
    """Least-squares fit of ``L = A/d^α + E`` (needs ≥ 3 widths).

    For a fixed ``E`` the model is linear in log-log (``log(L − E) = log A − α log d``), so ``E`` is
    searched on a grid over ``[0, min L)`` (refined twice around the best value) and ``(A, α)`` solved
    by least squares for each; the ``E`` with the smallest squared error in ``L`` wins.
    """
    d, y = np.asarray(width, dtype=float), np.asarray(loss, dtype=float)
    if len(np.unique(d)) < 3:
        raise ValueError(f"L(d) = A/d^α + E has three parameters; it needs at least three widths, got {list(width)}")

    def solve(e):
        slope, log_a = np.polyfit(np.log(d), np.log(y - e), 1)
        fit = SaturatingPowerLaw(float(math.exp(log_a)), float(-slope), float(e), 0.0)
        return float(np.sum((fit(d) - y) ** 2)), fit

    lo, hi = 0.0, float(y.min())
    best = None
    for _ in range(3):
        for e in np.linspace(lo, hi, grid, endpoint=False):
            err, fit = solve(e)
            if best is None or err < best[0]:
                best = (err, fit)
        step = (hi - lo) / grid
        lo, hi = max(0.0, best[1].E - step), min(float(y.min()) - 1e-12, best[1].E + step)
    err, fit = best
    total = float(np.sum((y - y.mean()) ** 2))
    return SaturatingPowerLaw(fit.A, fit.alpha, fit.E, 1.0 - err / total if total > 0 else 1.0)


def ema(values: Sequence[float], decay: float) -> np.ndarray:
    """Bias-corrected exponential moving average (as Adam corrects its moments): the smoothed
    training-loss curve from which tokens-to-loss are read."""
    out, avg = [], 0.0
    for t, v in enumerate(values, start=1):
        avg = decay * avg + (1.0 - decay) * v
        out.append(avg / (1.0 - decay**t))
    return np.asarray(out)


def tokens_to_loss(tokens: Sequence[float], loss: Sequence[float], target: float) -> float:
    """The first token count at which ``loss`` (already smoothed) is at or below ``target``; ``inf`` if never.

    Linear interpolation between the two logged points around the crossing, so the answer does not
    jump by a whole logging interval.
    """
    t, y = np.asarray(tokens, dtype=float), np.asarray(loss, dtype=float)
    below = np.nonzero(y <= target)[0]
    if len(below) == 0:
        return math.inf
    i = int(below[0])
    if i == 0:
        return float(t[0])
    frac = (y[i - 1] - target) / (y[i - 1] - y[i])
    return float(t[i - 1] + frac * (t[i] - t[i - 1]))


def token_optimal_batch(batch: Sequence[float], tokens: Sequence[float], margin: float = 0.03) -> float:
    """``B_tok = max {B : T(B) ≤ (1 + margin)·min T}`` (Essential AI Eq. 6, with a noise margin)."""
    b, t = np.asarray(batch, dtype=float), np.asarray(tokens, dtype=float)
    return float(b[t <= (1.0 + margin) * t.min()].max())


@dataclass(frozen=True)
class CriticalBatchFit:
    """Steps to a loss against batch size, piecewise linear in log-log (Essential AI App. F).

    ``log S = −log B + b1`` up to ``B*`` (perfect scaling: constant tokens), then ``m log B + b2``
    with ``b2 = b1 − (1 + m)·log B*`` (continuous at ``B*``). ``m = −1`` would be perfect scaling
    past ``B*`` too; ``m = 0``, no gain at all from a larger batch.
    """

    critical_batch: float
    b1: float
    m: float
    rmse: float

    @property
    def b2(self) -> float:
        return self.b1 - (1.0 + self.m) * math.log(self.critical_batch)

    def steps(self, batch):
        log_b = np.log(np.asarray(batch, dtype=float))
        below = -log_b + self.b1
        above = self.m * log_b + self.b2
        return np.exp(np.where(log_b <= math.log(self.critical_batch), below, above))


def fit_critical_batch(batch: Sequence[float], steps: Sequence[float], grid: int = 200) -> CriticalBatchFit:
    """Least-squares fit of :class:`CriticalBatchFit` to (batch size, steps to reach a loss) points.

    ``B*`` is searched on a fine log grid from the smallest to the largest batch; for each, ``b1``
    and ``m`` solve a linear least-squares problem in log space (``m`` clipped to ``[−1, 0]``, as
    more data never helps less than not at all, and never more than perfectly). ``B*`` at the
    largest batch means no point showed diminishing returns.
    """
    x, y = np.log(np.asarray(batch, dtype=float)), np.log(np.asarray(steps, dtype=float))
    if len(np.unique(x)) < 3:
        raise ValueError(f"a critical-batch fit needs at least three batch sizes, got {list(batch)}")
    best = None
    for log_star in np.linspace(x.min(), x.max(), grid):
        above = np.maximum(x - log_star, 0.0)
        # log S = b1 − x + (1 + m)·max(x − log B*, 0): linear in (b1, 1 + m)
        design = np.stack([np.ones_like(x), above], axis=1)
        (b1, slope_gain), *_ = np.linalg.lstsq(design, y + x, rcond=None)
        m = float(np.clip(slope_gain - 1.0, -1.0, 0.0))
        b1 = float(np.mean(y + x - (1.0 + m) * above))
        err = float(np.sqrt(np.mean((b1 - x + (1.0 + m) * above - y) ** 2)))
        if best is None or err < best.rmse - 1e-12:
            best = CriticalBatchFit(float(math.exp(log_star)), b1, m, err)
    return best
