"""Tokens to a target loss across batch sizes (Essential AI, arXiv 2505.02222 §2.4–2.5, App. D.1 and F), from runs.

Every run trains a fixed token budget at one batch size ``B`` (tokens per step) and logs the mean
training loss of every step's batch (``log_every = 1``). Within one epoch each batch is fresh, so
this loss is the paper's proxy for held-out loss (§2.2, footnote 3). A row's loss was measured
*before* its step's update, on weights trained on ``tokens − B`` tokens; that is the token count
it is read at (``smoothed_curve``).

Smoothing: ``fits.ema`` with decay ``1 − B/W`` per step (``W`` = ``ema_tokens``; no smoothing when
``B ≥ W``). Its time constant is ``W`` tokens at every batch size, so the smoothed loss averages
about ``W`` tokens of fresh data (the same noise at every ``B``) and lags the true curve by about
``W`` tokens at every ``B``, for both optimizers alike.

From the smoothed curves::

    T_L(B)         = tokens a run first reaches loss L, inf if it never does (fits.tokens_to_loss)
    R_L(B)         = T_L,AdamW(B) / T_L,Muon(B), per seed pair             (Eq. 2)
    extra_L(B)     = T_L,AdamW(B) − T_L,Muon(B), per seed pair
    S_L(B)         = T_L(B) / B  (steps), fitted piecewise in log-log        (fits.fit_critical_batch, App. F)
    B_tok,L        = max {B : T_L(B) ≤ (1 + δ) min T_L}                     (fits.token_optimal_batch, Eq. 6)

Targets are chosen so that every run up to the middle batch size reaches every one; a larger batch's
run may miss the lowest within its budget (``T = inf``: "not reached"). Ratios need both optimizers'
every seed to reach the target; fits and token-optimal batches use the batch sizes where the
optimizer's every seed did.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .fits import CriticalBatchFit, ema, fit_critical_batch, token_optimal_batch, tokens_to_loss
from .runs import Run

__all__ = ["ArmFits", "CorpusTokens", "choose_targets", "corpus_tokens", "critical_fits", "smoothed_curve",
           "step_tokens"]

OPTIMIZERS = ("adamw", "muon")
EARLY_FRACTION = 0.1
"""The highest target loss is the median run's smoothed loss after this fraction of its tokens."""


def step_tokens(run: Run) -> int:
    """Tokens of one metrics row of ``run``: its tokens per step times ``log_every``."""
    return int(run.config["tokens_per_step"]) * int(run.config.get("log_every", 1))


def smoothed_curve(run: Run, ema_tokens: float) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens trained before each row's batch, EMA-smoothed training loss)`` of ``run`` (module docstring)."""
    _, tokens, loss = run.series("loss")
    if not len(loss):
        raise ValueError(f"run {run.name} logged no training loss; its metrics.jsonl has no 'loss' rows")
    per_row = step_tokens(run)
    return tokens - per_row, ema(loss, max(0.0, 1.0 - per_row / ema_tokens))


def choose_targets(curves: Sequence[tuple[np.ndarray, np.ndarray]], reaching: Sequence[tuple[np.ndarray, np.ndarray]],
                   count: int) -> list[float]:
    """``count`` target losses, evenly spaced from high to low.

    The highest is the median of ``curves`` after ``EARLY_FRACTION`` of its tokens (early in training, where
    the paper finds the largest ratios); the lowest is the highest of the ``reaching`` curves' lowest
    smoothed losses, so each of those (the runs at the smaller batch sizes) reaches every target, while
    other runs may miss the lowest ones within their budget.
    """
    if count < 1 or not curves or not reaching:
        raise ValueError(f"choose_targets needs curves and count ≥ 1, got {len(curves)} curves, {len(reaching)} "
                         f"that must reach every target, and count={count}")
    low = max(float(loss.min()) for _, loss in reaching)
    high = statistics.median(float(np.interp(EARLY_FRACTION * tokens[-1], tokens, loss)) for tokens, loss in curves)
    if high <= low:
        raise ValueError(f"the runs' early loss (median {high:.4f}) is not above the lowest loss every run at the "
                         f"smaller batch sizes reaches ({low:.4f}): no target loss lies between them")
    return [float(x) for x in np.linspace(high, low, count)] if count > 1 else [low]


@dataclass(frozen=True)
class CorpusTokens:
    """One corpus's tokens to each target: ``tokens[optimizer][i]`` is an array ``seeds × targets`` at
    ``batches[i]`` (tokens per step, ascending); seeds are paired across optimizers by position."""

    corpus: str
    batches: list[int]
    targets: list[float]
    tokens: Mapping[str, list[np.ndarray]]

    def mean_tokens(self, optimizer: str) -> np.ndarray:
        """``batches × targets``: the mean over seeds of ``T_L(B)``."""
        return np.array([t.mean(axis=0) for t in self.tokens[optimizer]])

    def mean_steps(self, optimizer: str) -> np.ndarray:
        """``batches × targets``: the mean over seeds of ``S_L(B) = T_L(B) / B``."""
        return self.mean_tokens(optimizer) / np.asarray(self.batches, dtype=float)[:, None]

    def paired(self, batch: int, target: int) -> tuple[np.ndarray, np.ndarray]:
        """``(T_AdamW, T_Muon)`` per seed at ``batches[batch]`` and ``targets[target]`` (seeds paired by position)."""
        return self.tokens["adamw"][batch][:, target], self.tokens["muon"][batch][:, target]


def corpus_tokens(corpus: str, batches: Sequence[int], arms: Mapping[str, Sequence[Sequence[Run]]], count: int,
                  ema_tokens: float) -> CorpusTokens:
    """Targets chosen from every run of ``arms`` (``arms[optimizer][i]``: the runs at ``batches[i]``, one
    per seed in the same seed order for both optimizers), reached by every run up to the middle batch
    (``batches[len(batches) // 2]``); then each run's ``T_L`` (``inf`` where it misses a target)."""
    middle = len(batches) // 2
    curves = {o: [[smoothed_curve(run, ema_tokens) for run in runs] for runs in arms[o]] for o in OPTIMIZERS}
    every = [c for o in OPTIMIZERS for per_batch in curves[o] for c in per_batch]
    reaching = [c for o in OPTIMIZERS for per_batch in curves[o][:middle + 1] for c in per_batch]
    targets = choose_targets(every, reaching, count)
    tokens = {o: [np.array([[tokens_to_loss(t, y, target) for target in targets] for t, y in per_batch])
                  for per_batch in curves[o]] for o in OPTIMIZERS}
    for i, batch in enumerate(batches):
        if len(tokens["adamw"][i]) != len(tokens["muon"][i]):
            raise ValueError(f"{corpus}, batch {batch}: {len(tokens['adamw'][i])} AdamW runs but "
                             f"{len(tokens['muon'][i])} Muon runs; the seeds must pair up")
    return CorpusTokens(corpus, list(batches), targets, tokens)


@dataclass(frozen=True)
class ArmFits:
    """Per target, one optimizer's App. F fit of steps against batch (None where fewer than three batch sizes
    reached the target in every seed) and its token-optimal batch (tokens; None where none reached it)."""

    fits: list[CriticalBatchFit | None]
    token_optimal: list[float | None]


def critical_fits(table: CorpusTokens, margin: float) -> dict[str, ArmFits]:
    """Per optimizer and target: ``fit_critical_batch`` on the seed-mean steps, ``token_optimal_batch`` on the
    seed-mean tokens (with the noise margin ``margin``), over the batch sizes at which every seed reached it."""
    out = {}
    batches = np.asarray(table.batches, dtype=float)
    for optimizer in OPTIMIZERS:
        steps, tokens = table.mean_steps(optimizer), table.mean_tokens(optimizer)
        fits, optimal = [], []
        for j in range(len(table.targets)):
            reached = np.isfinite(tokens[:, j])
            fits.append(fit_critical_batch(batches[reached], steps[reached, j])
                        if len(np.unique(batches[reached])) >= 3 else None)
            optimal.append(token_optimal_batch(batches[reached], tokens[reached, j], margin) if reached.any() else None)
        out[optimizer] = ArmFits(fits, optimal)
    return out
