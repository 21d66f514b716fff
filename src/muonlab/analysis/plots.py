"""Plots of run folders, written as PNG files (matplotlib's Agg renderer, no display needed).

Every function takes loaded ``Run`` objects and an output path, writes one 150-dpi PNG with a
title, labelled axes, a legend and a grid, and returns the path — or None, writing nothing, when
no run logged the metric it plots. Colours follow the optimizer (Muon red, AdamW blue) so the
figures read the same way across a report.

Needs matplotlib (``pip install 'muonlab[plot]'``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter
except ImportError as e:  # an optional extra
    raise ImportError("muonlab.analysis.plots needs matplotlib: pip install 'muonlab[plot]'") from e

from muonlab.analysis.runs import Run, group_by_config

DPI = 150
# The RMS AdamW's updates settle at, which Moonlight's Muon scale (0.2 * sqrt(max(A, B))) matches.
ADAMW_TYPICAL_RMS = 0.2
_OPTIMIZER_COLORS = {"muon": "tab:red", "adamw": "tab:blue"}
_OTHER_COLORS = ["tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:gray"]
_LINESTYLES = ["-", "--", ":", "-."]
_VAL_LOSS_LABEL = "validation loss (nats/token)"


def _colors(runs: Sequence[Run]) -> dict[str, str]:
    others = itertools.cycle(_OTHER_COLORS)
    names = sorted({r.optimizer for r in runs})
    return {name: _OPTIMIZER_COLORS.get(name) or next(others) for name in names}


def _styles(runs: Sequence[Run]) -> dict[str, tuple[str, str]]:
    """Run name -> (colour of its optimizer, a line style that differs between runs of one optimizer)."""
    colors, seen, styles = _colors(runs), {}, {}
    for run in runs:
        i = seen[run.optimizer] = seen.get(run.optimizer, -1) + 1
        styles[run.name] = (colors[run.optimizer], _LINESTYLES[i % len(_LINESTYLES)])
    return styles


def _new_axes(title: str, xlabel: str, ylabel: str, x_is_tokens: bool = False):
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if x_is_tokens:
        ax.xaxis.set_major_formatter(EngFormatter())  # 20k, 1.5M, 2G tokens
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: str | os.PathLike, handles: list | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.axes[0].legend(handles=handles, fontsize="small")
    fig.savefig(path, dpi=DPI)
    return path


def plot_val_loss(runs: Sequence[Run], path: str | os.PathLike, x: str = "tokens") -> Path | None:
    """Validation loss of each run against ``x``: ``"tokens"`` (data efficiency) or ``"wall_s"`` (time)."""
    xlabels = {"tokens": "training tokens", "wall_s": "wall-clock time (s)"}
    if x not in xlabels:
        raise ValueError(f"x must be one of {', '.join(xlabels)}, got {x!r}")
    what = "tokens" if x == "tokens" else "wall-clock time"
    fig, ax = _new_axes(f"Validation loss vs {what}", xlabels[x], _VAL_LOSS_LABEL, x_is_tokens=x == "tokens")
    styles = _styles(runs)
    plotted = False
    for run in runs:
        xs, ys = run.xy(x, "val_loss")
        if len(xs):
            color, ls = styles[run.name]
            ax.plot(xs, ys, color=color, linestyle=ls, marker="o", markersize=3, label=f"{run.name} ({run.optimizer})")
            plotted = True
    return _save(fig, path) if plotted else None


def plot_update_rms(runs: Sequence[Run], path: str | os.PathLike) -> Path | None:
    """Update RMS over steps: ``update_rms/muon`` (solid) and ``update_rms/adamw`` (dashed) per run.

    With Moonlight's scale both Muon's matrix updates and AdamW's updates sit near 0.2, which is
    why AdamW's learning rate and weight decay carry over; the dotted line marks 0.2.
    """
    title = "Update RMS per step (Moonlight's scale targets ~0.2)"
    fig, ax = _new_axes(title, "optimizer step", "update RMS (per element)")
    colors = _colors(runs)
    parts = {"update_rms/muon": ("-", "Muon-routed params"), "update_rms/adamw": ("--", "AdamW-routed params")}
    used_optimizers, used_parts, top = set(), set(), ADAMW_TYPICAL_RMS
    for run in runs:
        for key, (ls, _) in parts.items():
            steps, _, values = run.series(key)
            if len(steps):
                ax.plot(steps, values, color=colors[run.optimizer], linestyle=ls, alpha=0.7)
                used_optimizers.add(run.optimizer)
                used_parts.add(key)
                top = max(top, float(np.nanmax(values)))
    if not used_parts:
        return None
    ax.axhline(ADAMW_TYPICAL_RMS, color="black", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1.5 * top)  # from zero, so "near 0.2" reads as near 0.2, not as noise blown up
    # One legend entry per optimizer (colour) and per param kind (line style), not per run.
    handles = [Line2D([], [], color=colors[o], label=f"{o} runs") for o in sorted(used_optimizers)]
    for key, (ls, label) in parts.items():
        if key in used_parts:
            handles.append(Line2D([], [], color="gray", linestyle=ls, label=label))
    handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1, label=f"{ADAMW_TYPICAL_RMS}"))
    return _save(fig, path, handles)


def plot_val_loss_by_optimizer(runs: Sequence[Run], path: str | os.PathLike) -> Path | None:
    """Validation loss vs tokens per config group: mean over seeds, shaded mean ± std band.

    Runs that share their config apart from the seed form one group; the band uses the sample
    standard deviation (ddof=1) at the eval steps that every run of the group logged. A group
    with a single run is drawn as a plain line.
    """
    title = "Validation loss by optimizer (mean ± std over seeds)"
    fig, ax = _new_axes(title, "training tokens", _VAL_LOSS_LABEL, x_is_tokens=True)
    colors = _colors(runs)
    seen: dict[str, int] = {}
    plotted = False
    for group in group_by_config(runs):
        by_step = [{int(s): (t, v) for s, t, v in zip(*r.series("val_loss"))} for r in group]
        common = sorted(set.intersection(*(set(d) for d in by_step)))
        if not common:
            continue
        tokens = np.array([by_step[0][s][0] for s in common])
        values = np.array([[d[s][1] for s in common] for d in by_step])  # [runs, eval steps]
        mean = values.mean(axis=0)
        first = group[0]
        i = seen[first.optimizer] = seen.get(first.optimizer, -1) + 1
        color, ls = colors[first.optimizer], _LINESTYLES[i % len(_LINESTYLES)]
        label = f"{first.optimizer} lr={first.config.get('lr', '?')} ({len(group)} seed{'s' if len(group) > 1 else ''})"
        ax.plot(tokens, mean, color=color, linestyle=ls, label=label)
        if len(group) > 1:
            std = values.std(axis=0, ddof=1)
            ax.fill_between(tokens, mean - std, mean + std, color=color, alpha=0.2)
        plotted = True
    return _save(fig, path) if plotted else None


def plot_svd_entropy_groups(runs: Sequence[Run], path: str | os.PathLike) -> Path | None:
    """SVD entropy per matrix group over training, one panel per Moonlight Figure-4 group.

    Each point is a row's ``svd_entropy/*`` values macro-averaged per group
    (``muonlab.analysis.spectra.group_means``); one line per run, coloured by optimizer. Groups no
    run has (e.g. Router in a dense model) get no panel.
    """
    from muonlab.analysis.spectra import MATRIX_GROUPS, group_means

    styles = _styles(runs)
    curves: dict[str, list[tuple[Run, list[int], list[float]]]] = {}
    for run in runs:
        per_group: dict[str, tuple[list[int], list[float]]] = {}
        for row in sorted(run.rows, key=lambda r: r["step"]):
            values = {k: v for k, v in row.items() if k.startswith("svd_entropy/")}
            for group, mean in group_means(values).items():
                steps, means = per_group.setdefault(group, ([], []))
                steps.append(row["step"])
                means.append(mean)
        for group, (steps, means) in per_group.items():
            curves.setdefault(group, []).append((run, steps, means))
    groups = [g for g in MATRIX_GROUPS if g in curves]
    if not groups:
        return None
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle("SVD entropy by matrix type (macro-averaged over layers; higher = flatter spectrum)")
    for i, group in enumerate(groups):
        ax = fig.add_subplot(rows, cols, i + 1)
        for run, steps, means in curves[group]:
            color, ls = styles[run.name]
            ax.plot(steps, means, color=color, linestyle=ls, marker="o", markersize=3,
                    label=f"{run.name} ({run.optimizer})")
        ax.set_title(group)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("SVD entropy")
        ax.grid(True, alpha=0.3)
    fig.axes[0].legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
