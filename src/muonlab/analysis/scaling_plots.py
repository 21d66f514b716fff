"""Plots of the ``scaling`` study: the scaling law with its fits, the compute ratio, the sweeps, SVD entropy.

Muon red, AdamW blue, as in every muonlab figure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from muonlab.analysis.figures import finish_axes, new_figure, plot_lr_sweeps, save_figure
from muonlab.analysis.fits import PowerLaw

__all__ = ["plot_compute_ratio", "plot_entropy", "plot_scaling", "plot_sweeps"]

_COLORS = {"adamw": "tab:blue", "muon": "tab:red"}
_NAMES = {"adamw": "AdamW (tuned lr)", "muon": "Muon (AdamW's lr and wd)"}


def plot_scaling(compute: Sequence[float], losses: Mapping[str, Sequence[Sequence[float]]],
                 fits: Mapping[str, PowerLaw], path: str | os.PathLike) -> Path:
    """Final validation loss against training FLOPs (log-log): each seed faint, mean ± std, the fitted power law."""
    fig, (ax,) = new_figure(1, width=7.5, height=5.0)
    c = np.asarray(compute, dtype=float)
    line = np.geomspace(c.min() / 1.3, c.max() * 1.3, 100)
    for optimizer, per_size in losses.items():
        color = _COLORS.get(optimizer, "tab:gray")
        for ci, values in zip(c, per_size):
            ax.plot([ci] * len(values), values, linestyle="none", marker=".", color=color, alpha=0.35)
        means = np.array([np.mean(v) for v in per_size])
        stds = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_size])
        fit = fits[optimizer]
        ax.errorbar(c, means, yerr=stds, linestyle="none", marker="o", color=color, capsize=4,
                    label=f"{_NAMES.get(optimizer, optimizer)}: mean ± std over seeds")
        ax.plot(line, fit(line), color=color, linewidth=1.2, label=f"fit L = {fit.a:.3g}·C^{fit.b:.4f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish_axes(ax, "Compute-optimal runs: final validation loss against training FLOPs", "training FLOPs C",
                "final validation loss (nats/token)")
    return save_figure(fig, path)


def plot_compute_ratio(ratio: Mapping[str, Any], paper: float, path: str | os.PathLike) -> Path:
    """C_Muon / C_AdamW at equal loss against C, the 95 % bootstrap band, the paper's value and parity."""
    fig, (ax,) = new_figure(1, width=7.0, height=4.4)
    at, point = np.asarray(ratio["at"]), np.asarray(ratio["point"])
    ax.fill_between(at, ratio["low"], ratio["high"], color="tab:red", alpha=0.2, linewidth=0,
                    label="95 % bootstrap interval over seeds")
    ax.plot(at, point, color="tab:red", marker="o", markersize=3, label="C_Muon / C_AdamW (fits to the seed means)")
    ax.axhline(paper, color="black", linestyle="--", linewidth=1, label=f"Moonlight ≈ {paper}")
    ax.axhline(1.0, color="gray", linestyle=":", linewidth=1, label="parity")
    ax.set_xscale("log")
    finish_axes(ax, "Compute Muon needs for AdamW's loss, relative to AdamW", "AdamW's training FLOPs C",
                "C_Muon / C_AdamW")
    return save_figure(fig, path)


def plot_sweeps(sweeps: Mapping[str, Mapping[float, float | None]], path: str | os.PathLike) -> Path | None:
    """Each sweep's final loss against learning rate: AdamW's dashed blue, Muon's solid red, a marker per width."""
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    widths = sorted({label.rsplit("=", 1)[-1] for label in sweeps})

    def look(label: str) -> tuple[str, str, str]:
        marker = markers[widths.index(label.rsplit("=", 1)[-1]) % len(markers)]
        return ("tab:red", "-", marker) if label.startswith("Muon") else ("tab:blue", "--", marker)

    return plot_lr_sweeps(sweeps, path, "Learning-rate sweeps (first seed; circled: best)", look)


def plot_entropy(entropy: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Per matrix group, each optimizer's mean SVD entropy of the final weights (over widths and seeds)."""
    groups = entropy["groups"]
    if not groups:
        return None
    fig, (ax,) = new_figure(1, width=7.0, height=4.4)
    x = np.arange(len(groups))
    for offset, optimizer in ((-0.2, "adamw"), (0.2, "muon")):
        values = [groups[g].get(optimizer, np.nan) for g in groups]
        ax.bar(x + offset, values, width=0.4, color=_COLORS[optimizer], alpha=0.7, label=optimizer)
    ax.set_xticks(x, list(groups))
    low = min(v for g in groups.values() for v in g.values())
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    share = entropy["muon_higher_fraction"]
    title = "SVD entropy of the final weights (higher = flatter spectrum)"
    if share is not None:
        title += f"\nMuon higher for {share * 100:.0f} % of matrices"
    finish_axes(ax, title, "matrix group (Moonlight Figure 4)", "mean SVD entropy")
    return save_figure(fig, path)
