"""The ``scaling`` study's side claims, each against a baseline that gives its number a meaning.

- **SVD entropy** (Moonlight §3.4, Figure 4): the final weights' entropy per matrix group, for AdamW at
  its best lr and Muon at AdamW's lr (the paper's protocol), beside the *initial* weights' (random
  Gaussian matrices of the same shapes have a high entropy already, so "Muon's is high" means nothing
  without it). The verdict is paired over (width, seed): the same initial weights and data.
- **Max attention logit** (App. D): the largest max logit in the first quarter of training at the
  largest width, each optimizer at its *own* best lr (a Muon run far below its optimal lr would grow its
  logits slowly for that reason alone), and Muon at AdamW's lr, labelled as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ....analysis.logits import max_logit_keys
from ....analysis.paired import paired_difference
from ....analysis.runs import Run
from ....analysis.spectra import MATRIX_GROUPS, group_means
from ...protocol import ClaimCheck
from . import plan as scaling_plan

if TYPE_CHECKING:
    from .measured import Measured

__all__ = ["EARLY_FRACTION", "entropy_comparison", "final_entropies", "initial_entropies", "logit_comparison"]

EARLY_FRACTION = 0.25
""""Early" training for the max-logit claim (App. D): the first quarter of the steps."""


def final_entropies(run: Run) -> dict[str, float]:
    """The ``svd_entropy/*`` values of the last row that logged them (the final weights)."""
    for row in sorted(run.rows, key=lambda r: r["step"], reverse=True):
        values = {k: v for k, v in row.items() if k.startswith("svd_entropy/")}
        if values:
            return values
    return {}


def initial_entropies(p: Mapping[str, Any], width: int, seed: int) -> dict[str, float]:
    """``svd_entropy/<name>`` of a freshly initialised model of this width (``torch.manual_seed(seed)``)."""
    import torch

    from ....models import Transformer
    from ....spectra import svd_entropies

    torch.manual_seed(seed)
    return svd_entropies(Transformer(scaling_plan.model_for(p, width)))


def _arm_runs(m: Measured, ch: Mapping[str, Any], width_index: int, arm: str) -> dict[int, Run]:
    """Seed -> run of ``arm`` (``adamw``, ``muon_shared`` at AdamW's lr, ``muon_own``) at one width."""
    row = ch["per_width"][width_index]
    optimizer, lr = {"adamw": ("adamw", row["adamw"]["lr"]), "muon_shared": ("muon", row["adamw"]["lr"]),
                     "muon_own": ("muon", row["muon"]["lr"])}[arm]
    return {s: m.runs[(optimizer, row["width"], lr, s)] for s in m.seeds}


def entropy_comparison(m: Measured, ch: Mapping[str, Any], p: Mapping[str, Any]) -> dict[str, Any]:
    """Per group: the mean over widths and seeds of the initial, AdamW and Muon (at AdamW's lr) entropies; the
    paired difference Muon − AdamW per group over (width, seed); the share of matrices higher under Muon."""
    per: dict[str, dict[str, dict[int, float]]] = {}
    higher = pairs = 0
    for i, w in enumerate(m.widths):
        adamw, muon = _arm_runs(m, ch, i, "adamw"), _arm_runs(m, ch, i, "muon_shared")
        for s in m.seeds:
            values = {"initial": initial_entropies(p, w, s), "adamw": final_entropies(adamw[s]),
                      "muon": final_entropies(muon[s])}
            for arm, entropies in values.items():
                for group, mean in group_means(entropies).items():
                    per.setdefault(group, {}).setdefault(arm, {})[i * 1000 + s] = mean
            shared = set(values["adamw"]) & set(values["muon"])
            higher += sum(values["muon"][k] > values["adamw"][k] for k in shared)
            pairs += len(shared)
    groups = {g: per[g] for g in MATRIX_GROUPS if g in per}
    diffs = {g: paired_difference(v["adamw"], v["muon"]) for g, v in groups.items()}
    means = {g: {arm: float(np.mean(list(v[arm].values()))) for arm in v} for g, v in groups.items()}
    share = higher / pairs if pairs else None
    verdicts = [d.verdict(+1) for d in diffs.values()]
    claim = ClaimCheck(
        paper="Muon's weights have higher SVD entropy than AdamW's in every matrix group (§3.4, Figure 4)",
        result="; ".join(f"{g}: initial {v['initial']:.4f}, AdamW {v['adamw']:.4f}, Muon {v['muon']:.4f} (Muon − AdamW "
                         f"{diffs[g].mean:+.4f}, CI {diffs[g].interval[0]:+.4f} to {diffs[g].interval[1]:+.4f})"
                         for g, v in means.items()),
        agrees=True if verdicts and all(v is True for v in verdicts) else False if any(v is False for v in verdicts)
        else None,
        by_how_much=f"Muon higher in {sum(v is True for v in verdicts)} of {len(verdicts)} groups (paired over "
                    f"{len(m.widths) * len(m.seeds)} width-seed pairs)" + (f"; {share * 100:.0f} % of {pairs} paired "
                                                                             "matrices" if share is not None else ""),
    )
    text = ("SVD entropy (normalised, 1 = flat spectrum) of the final weights, mean per group over widths and seeds, "
            "with the same models' initial weights as the baseline: " + claim.result + ".")
    results = {"groups": means, "paired": {g: d.as_dict() for g, d in diffs.items()}, "muon_higher_fraction": share,
               "matrices": pairs}
    return {"claim": claim, "results": results, "text": text, "groups": means, "share": share}


def early_max_logit(run: Run) -> float | None:
    """The largest ``max_logit/layer*`` the run logged in its first ``EARLY_FRACTION`` of steps."""
    last = max((r["step"] for r in run.rows), default=0)
    values = []
    for key in max_logit_keys(run):
        steps, _, v = run.series(key)
        values += list(v[steps <= EARLY_FRACTION * last])
    return max(values) if values else None


def logit_comparison(m: Measured, ch: Mapping[str, Any]) -> dict[str, Any]:
    """At the largest width: early max logits of AdamW and Muon each at its own best lr (paired), and of Muon at
    AdamW's lr."""
    i = len(m.widths) - 1
    arms = {arm: _arm_runs(m, ch, i, arm) for arm in ("adamw", "muon_own", "muon_shared")}
    early = {arm: {s: early_max_logit(r) for s, r in runs.items()} for arm, runs in arms.items()}
    if any(v is None for e in early.values() for v in e.values()):
        claim = ClaimCheck("the max attention logit grows more under Muon early in training (App. D)",
                           "no max logits were logged", None, "—")
        return {"claim": claim, "results": {}, "text": "No max logits were logged.", "runs": []}
    own = paired_difference(early["adamw"], early["muon_own"])
    shared = paired_difference(early["adamw"], early["muon_shared"])
    claim = ClaimCheck(
        paper="the max attention logit grows more under Muon early in training (App. D; > 100 at scale)",
        result=f"d={m.widths[i]}, first {EARLY_FRACTION:.0%} of steps, each at its own best lr: Muon − AdamW = "
               f"{own.text('')}; Muon at AdamW's lr − AdamW = {shared.mean:+.2f}",
        agrees=own.verdict(+1),
        by_how_much=f"Muon's early max logit {np.mean(list(early['muon_own'].values())):.1f} vs AdamW's "
                    f"{np.mean(list(early['adamw'].values())):.1f}",
    )
    text = (f"Max attention logit in the first {EARLY_FRACTION:.0%} of training at d={m.widths[i]}: AdamW at its best "
            f"lr {np.mean(list(early['adamw'].values())):.2f}, Muon at its own best lr "
            f"{np.mean(list(early['muon_own'].values())):.2f}, Muon at AdamW's lr (the shared-lr comparison) "
            f"{np.mean(list(early['muon_shared'].values())):.2f} (means over seeds).")
    results = {arm: {str(s): v for s, v in e.items()} for arm, e in early.items()}
    results["muon_own_minus_adamw"] = own.as_dict()
    return {"claim": claim, "results": results, "text": text,
            "runs": list(arms["adamw"].values()) + list(arms["muon_own"].values())}
