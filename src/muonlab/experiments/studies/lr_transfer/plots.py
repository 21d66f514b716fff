"""Plots of the ``lr-transfer`` study: the map against steps per run, and the sweeps of every group."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ....analysis.figures import finish_axes, log_axes, new_figure, save_figure
from ....analysis.runs import Run
from ...sweeps import OPTIMIZERS, cells_from
from . import plan as transfer_plan

__all__ = ["plot_map", "plot_sweeps"]

_MARKERS = ["o", "s", "^", "D", "v"]


def plot_map(rows: Sequence[Mapping[str, Any]], tolerance: float, path: str | os.PathLike) -> Path:
    """Left: η*_Muon / η*_AdamW against steps, one line per width. Right: the relative loss Muon loses at AdamW's
    lr, with its 95 % interval, and the rule's tolerance."""
    fig, (left, right) = new_figure(2, width=5.6, height=4.4)
    widths = sorted({r["width"] for r in rows})
    for i, w in enumerate(widths):
        mine = sorted((r for r in rows if r["width"] == w), key=lambda r: r["steps"])
        steps = [r["steps"] for r in mine]
        marker = _MARKERS[i % len(_MARKERS)]
        left.plot(steps, [r["lr_ratio"] for r in mine], marker=marker, label=f"d={w}")
        rel = [r["relative_penalty"] for r in mine]
        centre = np.array([x["point"] for x in rel]) * 100
        err = np.array([[x["point"] - x["low"] for x in rel], [x["high"] - x["point"] for x in rel]]) * 100
        right.errorbar(steps, centre, yerr=err, marker=marker, capsize=4, label=f"d={w}")
    left.axhline(1.0, color="gray", linestyle=":", linewidth=1)
    for ax in (left, right):
        log_axes(ax, x=True, x_ticks=sorted({r["steps"] for r in rows}))
    left.set_yscale("log", base=2)
    right.axhline(tolerance * 100, color="black", linestyle="--", linewidth=1, label=f"{tolerance:.0%} tolerance")
    right.axhline(0.0, color="gray", linestyle=":", linewidth=1)
    finish_axes(left, "Muon's optimal lr / AdamW's", "steps per run (fixed tokens)", "η*_Muon / η*_AdamW")
    finish_axes(right, "Loss Muon loses at AdamW's lr", "steps per run (fixed tokens)",
                "% of Muon's loss at its own lr")
    return save_figure(fig, path)


def plot_sweeps(p: Mapping[str, Any], runs: Iterable[Run], path: str | os.PathLike) -> Path:
    """One panel per (width, batch): each optimizer's mean final loss against lr; filled where every seed ran."""
    plan = transfer_plan.sweeps(p)
    cells = cells_from(runs, plan.group_of)
    groups = list(plan.groups)
    fig, axes = new_figure(len(groups), width=3.4, height=3.4)
    for ax, g in zip(axes, groups):
        for optimizer, color in zip(OPTIMIZERS, ("tab:blue", "tab:red")):
            points = sorted(cells.get((optimizer, g), {}).items())
            lrs = [lr for lr, _ in points]
            means = [float(np.mean(list(v.values()))) for _, v in points]
            full = [len(v) == len(p["seeds"]) for _, v in points]
            ax.plot(lrs, means, color=color, linewidth=1, label=optimizer)
            ax.scatter(lrs, means, color=[color if f else "white" for f in full], edgecolors=color, s=20, zorder=3)
        log_axes(ax, x=True)
        finish_axes(ax, f"d={g[0]}, {transfer_plan.steps(p, g[1]):,} steps", "peak lr",
                    "final val loss" if g == groups[0] else "", legend=g == groups[0])
    return save_figure(fig, path)
