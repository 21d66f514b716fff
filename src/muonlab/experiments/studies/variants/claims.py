"""The ``variants`` study's comparisons and verdicts, from the cells of its sweeps.

Per model, each arm's chosen lr is its best mean final validation loss over the fully seeded cells of its
sweep. Each refinement is compared with Moonlight Muon, both at their own chosen lr, by the difference
``arm − Muon`` in final validation loss, with two 95 % intervals:

- the paired t interval over seeds at the chosen cells (``muonlab.analysis.paired``);
- a bootstrap over seeds that re-selects *both* arms' lrs in every resample (``selection_bootstrap``), so the
  uncertainty of the lr choice is part of it.

A claim is *separated* only when both intervals exclude the same side, with at least ``MIN_SEEDS`` seeds.
The papers' claims (``CLAIMS``): NorMuon lowers the loss (arXiv 2510.05491), cautious weight decay lowers the
final loss (arXiv 2510.12402), per-head orthogonalization is not worse (Kimi K3 §2.5, GLM-5): a
non-inferiority claim, which agrees when both upper bounds lie within ``NOT_WORSE`` of Muon's loss and
disagrees when both lower bounds lie past it. Over the models the verdicts combine as
``muonlab.experiments.protocol.combined_verdict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ....analysis.lr_sweep import choose, selection_bootstrap
from ....analysis.paired import MIN_SEEDS, paired_difference
from ...protocol import ClaimCheck, combined_verdict

__all__ = ["CLAIMS", "NOT_WORSE", "Claim", "check_claims", "compare", "verdict"]

NOT_WORSE = 0.005
"""Per-head's margin: a loss at most 0.5 % of Muon's above Muon's counts as "not worse"."""

Cells = Mapping[float, Mapping[int, float]]
"""One arm's sweep in one model: ``{lr: {seed: final validation loss}}``."""


@dataclass(frozen=True)
class Claim:
    """A paper's claim about one arm against Moonlight Muon: ``kind`` is ``"lower"`` (the arm's loss is lower)
    or ``"not_worse"`` (its loss is at most ``NOT_WORSE`` of Muon's above)."""

    arm: str
    paper: str
    kind: str


CLAIMS = (
    Claim("normuon", "NorMuon (arXiv 2510.05491, ICLR 2026): per-row normalization after Newton–Schulz trains better "
          "than Muon (+11 % efficiency at 1.1B): lower loss", "lower"),
    Claim("cautious", "Cautious weight decay (arXiv 2510.12402, ICLR 2026): decaying only where update and weight "
          "agree in sign lowers the final loss", "lower"),
    Claim("perhead", "Per-head orthogonalization (Kimi K3 §2.5, GLM-5's Muon Split): cheaper, and not worse than "
          "whole-matrix Muon", "not_worse"),
)


def _full(cells: Cells, seeds: Sequence[int]) -> dict[float, dict[int, float]]:
    return {lr: dict(v) for lr, v in cells.items() if set(seeds) <= set(v)}


def compare(arms: Mapping[str, Cells], seeds: Sequence[int], samples: int = 2000) -> dict[str, Any]:
    """One model: each arm's chosen lr and loss over seeds, and every other arm's difference to ``"muon"``
    (paired t at the chosen cells, and the selection-aware bootstrap interval)."""
    names = list(arms)
    full = {a: _full(arms[a], seeds) for a in names}
    best = {a: choose({lr: list(v.values()) for lr, v in full[a].items()}) for a in names}
    others = [a for a in names if a != "muon"]

    def statistic(groups):
        means = groups[0]
        chosen = {a: means[a][choose({lr: [v] for lr, v in means[a].items()})] for a in names}
        return np.asarray([chosen[a] - chosen["muon"] for a in others])

    point, low, high = selection_bootstrap([full], seeds, statistic, samples=samples)
    out: dict[str, Any] = {"arms": {}, "differences": {}}
    for a in names:
        losses = list(full[a][best[a]].values())
        out["arms"][a] = {"lr": best[a], "mean": float(np.mean(losses)),
                          "std": float(np.std(losses, ddof=1)) if len(losses) > 1 else None}
    for i, a in enumerate(others):
        t = paired_difference(full["muon"][best["muon"]], full[a][best[a]])
        out["differences"][a] = {"paired": t.as_dict(), "text": t.text(),
                                 "selection": {"point": float(point[i]), "low": float(low[i]), "high": float(high[i])}}
    return out


def verdict(difference: Mapping[str, Any], kind: str, muon_loss: float) -> bool | None:
    """The verdict of one claim in one model from ``compare``'s difference (module docstring)."""
    t, s = difference["paired"], difference["selection"]
    if t["n"] < MIN_SEEDS or t["low"] is None:
        return None
    lows, highs = (t["low"], s["low"]), (t["high"], s["high"])
    if kind == "lower":
        return True if max(highs) < 0 else False if min(lows) > 0 else None
    margin = NOT_WORSE * muon_loss
    return True if max(highs) <= margin else False if min(lows) > margin else None


def check_claims(models: Mapping[str, Mapping[str, Any]]) -> list[tuple[ClaimCheck, dict[str, bool | None]]]:
    """Every claim over the models (``{model: compare(...)}``): its ``ClaimCheck`` and its verdict per model."""
    checks = []
    for claim in CLAIMS:
        per_model = {m: verdict(r["differences"][claim.arm], claim.kind, r["arms"]["muon"]["mean"])
                     for m, r in models.items()}
        parts = []
        for m, r in models.items():
            d, muon = r["differences"][claim.arm], r["arms"]["muon"]["mean"]
            s = d["selection"]
            parts.append(f"{m}: {claim.arm} − Muon {d['paired']['mean']:+.4f} nats ({d['paired']['mean'] / muon:+.2%}; "
                         f"paired t {_interval(d['paired'])}, with the lr choice [{s['low']:+.4f}, {s['high']:+.4f}])")
        margin = f" (margin {NOT_WORSE:.1%} of Muon's loss)" if claim.kind == "not_worse" else ""
        checks.append((ClaimCheck(paper=claim.paper, result="; ".join(parts), agrees=combined_verdict(
            list(per_model.values())), by_how_much=", ".join(f"{m}: {_word(v)}" for m, v in per_model.items())
            + margin), per_model))
    return checks


def _interval(t: Mapping[str, Any]) -> str:
    return f"[{t['low']:+.4f}, {t['high']:+.4f}]" if t["low"] is not None else "(no interval)"


def _word(v: bool | None) -> str:
    return {True: "agrees", False: "disagrees", None: "cannot tell"}[v]
