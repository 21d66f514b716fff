"""The ``scaling`` study's numbers, claims and report sections, from its run folders.

Per width and optimizer the runs form cells ``{lr: {seed: final validation loss}}``. AdamW's chosen lr is
the best mean over its fully seeded cells; "Muon at AdamW's lr" is Muon's cell there (the paper's
protocol); "Muon at its own lr" is Muon's best fully seeded cell. Power laws ``L = a·C^b`` through the
chosen means give the equal-loss compute ratio ``C_Muon / C_AdamW``; its 95 % interval comes from
``muonlab.analysis.lr_sweep.selection_bootstrap``, which re-selects both optimizers' lrs inside every
resample of the seeds, so the uncertainty of the choice is in the interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ....analysis.fits import equal_loss_compute_ratio, fit_power_law
from ....analysis.lr_sweep import at_edge, choose, selection_bootstrap, transfer
from ....analysis.paired import paired_difference
from ...protocol import ClaimCheck, claim_section
from ...study import Analysis, Finished
from ...sweeps import OPTIMIZERS
from . import plots
from .diagnostics import entropy_comparison, logit_comparison
from .measured import Measured, measure

PAPER_RATIO = 0.52
"""Moonlight's equal-loss compute ratio C_Muon / C_AdamW (Figure 3, §3.2)."""
COMPUTE_LEVELS = 5
"""Compute values (log-spaced over the widths' range) at which the ratio is reported."""

def _statistic(compute: Sequence[float], at: np.ndarray):
    """The bootstrap's statistic: the compute ratio of Muon at AdamW's lr and at its own, at ``at``, then the
    per-width loss gaps Muon − AdamW of both."""
    def statistic(groups: list[dict[str, dict[float, float]]]) -> np.ndarray:
        chosen = [transfer(g["adamw"], g["muon"]) for g in groups]
        adamw = fit_power_law(compute, [c.source_loss for c in chosen])
        shared = [c.target_at_source_lr for c in chosen]
        if not np.isfinite(shared).all():
            return np.full(2 * len(at) + 2 * len(groups), np.nan)
        ratio_shared = equal_loss_compute_ratio(fit_power_law(compute, shared), adamw, at)
        ratio_own = equal_loss_compute_ratio(fit_power_law(compute, [c.target_loss for c in chosen]), adamw, at)
        gaps = [c.target_at_source_lr - c.source_loss for c in chosen] + [c.target_loss - c.source_loss for c in chosen]
        return np.concatenate([ratio_shared, ratio_own, gaps])
    return statistic


def _interval(point: np.ndarray, low: np.ndarray, high: np.ndarray, i: int) -> dict[str, float]:
    return {"point": float(point[i]), "low": float(low[i]), "high": float(high[i])}


def ratio_results(m: Measured, samples: int = 2000) -> dict[str, Any]:
    """Compute ratios and loss gaps with their selection-aware 95 % intervals, and the chosen lrs."""
    at = np.geomspace(min(m.compute), max(m.compute), COMPUTE_LEVELS)
    groups = [{o: m.cells[(o, w)] for o in OPTIMIZERS} for w in m.widths]
    point, low, high = selection_bootstrap(groups, m.seeds, _statistic(m.compute, at), samples=samples)
    k, n = len(at), len(m.widths)
    out: dict[str, Any] = {"at": at.tolist()}
    for name, offset in (("ratio_at_adamw_lr", 0), ("ratio_at_own_lr", k)):
        out[name] = [_interval(point, low, high, offset + i) for i in range(k)]
    for name, offset in (("gap_at_adamw_lr", 2 * k), ("gap_at_own_lr", 2 * k + n)):
        out[name] = [_interval(point, low, high, offset + i) for i in range(n)]
    return out


def choices(m: Measured) -> dict[str, Any]:
    """Per width: each optimizer's chosen lr (best mean of its fully seeded cells), whether it is interior
    to the lrs tried or at the cap, and the paired differences at the chosen cells."""
    out = []
    for w in m.widths:
        full = {o: {lr: v for lr, v in m.cells[(o, w)].items() if set(m.seeds) <= set(v)} for o in ("adamw", "muon")}
        best = {o: choose({lr: list(v.values()) for lr, v in full[o].items()}) for o in full}
        tried = {o: sorted(m.cells[(o, w)]) for o in full}
        row = {"width": w}
        for o in full:
            edge = at_edge(tried[o], best[o])
            row[o] = {"lr": best[o], "status": "at the cap" if edge else "interior", "sweep": m.sweeps[(o, w)].status,
                      "mean": float(np.mean(list(full[o][best[o]].values())))}
        adamw_cell = full["adamw"][best["adamw"]]
        row["muon_at_adamw_lr_minus_adamw"] = paired_difference(adamw_cell, full["muon"][best["adamw"]]).as_dict()
        row["muon_own_minus_adamw"] = paired_difference(adamw_cell, full["muon"][best["muon"]]).as_dict()
        row["muon_own_minus_muon_at_adamw_lr"] = paired_difference(full["muon"][best["adamw"]],
                                                                   full["muon"][best["muon"]]).as_dict()
        out.append(row)
    return {"per_width": out}


def _ratio_claim(name: str, ratio: Mapping[str, Any], label: str) -> ClaimCheck:
    mid = len(ratio["at"]) // 2
    r = ratio[name][mid]
    agrees = True if r["high"] < 1 else False if r["low"] > 1 else None
    span = ", ".join(f"{x['point']:.2f} [{x['low']:.2f}, {x['high']:.2f}]" for x in ratio[name])
    return ClaimCheck(
        paper=f"C_Muon / C_AdamW ≈ {PAPER_RATIO} at equal loss with Muon at AdamW's lr and wd (Figure 3)",
        result=f"{label}: C_Muon / C_AdamW = {r['point']:.2f} (95 % CI with the lr choice "
               f"{r['low']:.2f}–{r['high']:.2f}) "
               f"at C = {ratio['at'][mid]:.2e}; at the {len(ratio['at'])} compute levels: {span}",
        agrees=agrees,
        by_how_much=(f"{(1 - r['point']) * 100:.0f} % less compute than AdamW here, {(1 - PAPER_RATIO) * 100:.0f} % in "
                     "the paper" if r["point"] < 1 else f"Muon needs {r['point']:.2f}× AdamW's compute here"),
    )


def _lr_claim(ch: Mapping[str, Any]) -> ClaimCheck:
    rows = ch["per_width"]
    doublings = [float(np.log2(r["muon"]["lr"] / r["adamw"]["lr"])) for r in rows]
    penalties = [r["muon_own_minus_muon_at_adamw_lr"] for r in rows]
    separated = [p for p in penalties if p["separated"]]
    return ClaimCheck(
        paper="with the 0.2·sqrt(max(A, B)) scale Muon's best lr is AdamW's (§2.2: AdamW's lr and wd carry over)",
        result="; ".join(f"d={r['width']}: AdamW {r['adamw']['lr']:g}, Muon {r['muon']['lr']:g} "
                         f"(own-lr gain {-p['mean']:+.4f} nats, CI {-p['high']:+.4f} to {-p['low']:+.4f})"
                         for r, p in zip(rows, penalties)),
        agrees=all(abs(d) <= 1.0 + 1e-9 for d in doublings) and not separated,
        by_how_much=f"Muon's optimum {min(doublings):+.0f} to {max(doublings):+.0f} doublings from AdamW's; reusing "
                    f"AdamW's lr costs Muon a separated loss at {len(separated)} of {len(rows)} widths",
    )


def _runs_table(m: Measured, ch: Mapping[str, Any]) -> str:
    lines = ["| width | non-emb. params | tokens | batch (tokens) | steps | FLOPs C | AdamW lr (loss) | "
             "Muon at AdamW's lr − AdamW (paired) | Muon's own lr (loss) | Muon own − AdamW (paired) |",
             "|---" * 10 + "|"]
    for i, row in enumerate(ch["per_width"]):
        a, mu = row["adamw"], row["muon"]
        shared, own = row["muon_at_adamw_lr_minus_adamw"], row["muon_own_minus_adamw"]
        lines.append(f"| {m.widths[i]} | {m.params[i]:,} | {m.tokens[i]:,} | {m.batch_tokens[i]:,} | {m.steps[i]:,} | "
                     f"{m.compute[i]:.2e} | {a['lr']:g} ({a['mean']:.4f}) | {_ci(shared)} | {mu['lr']:g} "
                     f"({mu['mean']:.4f}) | {_ci(own)} |")
    return "\n".join(lines)


def _ci(d: Mapping[str, Any]) -> str:
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" + (" sep." if d["separated"] else "")


def _sweep_table(m: Measured, ch: Mapping[str, Any]) -> str:
    lines = ["| sweep | lr: mean final loss over seeds (n) | choice |", "|---|---|---|"]
    for row in ch["per_width"]:
        for o in ("adamw", "muon"):
            cells = m.cells[(o, row["width"])]
            text = ", ".join(f"{lr:g}: {np.mean(list(v.values())):.4f} ({len(v)})" for lr, v in sorted(cells.items()))
            lines.append(f"| {o} d={row['width']} | {text} | {row[o]['lr']:g} ({row[o]['status']}) |")
    return "\n".join(lines)


def analyse(finished: Finished) -> Analysis:
    """Fits, compute ratios with selection-aware intervals, the lr claim, SVD entropy and max logits."""
    p, out = finished.params, finished.out
    m = measure(p, finished.runs)
    ch = choices(m)
    ratio = ratio_results(m)
    entropy = entropy_comparison(m, ch, p)
    logits = logit_comparison(m, ch)
    checks = [_ratio_claim("ratio_at_adamw_lr", ratio, "Muon at AdamW's lr"),
              _ratio_claim("ratio_at_own_lr", ratio, "Muon at its own lr"), _lr_claim(ch), entropy["claim"],
              logits["claim"]]
    mid = len(ratio["at"]) // 2
    shared, own = ratio["ratio_at_adamw_lr"][mid], ratio["ratio_at_own_lr"][mid]
    figures = [
        ("Final validation loss against training FLOPs: AdamW at its best lr, Muon at AdamW's and at its own, fits",
         plots.plot_scaling(m, ch, out / "scaling_law.png")),
        ("Equal-loss compute ratio C_Muon / C_AdamW with its 95 % interval (lr choice included)",
         plots.plot_compute_ratio(ratio, PAPER_RATIO, out / "compute_ratio.png")),
        ("Learning-rate sweeps: mean over seeds (filled: every seed; open: first seed only)",
         plots.plot_sweeps(m, out / "lr_sweeps.png")),
        ("SVD entropy per matrix group: initial weights, AdamW and Muon", plots.plot_entropy(entropy,
                                                                                           out / "svd_entropy.png")),
        (f"Max attention logit per layer at d={m.widths[-1]}, each optimizer at its own best lr",
         plots.plot_logits(logits["runs"], out / "max_logits.png")),
    ]
    results = {
        "widths": m.widths, "compute_flops": m.compute, "non_embedding_params": m.params, "tokens": m.tokens,
        "batch_tokens": m.batch_tokens, "steps": m.steps, "choices": ch, "compute_ratio": ratio,
        "cells": {f"{o}-d{w}": {f"{lr:g}": v for lr, v in sorted(c.items())} for (o, w), c in m.cells.items()},
        "svd_entropy": entropy["results"], "early_max_logit": logits["results"],
        "claims_agree": [c.agrees for c in checks],
    }
    sections = [
        ("Headline", f"At C = {ratio['at'][mid]:.2e} FLOPs, Muon reusing AdamW's best learning rate and weight decay "
                     f"reaches AdamW's loss with **{shared['point']:.2f}×** its training FLOPs (95 % interval with the "
                     f"lr choice {shared['low']:.2f}–{shared['high']:.2f}; paper ≈ {PAPER_RATIO}); Muon at its own "
                     f"best learning rate with **{own['point']:.2f}×** ({own['low']:.2f}–{own['high']:.2f})."),
        ("Paper claim vs small-scale result", claim_section(checks)),
        ("Runs per width", _runs_table(m, ch) + "\n\nPaired differences: mean over seeds of the per-seed difference, "
         "with its 95 % t interval (`sep.`: the interval excludes 0). Budget: "
         f"{p['tokens_per_param']:g} tokens per non-embedding parameter at Moonlight's compute-optimal batch "
         "B(C) = 0.0065·C^0.414 tokens (Table 9), whole sequences; C = training FLOPs (Newton–Schulz not counted)."),
        ("Learning-rate sweeps", _sweep_table(m, ch) + "\n\nEach sweep starts from its preset grid with the first "
         "seed, extends one ×2 step past an edge while the best cell sits there, then runs every seed at the best "
         "cell and its neighbours; the choice is the best mean over fully seeded cells. Muon also runs every seed at "
         "AdamW's fully seeded cells, so the interval of Muon-at-AdamW's-lr can re-select AdamW's lr."),
        ("SVD entropy and max logits", entropy["text"] + "\n\n" + logits["text"]),
    ]
    summary = (f"C_Muon / C_AdamW at equal loss: {shared['point']:.2f} [{shared['low']:.2f}, {shared['high']:.2f}] "
               f"at AdamW's lr, {own['point']:.2f} [{own['low']:.2f}, {own['high']:.2f}] at Muon's own "
               f"(paper ≈ {PAPER_RATIO})")
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)
