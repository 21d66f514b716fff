"""Learning-rate schedules as pure functions of the step.

Each schedule returns a *multiplier* of the peak learning rate at optimizer step ``step``
(0-based), so it plugs straight into ``torch.optim.lr_scheduler.LambdaLR``, which multiplies every
param group's own lr by it (Muon and AdamW groups alike):

    lr_lambda = make_lr_lambda("warmup_cosine", warmup_steps=100, total_steps=2000, final_ratio=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

Warmup is linear and never starts at exactly 0 (step 0 already takes a small step):
``m(step) = (step + 1) / warmup_steps`` for ``step < warmup_steps``. After ``total_steps`` every
schedule holds its final value.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable


def shortened_warmup(warmup_steps: int, schedule_steps: int) -> int:
    """The warmup a ``schedule_steps``-step run uses: ``warmup_steps``, or ``schedule_steps - 1`` when that is
    shorter (a warmup may not outlast the schedule; :func:`warmup_notice` says so)."""
    return min(warmup_steps, max(0, schedule_steps - 1))


def warmup_notice(warmup_steps: int, schedule_steps: int) -> str:
    """The one-sentence notice of a shortened warmup (see :func:`shortened_warmup`)."""
    warmup = shortened_warmup(warmup_steps, schedule_steps)
    return (f"warmup_steps={warmup_steps} is not shorter than the run's {schedule_steps}-step schedule, so warmup "
            f"takes {warmup} steps and the run ends at its peak lr without decay; set warmup_steps well below "
            f"{schedule_steps} (e.g. {max(1, schedule_steps // 10)}) for a warmup and a decay")


def _check(warmup_steps: int, total_steps: int | None = None, final_ratio: float | None = None) -> None:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and not 0 < total_steps:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if total_steps is not None and warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
    if final_ratio is not None and not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio}")


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps


def constant(step: int, warmup_steps: int = 0) -> float:
    """Linear warmup, then a constant multiplier of 1.

    ``m(t) = (t + 1) / W`` for ``t < W``, else ``1``.
    """
    _check(warmup_steps)
    return _warmup(step, warmup_steps) if step < warmup_steps else 1.0


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, final_ratio: float = 0.1) -> float:
    """Linear warmup to 1, then cosine decay to ``final_ratio`` at ``total_steps``.

    With ``W = warmup_steps``, ``T = total_steps``, ``r = final_ratio``:

        m(t) = (t + 1) / W                                   for t < W
        m(t) = r + (1 - r) * (1 + cos(pi * p)) / 2,  p = min(1, (t - W) / (T - W))   otherwise

    Essential AI ("Practical Efficiency of Muon for Pretraining") decays to ``r = 0.1``.
    """
    _check(warmup_steps, total_steps, final_ratio)
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_stable_decay(
    step: int, warmup_steps: int, total_steps: int, decay_fraction: float = 0.2, final_ratio: float = 0.0
) -> float:
    """WSD: linear warmup, a constant plateau, then linear decay over the last part of training.

    With ``W = warmup_steps``, ``T = total_steps``, ``D = round(decay_fraction * T)`` decay steps
    starting at ``S = T - D``, and ``r = final_ratio``:

        m(t) = (t + 1) / W                          for t < W
        m(t) = 1                                    for W <= t < S
        m(t) = 1 - (1 - r) * min(1, (t - S) / D)    for t >= S

    The decay never eats into warmup: ``S`` is at least ``W``; with ``D = 0`` the plateau lasts forever.
    """
    _check(warmup_steps, total_steps, final_ratio)
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction}")
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    decay_start = max(warmup_steps, total_steps - round(decay_fraction * total_steps))
    if step < decay_start or decay_start >= total_steps:  # the second case: no decay phase at all
        return 1.0
    progress = min(1.0, (step - decay_start) / (total_steps - decay_start))
    return 1.0 - (1.0 - final_ratio) * progress


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant,
    "warmup_cosine": warmup_cosine,
    "warmup_stable_decay": warmup_stable_decay,
}


def make_lr_lambda(name: str, **kwargs: float) -> Callable[[int], float]:
    """Return ``step -> multiplier`` for the schedule ``name`` with its keyword arguments bound.

    The arguments are checked here, once, so a typo or a bad value fails before training starts.
    Valid names are the keys of ``SCHEDULES``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {name!r}; valid schedules are {', '.join(sorted(SCHEDULES))}")
    fn = SCHEDULES[name]
    try:
        inspect.signature(fn).bind(0, **kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(fn).parameters if p != "step"]
        raise ValueError(f"bad arguments for lr schedule {name!r} ({e}); it takes {', '.join(params)}") from None
    fn(0, **kwargs)  # validates the values

    def lr_lambda(step: int) -> float:
        return fn(step, **kwargs)

    return lr_lambda
