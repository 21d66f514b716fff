"""Plots of the ``scaling`` study: the scaling law with its fits, the compute ratios, the sweeps, SVD entropy,
max logits. AdamW blue; Muon at AdamW's lr red; Muon at its own lr dark red.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ....analysis.figures import finish_axes, log_axes, new_figure, save_figure
from ....analysis.fits import fit_power_law
from ....analysis.logits import plot_max_logits
from ....analysis.runs import Run

if TYPE_CHECKING:
    from .measured import Measured

__all__ = ["plot_compute_ratio", "plot_entropy", "plot_logits", "plot_scaling", "plot_sweeps"]

_ARMS = {"adamw": ("tab:blue", "AdamW at its best lr"), "muon_shared": ("tab:red", "Muon at AdamW's lr and wd"),
         "muon_own": ("darkred", "Muon at its own best lr")}


def _arm_losses(m: Measured, ch: Mapping[str, Any], arm: str) -> list[list[float]]:
    out = []
    for row in ch["per_width"]:
        optimizer, lr = ("adamw", row["adamw"]["lr"]) if arm == "adamw" else (
            ("muon", row["adamw"]["lr"]) if arm == "muon_shared" else ("muon", row["muon"]["lr"]))
        out.append([m.cells[(optimizer, row["width"])][lr][s] for s in m.seeds])
    return out


def plot_scaling(m: Measured, ch: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Final validation loss against training FLOPs (log x): seeds faint, mean ± std, the power-law fit per arm."""
    fig, (ax,) = new_figure(1, width=8.0, height=5.0)
    c = np.asarray(m.compute, dtype=float)
    line = np.geomspace(c.min() / 1.3, c.max() * 1.3, 100)
    for arm, (color, label) in _ARMS.items():
        per_width = _arm_losses(m, ch, arm)
        for ci, values in zip(c, per_width):
            ax.plot([ci] * len(values), values, linestyle="none", marker=".", color=color, alpha=0.35)
        means = np.array([np.mean(v) for v in per_width])
        stds = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_width])
        fit = fit_power_law(c, means)
        ax.errorbar(c, means, yerr=stds, linestyle="none", marker="o", color=color, capsize=4, label=label)
        ax.plot(line, fit(line), color=color, linewidth=1.2, label=f"fit L = {fit.a:.3g}·C^{fit.b:.4f}")
    log_axes(ax, x=True)  # the loss axis linear: its range spans no decade to label
    finish_axes(ax, "Compute-optimal runs: final validation loss against training FLOPs", "training FLOPs C",
                "final validation loss (nats/token)", legend=False)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def plot_compute_ratio(ratio: Mapping[str, Any], paper: float, path: str | os.PathLike) -> Path:
    """C_Muon / C_AdamW at equal loss against C for both Muon arms, 95 % bands, the paper's value and parity."""
    fig, (ax,) = new_figure(1, width=8.0, height=5.2)
    at = np.asarray(ratio["at"])
    for name, arm in (("ratio_at_adamw_lr", "muon_shared"), ("ratio_at_own_lr", "muon_own")):
        color, label = _ARMS[arm]
        values = ratio[name]
        ax.fill_between(at, [v["low"] for v in values], [v["high"] for v in values], color=color, alpha=0.15,
                        linewidth=0)
        ax.plot(at, [v["point"] for v in values], color=color, marker="o", markersize=3,
                label=f"{label} (band: 95 % interval, lr choice included)")
    ax.axhline(paper, color="black", linestyle="--", linewidth=1, label=f"Moonlight ≈ {paper}")
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1, label="parity")
    log_axes(ax, x=True)
    ax.set_ylim(0.0, max(1.1, max(v["high"] for name in ("ratio_at_adamw_lr", "ratio_at_own_lr")
                                  for v in ratio[name]) * 1.05))
    finish_axes(ax, "Compute Muon needs for AdamW's loss, relative to AdamW", "AdamW's training FLOPs C",
                "C_Muon / C_AdamW", legend=False)
    ax.legend(fontsize="small", loc="lower left")
    return save_figure(fig, path)


def plot_sweeps(m: Measured, path: str | os.PathLike) -> Path:
    """One panel per width: each optimizer's mean final loss against lr; filled markers where every seed ran."""
    fig, axes = new_figure(len(m.widths), width=4.2, height=4.0)
    for ax, w in zip(axes, m.widths):
        for optimizer, color in (("adamw", "tab:blue"), ("muon", "tab:red")):
            cells = sorted(m.cells[(optimizer, w)].items())
            lrs = [lr for lr, _ in cells]
            means = [np.mean(list(v.values())) for _, v in cells]
            ax.plot(lrs, means, color=color, linewidth=1, label=optimizer)
            full = [len(v) == len(m.seeds) for _, v in cells]
            ax.scatter([lr for lr, f in zip(lrs, full) if f], [x for x, f in zip(means, full) if f], color=color, s=22)
            ax.scatter([lr for lr, f in zip(lrs, full) if not f], [x for x, f in zip(means, full) if not f],
                       facecolors="none", edgecolors=color, s=22)
        log_axes(ax, x=True)
        finish_axes(ax, f"d={w}", "peak learning rate", "final validation loss" if w == m.widths[0] else "")
    return save_figure(fig, path)


def plot_entropy(entropy: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Per matrix group: the initial weights', AdamW's and Muon's mean SVD entropy."""
    groups = entropy["groups"]
    if not groups:
        return None
    fig, (ax,) = new_figure(1, width=7.0, height=4.4)
    x = np.arange(len(groups))
    for offset, arm, color in ((-0.27, "initial", "tab:gray"), (0.0, "adamw", "tab:blue"), (0.27, "muon", "tab:red")):
        ax.bar(x + offset, [groups[g].get(arm, np.nan) for g in groups], width=0.27, color=color, alpha=0.75,
               label={"initial": "initial weights", "adamw": "AdamW", "muon": "Muon (AdamW's lr)"}[arm])
    ax.set_xticks(x, list(groups))
    low = min(v for g in groups.values() for v in g.values())
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    title = "SVD entropy of the weights (higher = flatter spectrum)"
    if entropy["share"] is not None:
        title += f"\nfinal: Muon higher than AdamW for {entropy['share'] * 100:.0f} % of matrices"
    finish_axes(ax, title, "matrix group (Moonlight Figure 4)", "mean SVD entropy")
    return save_figure(fig, path)


def plot_logits(runs: Sequence[Run], path: str | os.PathLike) -> Path | None:
    """Max attention logit over training per layer (``muonlab.analysis.logits.plot_max_logits``)."""
    return plot_max_logits(list(runs), None, path) if runs else None
