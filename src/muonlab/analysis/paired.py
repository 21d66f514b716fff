"""Paired verdicts: the difference between two arms that share seeds, with its 95 % interval.

Two runs with the same seed start from the same initial weights and see the same batches in the same
order, so most of their seed-to-seed noise is shared. The difference of the arms is therefore read
from the per-seed differences ``d_s = b_s − a_s``::

    d̄ = mean_s d_s,   se = sd(d_s) / √n,   95 % interval = d̄ ± t_{0.975, n−1} · se      (Student t)

and the arms are *separated* when that interval excludes 0. The unpaired figures (each arm's mean ±
std) are kept beside it for the report, so a reader sees both (a paired interval is narrower exactly
when the seeds' shared noise is large).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MIN_SEEDS", "PairedDifference", "paired_difference", "t_quantile_975"]

MIN_SEEDS = 3
"""Seeds per arm below which no difference is called separated, whatever its interval."""

# t_{0.975, ν} for ν = 1 … 30 degrees of freedom (standard tables, 3 decimals).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
_Z975 = 1.959964


def t_quantile_975(dof: int) -> float:
    """The 97.5th percentile of Student's t with ``dof`` degrees of freedom: the table up to 30, then the
    Cornish–Fisher expansion ``z + (z³ + z)/(4ν) + (5z⁵ + 16z³ + 3z)/(96ν²)`` (error < 1e-3 past 30)."""
    if dof < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {dof}")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


@dataclass(frozen=True)
class PairedDifference:
    """``b − a`` over the seeds both arms ran, from the per-seed differences.

    ``differences``: ``{seed: b_s − a_s}``; ``mean_a`` / ``mean_b`` / ``std_a`` / ``std_b``: the unpaired
    figures over the same seeds (std None for one seed).
    """

    differences: Mapping[int, float]
    mean_a: float
    mean_b: float
    std_a: float | None
    std_b: float | None

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        """d̄, the mean per-seed difference (equal to ``mean_b − mean_a``)."""
        return statistics.fmean(self.differences.values())

    @property
    def std(self) -> float | None:
        """The sample std of the per-seed differences (None for one seed)."""
        return statistics.stdev(self.differences.values()) if self.n > 1 else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % t interval of the mean difference; None with fewer than two seeds."""
        if self.std is None:
            return None
        half = t_quantile_975(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def separated(self) -> bool:
        """Whether the 95 % interval excludes 0, with at least ``MIN_SEEDS`` seeds."""
        interval = self.interval
        return self.n >= MIN_SEEDS and interval is not None and (interval[0] > 0 or interval[1] < 0)

    @property
    def sign_count(self) -> tuple[int, int]:
        """``(seeds with b > a, seeds with b < a)``."""
        values = list(self.differences.values())
        return sum(v > 0 for v in values), sum(v < 0 for v in values)

    def verdict(self, expected_sign: int) -> bool | None:
        """True when separated in the ``expected_sign`` direction (+1: b above a), False when separated the
        other way, None when not separated (cannot tell)."""
        if not self.separated:
            return None
        return (self.mean > 0) == (expected_sign > 0)

    def text(self, unit: str = "nats") -> str:
        """``"+0.0135 nats (95 % CI +0.0098 to +0.0172, paired over 3 seeds; positive in 3 seeds, negative in 0;
        unpaired 1.2345 ± 0.0123 vs 1.2480 ± 0.0110)"``: the difference ``b − a``, then each arm's mean ± std
        (``a`` first)."""
        interval = self.interval
        ci = (f"95 % CI {interval[0]:+.4f} to {interval[1]:+.4f}" if interval else "no interval from one seed")
        above, below = self.sign_count
        value = f"{self.mean:+.4f} {unit}" if unit else f"{self.mean:+.4f}"
        return (f"{value} ({ci}, paired over {self.n} seed{'s' if self.n != 1 else ''}; "
                f"positive in {above} seed{'s' if above != 1 else ''}, negative in {below}; "
                f"unpaired {self.mean_a:.4f}{_spread(self.std_a)} vs "
                f"{self.mean_b:.4f}{_spread(self.std_b)})")

    def as_dict(self) -> dict:
        """JSON-ready figures for ``results.json``."""
        interval = self.interval
        return {"mean": self.mean, "low": interval[0] if interval else None, "high": interval[1] if interval else None,
                "n": self.n, "separated": self.separated, "per_seed": {str(s): d for s, d in self.differences.items()},
                "unpaired": {"a": [self.mean_a, self.std_a], "b": [self.mean_b, self.std_b]}}


def _spread(std: float | None) -> str:
    return f" ± {std:.4f}" if std is not None else ""


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> PairedDifference:
    """``b − a`` over the seeds in both ``a`` and ``b`` (``{seed: value}``); raises ``ValueError`` when they
    share no seed or a value is not finite."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"the arms share no seed (a has {sorted(a)}, b has {sorted(b)}); a paired difference "
                         "needs runs of both arms with the same seed")
    values = [float(a[s]) for s in seeds] + [float(b[s]) for s in seeds]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"paired_difference got a non-finite value: a={dict(a)}, b={dict(b)}")
    va, vb = [float(a[s]) for s in seeds], [float(b[s]) for s in seeds]
    sd_a, sd_b = (statistics.stdev(v) if len(v) > 1 else None for v in (va, vb))
    return PairedDifference({s: y - x for s, x, y in zip(seeds, va, vb)}, statistics.fmean(va), statistics.fmean(vb),
                            sd_a, sd_b)

