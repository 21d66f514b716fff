"""Plots of the ``variants`` study: every arm's sweep per model, and each arm's difference to Moonlight Muon."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ....analysis.figures import finish_axes, log_axes, new_figure, save_figure

__all__ = ["plot_differences", "plot_sweeps"]

_COLORS = {"muon": "tab:red", "perhead": "tab:orange", "normuon": "tab:green", "cautious": "tab:purple",
           "all3": "tab:brown", "adamw": "tab:blue"}


def plot_sweeps(cells: Mapping[tuple[str, str], Mapping[float, Mapping[int, float]]], models: Sequence[str],
                seeds: Sequence[int], path: str | os.PathLike) -> Path:
    """One panel per model: each arm's mean final loss against its lr; filled where every seed ran."""
    fig, axes = new_figure(len(models), width=4.2, height=3.8)
    for ax, model in zip(axes, models):
        for arm, color in _COLORS.items():
            points = sorted(cells.get((arm, model), {}).items())
            lrs = [lr for lr, _ in points]
            means = [float(np.mean(list(v.values()))) for _, v in points]
            full = [set(seeds) <= set(v) for _, v in points]
            ax.plot(lrs, means, color=color, linewidth=1, label=arm)
            ax.scatter(lrs, means, color=[color if f else "white" for f in full], edgecolors=color, s=20, zorder=3)
        log_axes(ax, x=True)
        ax.text(0.02, 0.02, "filled: mean over every seed; hollow: first seed only", transform=ax.transAxes,
                fontsize=7, color="dimgray")
        finish_axes(ax, model, "peak lr", "final val loss" if model == models[0] else "", legend=model == models[0])
    return save_figure(fig, path)


def plot_differences(models: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """One panel per model: each arm − Muon at their chosen lrs, with the paired t interval (thick) and the
    interval that includes the lr choice (thin)."""
    fig, axes = new_figure(len(models), width=4.2, height=3.8)
    for ax, (model, result) in zip(axes, models.items()):
        arms = list(result["differences"])
        for i, arm in enumerate(arms):
            d = result["differences"][arm]
            t, s = d["paired"], d["selection"]
            ax.plot([s["low"], s["high"]], [i, i], color=_COLORS.get(arm, "black"), linewidth=1)
            if t["low"] is not None:
                ax.plot([t["low"], t["high"]], [i, i], color=_COLORS.get(arm, "black"), linewidth=4, alpha=0.6)
            ax.scatter([t["mean"]], [i], color=_COLORS.get(arm, "black"), zorder=3)
        ax.axvline(0.0, color="gray", linestyle=":", linewidth=1)
        ax.plot([], [], color="gray", linewidth=4, alpha=0.6, label="95 % paired t over seeds")
        ax.plot([], [], color="gray", linewidth=1, label="95 % with the lr choice")
        ax.set_yticks(range(len(arms)), arms)
        finish_axes(ax, model, "final val loss − Muon's (nats)", "", legend=model == next(iter(models)))
    return save_figure(fig, path)
