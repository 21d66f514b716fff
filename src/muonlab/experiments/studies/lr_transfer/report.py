"""The ``lr-transfer`` study's map, rule and report, from its run folders.

In every (width, batch) group: each optimizer's chosen lr (best mean over its fully seeded cells), the
ratio η*_Muon / η*_AdamW, and the *penalty* of reusing AdamW's lr — Muon's loss at η*_AdamW minus its loss
at η*_Muon — with Muon at AdamW's lr and at its own against AdamW. Intervals come from
``selection_bootstrap`` (both lrs re-selected in every resample of the seeds, paired draws); the paired t
intervals at the chosen cells stand beside them. The rule a user can apply is read off the map: the fewest
steps from which on reusing AdamW's lr costs Muon at most ``RULE_TOLERANCE`` of its loss (upper bound).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ....analysis.lr_sweep import selection_bootstrap, transfer
from ....analysis.paired import paired_difference
from ...protocol import ClaimCheck, claim_section
from ...study import Analysis, Finished
from ...sweeps import OPTIMIZERS, cells_from
from . import plan as transfer_plan
from . import plots

__all__ = ["RULE_TOLERANCE", "analyse", "group_results", "rule"]

RULE_TOLERANCE = 0.01
"""The relative loss a user accepts for reusing AdamW's lr: 1 % of Muon's loss at its own optimum."""

_STATS = ("penalty", "relative_penalty", "muon_at_adamw_lr_minus_adamw", "muon_own_minus_adamw", "log2_lr_ratio")


def _statistic(groups: list[dict[str, dict[float, float]]]) -> np.ndarray:
    values = []
    for g in groups:
        t = transfer(g["adamw"], g["muon"])
        penalty = t.target_at_source_lr - t.target_loss
        values += [penalty, penalty / t.target_loss, t.target_at_source_lr - t.source_loss,
                   t.target_loss - t.source_loss, float(np.log2(t.target_lr / t.source_lr))]
    return np.asarray(values)


def group_results(p: Mapping[str, Any], runs, samples: int = 2000) -> list[dict[str, Any]]:
    """Per group: steps, chosen lrs and where they sit, the map's statistics with selection-aware intervals, and
    the paired t intervals at the chosen cells."""
    plan = transfer_plan.sweeps(p)
    cells = cells_from(runs, plan.group_of)
    seeds = list(p["seeds"])
    groups = list(plan.groups)
    losses = {k: {(lr, s): v for lr, by_seed in c.items() for s, v in by_seed.items()} for k, c in cells.items()}
    state = plan.brackets(losses)
    data = [{o: cells[(o, g)] for o in OPTIMIZERS} for g in groups]
    point, low, high = selection_bootstrap(data, seeds, _statistic, samples=samples)
    out = []
    for i, (width, batch) in enumerate(groups):
        full = {o: {lr: v for lr, v in cells[(o, (width, batch))].items() if set(seeds) <= set(v)} for o in OPTIMIZERS}
        t = transfer(*({lr: float(np.mean(list(v.values()))) for lr, v in full[o].items()} for o in OPTIMIZERS))
        row: dict[str, Any] = {
            "width": width, "batch": batch, "steps": transfer_plan.steps(p, batch), "adamw_lr": t.source_lr,
            "muon_lr": t.target_lr, "adamw_loss": t.source_loss, "muon_loss": t.target_loss,
            "muon_at_adamw_lr_loss": t.target_at_source_lr, "lr_ratio": t.target_lr / t.source_lr,
            "status": {o: state[(o, (width, batch))].status for o in OPTIMIZERS},
            "paired_penalty": paired_difference(full["muon"][t.target_lr], full["muon"][t.source_lr]).as_dict(),
        }
        for j, name in enumerate(_STATS):
            k = i * len(_STATS) + j
            row[name] = {"point": float(point[k]), "low": float(low[k]), "high": float(high[k])}
        out.append(row)
    return out


def rule(rows: Sequence[Mapping[str, Any]], tolerance: float = RULE_TOLERANCE) -> dict[str, Any]:
    """The fewest steps ``S`` such that at every step count ≥ S and every width, the upper 95 % bound of the
    relative penalty is ≤ ``tolerance`` (None when no step count qualifies); the worst relative penalty at ≥ S
    and below it; the range and geometric mean of η*_Muon / η*_AdamW."""
    levels = sorted({r["steps"] for r in rows})
    worst = {s: max(r["relative_penalty"]["high"] for r in rows if r["steps"] == s) for s in levels}
    qualifying = [s for s in levels if all(worst[t] <= tolerance for t in levels if t >= s)]
    steps = qualifying[0] if qualifying else None
    ratios = [r["lr_ratio"] for r in rows]
    above = [r["relative_penalty"]["point"] for r in rows if steps is not None and r["steps"] >= steps]
    below = [r["relative_penalty"]["point"] for r in rows if steps is None or r["steps"] < steps]
    return {"tolerance": tolerance, "min_steps": steps, "worst_upper_by_steps": {str(s): worst[s] for s in levels},
            "worst_point_at_or_above": max(above) if above else None,
            "worst_point_below": max(below) if below else None,
            "lr_ratio_range": [min(ratios), max(ratios)], "lr_ratio_geomean": float(np.exp(np.mean(np.log(ratios))))}


def rule_text(r: Mapping[str, Any], widths: Sequence[int]) -> str:
    """The rule in one paragraph a user can apply."""
    ratio = (f"Muon's own optimal lr was {r['lr_ratio_geomean']:.2g}× AdamW's (geometric mean; "
             f"{r['lr_ratio_range'][0]:g}–{r['lr_ratio_range'][1]:g}× over the map)")
    widths_text = "/".join(map(str, widths))
    if r["min_steps"] is None:
        return (f"Reusing AdamW's learning rate cost Muon more than {r['tolerance']:.0%} of its loss "
                f"(upper 95 % bound) at some width at every step count tried (widths {widths_text}): tune Muon's "
                f"lr, starting at "
                f"{r['lr_ratio_geomean']:.2g}× AdamW's. {ratio}.")
    below = (f"; with fewer steps it lost up to {r['worst_point_below']:.1%}" if r["worst_point_below"] is not None
             else "")
    return (f"With ≥ {r['min_steps']:,} steps per run, Muon at AdamW's learning rate was within "
            f"{r['tolerance']:.0%} of its own optimum's loss at every width tried ({widths_text}; upper 95 % bound, "
            f"worst point estimate "
            f"{r['worst_point_at_or_above']:.2%}){below}. {ratio}.")


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    def ci(x: Mapping[str, float], fmt: str = "+.4f") -> str:
        return f"{x['point']:{fmt}} [{x['low']:{fmt}}, {x['high']:{fmt}}]"

    lines = ["| width | steps | AdamW η* (loss) | Muon η* (loss) | η*_M/η*_A | penalty of AdamW's lr (nats) | "
             "paired t | Muon at AdamW's lr − AdamW | Muon own − AdamW |", "|---" * 9 + "|"]
    for r in rows:
        mark = {o: "" if r["status"][o] == "interior" else f" ({r['status'][o]})" for o in OPTIMIZERS}
        pt = r["paired_penalty"]
        lines.append(f"| {r['width']} | {r['steps']:,} | {r['adamw_lr']:g}{mark['adamw']} ({r['adamw_loss']:.4f}) | "
                     f"{r['muon_lr']:g}{mark['muon']} ({r['muon_loss']:.4f}) | {r['lr_ratio']:g} | "
                     f"{ci(r['penalty'])} | {pt['mean']:+.4f} [{pt['low']:+.4f}, {pt['high']:+.4f}] | "
                     f"{ci(r['muon_at_adamw_lr_minus_adamw'])} | {ci(r['muon_own_minus_adamw'])} |")
    return "\n".join(lines)


def analyse(finished: Finished) -> Analysis:
    """The map (table and plot), the rule, and the claim that AdamW's lr carries over."""
    p, out = finished.params, finished.out
    rows = group_results(p, finished.runs.values())
    r = rule(rows)
    text = rule_text(r, p["widths"])
    carried = [row for row in rows if row["penalty"]["low"] <= 0 or row["relative_penalty"]["high"] <= RULE_TOLERANCE]
    claim = ClaimCheck(
        paper="with the 0.2·sqrt(max(A, B)) scale AdamW's learning rate and weight decay carry over to Muon "
              "(Moonlight §2.2)",
        result=text,
        agrees=True if len(carried) == len(rows) else False if not carried else None,
        by_how_much=f"reusing AdamW's lr costs at most {RULE_TOLERANCE:.0%} (or nothing measurable) in {len(carried)} "
                    f"of {len(rows)} (width, steps) cells",
    )
    figures = [("η*_Muon / η*_AdamW and the loss Muon loses at AdamW's lr, against steps per run",
                plots.plot_map(rows, RULE_TOLERANCE, out / "lr_transfer_map.png")),
               ("Learning-rate sweeps per (width, steps): mean over seeds (filled: every seed)",
                plots.plot_sweeps(p, finished.runs.values(), out / "lr_sweeps.png"))]
    sections = [
        ("Rule", text),
        ("Paper claim vs small-scale result", claim_section([claim])),
        ("Map", _table(rows) + "\n\nIntervals in brackets: 95 %, from a bootstrap over seeds that re-selects both "
         "optimizers' lrs in every resample; `paired t`: the t interval of the per-seed penalty at the chosen cells. "
         f"Every run trains {p['train_tokens']:,} tokens; the batch size sets the steps."),
    ]
    results = {"groups": rows, "rule": r, "claims_agree": [claim.agrees]}
    return Analysis(results=results, sections=sections, figures=figures, summary=text)
