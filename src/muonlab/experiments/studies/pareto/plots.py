"""Plots of the ``pareto`` study: devices against time to each target loss (one panel per corpus, a colour per
target, AdamW dashed and Muon solid, as Essential AI's Figures 1–2 draw it), and the Newton–Schulz overhead against
batch size per width with its FLOP predictions."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ....analysis.batch_size import OPTIMIZERS
from ....analysis.figures import finish_axes, new_figure, save_figure, shades

try:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
except ImportError as e:  # an optional extra
    raise ImportError("the pareto study's plots need matplotlib: pip install 'muonlab[plot]'") from e

__all__ = ["plot_frontiers", "plot_ns_overhead"]

_STYLE = {"adamw": ("--", "s"), "muon": ("-", "o")}
_NAMES = {"adamw": "AdamW", "muon": "Muon"}


def plot_frontiers(planes: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Per corpus: for each target loss and optimizer, (time to the target, devices) at each batch size that
    reached it, joined in batch order (``planes``: the pareto study's ``Plane`` per corpus)."""
    fig, axes = new_figure(len(planes), width=6.5, height=4.8)
    for ax, (corpus, plane) in zip(axes, planes.items()):
        for j, (target, color) in enumerate(zip(plane.targets, shades(len(plane.targets)))):
            for optimizer in OPTIMIZERS:
                points = plane.points(optimizer, j)
                if not points:
                    continue
                devices, seconds = zip(*points)
                linestyle, marker = _STYLE[optimizer]
                ax.plot(seconds, devices, color=color, linestyle=linestyle, marker=marker, markersize=4,
                        label=f"L = {target:.3f}" if optimizer == "muon" else None)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1, 2, 5 per decade, plainly
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale("log", base=2)
        finish_axes(ax, f"{corpus}: devices against time to loss (Muon solid, AdamW dashed)",
                    "modelled time to the target loss (s)", "devices")
    return save_figure(fig, path)


def plot_ns_overhead(grid: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Measured (t_opt,Muon − t_opt,AdamW) / t_fwd_bwd against batch tokens, one colour per width (non-positive
    measurements, timing noise, are not drawn on the log axis); the model's Newton–Schulz FLOPs over its training
    FLOPs dashed, 5·d/B dotted."""
    fig, (ax,) = new_figure(1, width=7.5, height=5.0)
    widths = sorted({int(r["width"]) for r in grid})
    for width, color in zip(widths, shades(len(widths), "plasma")):
        rows = sorted((r for r in grid if r["width"] == width), key=lambda r: r["batch_tokens"])
        tokens = np.array([r["batch_tokens"] for r in rows])
        measured = np.array([r["measured"] for r in rows])
        positive = measured > 0
        ax.plot(tokens[positive], measured[positive], color=color, marker="o", label=f"d={width}: measured")
        ax.plot(tokens, [r["flops"] for r in rows], color=color, linestyle="--", linewidth=1.0,
                label=f"d={width}: NS FLOPs / training FLOPs")
        ax.plot(tokens, [r["rule"] for r in rows], color=color, linestyle=":", linewidth=1.0, label=f"d={width}: 5·d/B")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    finish_axes(ax, "Muon's optimizer overhead per forward/backward time", "batch size B (tokens per step)",
                "(t_opt,Muon − t_opt,AdamW) / t_fwd_bwd", legend=False)
    ax.legend(fontsize="x-small", ncol=len(widths))
    return save_figure(fig, path)
