"""The ``scaling`` study's numbers, claims and report sections, from what its runs measured.

Kept apart from the plan (``scaling.py``) so each reads in one sitting. The fits and the bootstrap
are :mod:`muonlab.analysis.fits`; the plots :mod:`muonlab.analysis.scaling_plots`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...analysis import qk_clip_plots, scaling_plots
from ...analysis.fits import PowerLaw, bootstrap_compute_ratio, fit_power_law
from ...analysis.runs import Run
from ...analysis.spectra import MATRIX_GROUPS, group_means
from ..protocol import ClaimCheck, claim_section, mean_std
from ..study import Analysis

PAPER_RATIO = 0.52
"""Moonlight's equal-loss compute ratio C_Muon / C_AdamW (Figure 3, §3.2)."""
EARLY_FRACTION = 0.25
""""Early" training for the max-logit claim (App. D): the first quarter of the steps."""


@dataclass(frozen=True)
class Measured:
    """Per width (in ``widths`` order): training FLOPs, non-embedding parameters, tokens, AdamW's best
    learning rate; per optimizer and width, the runs of every seed; the learning-rate sweeps."""

    widths: list[int]
    compute: list[float]
    params: list[int]
    tokens: list[int]
    adamw_best_lr: list[float]
    arms: Mapping[str, list[list[Run]]]
    sweeps: Mapping[str, Mapping[float, float | None]]
    muon_sweep_width: int


def _losses(measured: Measured, optimizer: str) -> list[list[float]]:
    return [[r.final("val_loss") for r in runs] for runs in measured.arms[optimizer]]


def _final_entropies(run: Run) -> dict[str, float]:
    """The ``svd_entropy/*`` values of the last row that logged them (the final weights)."""
    for row in sorted(run.rows, key=lambda r: r["step"], reverse=True):
        values = {k: v for k, v in row.items() if k.startswith("svd_entropy/")}
        if values:
            return values
    return {}


def entropy_comparison(measured: Measured) -> dict[str, Any]:
    """Per group, each optimizer's mean (over widths and seeds) macro-averaged entropy; and the share of
    matrices (paired by width, seed and name) whose entropy is higher under Muon."""
    per_group: dict[str, dict[str, list[float]]] = {}
    higher, pairs = 0, 0
    for adamw_runs, muon_runs in zip(measured.arms["adamw"], measured.arms["muon"]):
        for adamw, muon in zip(adamw_runs, muon_runs):
            a, m = _final_entropies(adamw), _final_entropies(muon)
            for optimizer, values in (("adamw", a), ("muon", m)):
                for group, mean in group_means(values).items():
                    per_group.setdefault(group, {}).setdefault(optimizer, []).append(mean)
            shared = set(a) & set(m)
            higher += sum(m[k] > a[k] for k in shared)
            pairs += len(shared)
    groups = {g: {o: float(np.mean(v)) for o, v in per_group[g].items()} for g in MATRIX_GROUPS if g in per_group}
    return {"groups": groups, "muon_higher_fraction": higher / pairs if pairs else None, "matrices": pairs}


def early_max_logits(runs: Sequence[Run]) -> dict[int, float]:
    """Per layer, the mean over ``runs`` of each run's largest ``max_logit/layer{i}`` in its first
    ``EARLY_FRACTION`` of steps."""
    per_layer: dict[int, list[float]] = {}
    for run in runs:
        keys = qk_clip_plots.max_logit_keys(run)
        last = max((r["step"] for r in run.rows), default=0)
        for layer, key in enumerate(keys):
            steps, _, values = run.series(key)
            early = values[steps <= EARLY_FRACTION * last]
            if len(early):
                per_layer.setdefault(layer, []).append(float(early.max()))
    return {layer: float(np.mean(v)) for layer, v in sorted(per_layer.items())}


def _ratio_claim(ratio: dict[str, Any]) -> ClaimCheck:
    mid = len(ratio["at"]) // 2
    point, lo, hi = ratio["point"][mid], ratio["low"][mid], ratio["high"][mid]
    agrees = True if hi < 1 else False if lo > 1 else None
    return ClaimCheck(
        paper=f"C_Muon / C_AdamW ≈ {PAPER_RATIO} at equal loss (Moonlight Figure 3: ≈ 2× compute efficiency)",
        result=f"C_Muon / C_AdamW = {point:.2f} (95 % bootstrap interval over seeds {lo:.2f}–{hi:.2f}) at "
               f"C = {ratio['at'][mid]:.2e} FLOPs; over the range {min(ratio['point']):.2f}–{max(ratio['point']):.2f}",
        agrees=agrees,
        by_how_much=f"{(1 - point) * 100:.0f} % less compute than AdamW here, against {(1 - PAPER_RATIO) * 100:.0f} % "
                    "in the paper" if point < 1 else f"Muon needs {point:.2f}× AdamW's compute here",
    )


def _lr_claim(measured: Measured, own: Mapping[str, float]) -> ClaimCheck:
    muon = measured.sweeps[f"Muon d={measured.muon_sweep_width}"]
    best_a, best_m = own["adamw_lr"], own["muon_lr"]
    steps = abs(math.log2(best_m / best_a))
    edge = best_m in (min(muon), max(muon))
    return ClaimCheck(
        paper="with the 0.2·sqrt(max(A, B)) scale Muon's best lr is AdamW's (§2.2; M7: within one ×2 grid step)",
        result=f"at d={measured.muon_sweep_width}: AdamW's best lr {best_a:g}, Muon's {best_m:g}"
               + (" (at the grid's edge: the optimum may lie beyond)" if edge else ""),
        agrees=steps <= 1.0 + 1e-9,
        by_how_much=f"{steps:.1f} doublings apart",
    )


def muon_at_its_own_lr(measured: Measured, adamw_fit: PowerLaw) -> dict[str, float]:
    """At the width of Muon's sweep (first seed): Muon's loss at its own best lr, AdamW's at its best, and
    the compute AdamW's fitted law needs for Muon's loss, as a multiple of that width's compute,
    ``C_AdamW(L_Muon) / C = (L_Muon / a)^(1/b) / C``."""
    width = measured.muon_sweep_width
    adamw, muon = measured.sweeps[f"AdamW d={width}"], measured.sweeps[f"Muon d={width}"]
    best_a, best_m = min(adamw, key=lambda lr: adamw[lr]), min(muon, key=lambda lr: muon[lr])
    compute = measured.compute[measured.widths.index(width)]
    return {"width": width, "muon_lr": best_m, "muon_loss": muon[best_m], "adamw_lr": best_a,
            "adamw_loss": adamw[best_a], "adamw_compute_multiple": float(adamw_fit.inverse(muon[best_m])) / compute}


def _own_lr_section(own: Mapping[str, float]) -> str:
    return (f"At d={own['width']} (first seed only: an observation, not a claim), Muon at its own best lr "
            f"{own['muon_lr']:g} reaches {own['muon_loss']:.4f}, against AdamW's {own['adamw_loss']:.4f} at its best "
            f"lr {own['adamw_lr']:g}; AdamW's fitted law reaches {own['muon_loss']:.4f} only at "
            f"{own['adamw_compute_multiple']:.2f}× this width's compute. The paper's protocol (Muon at AdamW's lr) "
            "is what the headline and the fits measure.")


def _entropy_claim(entropy: dict[str, Any]) -> ClaimCheck:
    groups = entropy["groups"]
    higher = [g for g, v in groups.items() if v.get("muon", -1) > v.get("adamw", math.inf)]
    share = entropy["muon_higher_fraction"]
    return ClaimCheck(
        paper="Muon's weights have higher SVD entropy in every matrix group (§3.4, Figure 4; > 90 % of matrices)",
        result="; ".join(f"{g}: AdamW {v['adamw']:.4f}, Muon {v['muon']:.4f}" for g, v in groups.items()),
        agrees=bool(groups) and len(higher) == len(groups) and share is not None and share >= 0.75,
        by_how_much=f"Muon higher in {len(higher)} of {len(groups)} groups and for "
                    + (f"{share * 100:.0f} % of {entropy['matrices']} paired matrices" if share is not None else "no"),
    )


def _logit_claim(early: Mapping[str, Mapping[int, float]], width: int) -> ClaimCheck:
    layers = sorted(set(early["adamw"]) & set(early["muon"]))
    above = [i for i in layers if early["muon"][i] >= early["adamw"][i]]
    return ClaimCheck(
        paper="the max attention logit grows more under Muon early in training (App. D; > 100 at scale)",
        result=f"d={width}, first {EARLY_FRACTION:.0%} of steps, mean over seeds per layer: "
               + "; ".join(f"layer {i}: AdamW {early['adamw'][i]:.1f}, Muon {early['muon'][i]:.1f}" for i in layers),
        agrees=bool(above) if layers else None,
        by_how_much=f"Muon ≥ AdamW in {len(above)} of {len(layers)} layers",
    )


def _table(measured: Measured, losses: Mapping[str, list[list[float]]]) -> str:
    lines = ["| width | non-emb. params | tokens | FLOPs C | AdamW best lr | AdamW loss | Muon loss |",
             "|---|---|---|---|---|---|---|"]
    for i, w in enumerate(measured.widths):
        lines.append(f"| {w} | {measured.params[i]:,} | {measured.tokens[i]:,} | {measured.compute[i]:.2e} | "
                     f"{measured.adamw_best_lr[i]:g} | {mean_std(losses['adamw'][i])} | "
                     f"{mean_std(losses['muon'][i])} |")
    return "\n".join(lines)


def _sweep_table(measured: Measured) -> str:
    lrs = sorted({lr for sweep in measured.sweeps.values() for lr in sweep})
    lines = ["| sweep (first seed) | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for label, sweep in measured.sweeps.items():
        best = min(sweep, key=lambda lr: sweep[lr])
        cells = [("**" if lr == best else "") + f"{sweep[lr]:.4f}" + ("**" if lr == best else "") if lr in sweep
                 else "" for lr in lrs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    edges = [w for w, lr in zip(measured.widths, measured.adamw_best_lr) if lr in (lrs[0], lrs[-1])]
    note = ("\n\nAdamW's best learning rate lies at the edge of the grid for widths "
            f"{edges}: its true optimum may lie beyond, so AdamW may be under-tuned there." if edges else
            "\n\nAdamW's best learning rate lies inside the grid at every width.")
    return "\n".join(lines) + note


def scaling_analysis(measured: Measured, p: Mapping[str, Any], out: Path) -> Analysis:
    """Fits, the compute ratio with its bootstrap interval, the claims, plots and report sections."""
    losses = {o: _losses(measured, o) for o in ("adamw", "muon")}
    fits = {o: fit_power_law(measured.compute, [np.mean(v) for v in losses[o]]) for o in losses}
    at = np.geomspace(min(measured.compute), max(measured.compute), 9)
    point, low, high = bootstrap_compute_ratio(measured.compute, losses["muon"], losses["adamw"], at)
    ratio = {"at": at.tolist(), "point": point.tolist(), "low": low.tolist(), "high": high.tolist()}
    entropy = entropy_comparison(measured)
    largest = len(measured.widths) - 1
    early = {o: early_max_logits(measured.arms[o][largest]) for o in ("adamw", "muon")}
    own = muon_at_its_own_lr(measured, fits["adamw"])
    checks = [_ratio_claim(ratio), _lr_claim(measured, own), _entropy_claim(entropy),
              _logit_claim(early, measured.widths[largest])]
    mid = len(at) // 2
    figures = [
        ("Final validation loss against training FLOPs, with the power-law fits",
         scaling_plots.plot_scaling(measured.compute, losses, fits, out / "scaling_law.png")),
        ("Equal-loss compute ratio C_Muon / C_AdamW with its 95 % bootstrap interval",
         scaling_plots.plot_compute_ratio(ratio, PAPER_RATIO, out / "compute_ratio.png")),
        ("Learning-rate sweeps (first seed)", scaling_plots.plot_sweeps(measured.sweeps, out / "lr_sweeps.png")),
        ("SVD entropy of the final weights per matrix group",
         scaling_plots.plot_entropy(entropy, out / "svd_entropy.png")),
        (f"Max attention logit per layer at d={measured.widths[largest]}",
         qk_clip_plots.plot_max_logits([r for o in ("adamw", "muon") for r in measured.arms[o][largest]], None,
                                       out / "max_logits.png")),
    ]
    results = {
        "widths": measured.widths, "compute_flops": measured.compute, "non_embedding_params": measured.params,
        "tokens": measured.tokens, "adamw_best_lr": measured.adamw_best_lr,
        "final_val_loss": {o: [asdict(mean_std(v)) for v in losses[o]] for o in losses},
        "fits": {o: {"a": f.a, "b": f.b} for o, f in fits.items()},
        "compute_ratio": ratio, "compute_ratio_mid": {"at": at[mid], "point": point[mid], "low": low[mid],
                                                     "high": high[mid]},
        "sweeps": {label: {str(lr): v for lr, v in s.items()} for label, s in measured.sweeps.items()},
        "svd_entropy": entropy, "early_max_logit": {o: {str(k): v for k, v in e.items()} for o, e in early.items()},
        "muon_at_its_own_lr": own, "claims_agree": [c.agrees for c in checks],
    }
    sections = [
        ("Headline", f"Muon, reusing AdamW's best learning rate and weight decay at every width, reaches AdamW's "
                     f"loss with **{point[mid]:.2f}×** its training FLOPs at C = {at[mid]:.2e} (95 % bootstrap "
                     f"interval over seeds {low[mid]:.2f}–{high[mid]:.2f}; paper ≈ {PAPER_RATIO}). Fits: AdamW "
                     f"L = {fits['adamw'].a:.3g}·C^{fits['adamw'].b:.4f}, Muon L = {fits['muon'].a:.3g}·"
                     f"C^{fits['muon'].b:.4f}."),
        ("Paper claim vs small-scale result", claim_section(checks)),
        ("Runs per width", _table(measured, losses)
         + f"\n\nBudget: {p['tokens_per_param']:g} tokens per non-embedding parameter; C = training FLOPs "
           "(forward + backward of the model, attention included; Newton–Schulz not counted, as in the paper)."),
        ("Learning-rate sweeps", _sweep_table(measured)),
        ("Muon at its own learning rate", _own_lr_section(own)),
    ]
    summary = (f"C_Muon / C_AdamW at equal loss = {point[mid]:.2f} [{low[mid]:.2f}, {high[mid]:.2f}] "
               f"(paper ≈ {PAPER_RATIO})")
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)
