"""Plots of the ``telescope`` study: each level's grid, the brute-force check, the L(d) fit, the cost ledger.

Grids are drawn as cells on log-scaled (lr, λ) axes, each cell spanning half a mesh step either side
of its point and coloured by its final validation loss (lower is darker), with the loss written in it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from ....analysis.figures import finish_axes, new_figure, save_figure

if TYPE_CHECKING:
    from ....analysis.fits import SaturatingPowerLaw
    from ...telescoping import Level

__all__ = ["plot_brute", "plot_ledger", "plot_levels", "plot_minima"]

_LR, _WD = "lr", "weight_decay"


def _edges(values: Sequence[float], spacing: float) -> np.ndarray:
    """Cell edges of log-spaced ``values``: half a step (×√spacing) either side of each value."""
    values = np.asarray(sorted(values), dtype=float)
    return np.concatenate([values / math.sqrt(spacing), values[-1:] * math.sqrt(spacing)])


def _log_ticks(axis, values: Sequence[float]) -> None:
    """Ticks at the grid's values only, labelled with three significant digits."""
    axis.set_major_locator(FixedLocator(list(values)))
    axis.set_major_formatter(FixedFormatter([f"{v:.3g}" for v in values]))
    axis.set_minor_locator(NullLocator())


def _draw_grid(ax, level: Level, losses: Sequence[float]):
    """The level's cells coloured by loss with the loss written in the lower half of each (the upper half is
    left for markers, see ``_marker_at``); returns the colour mesh."""
    lrs = sorted({p[_LR] for p in level.points})
    wds = sorted({p[_WD] for p in level.points})
    table = np.full((len(wds), len(lrs)), np.nan)
    for point, loss in zip(level.points, losses):
        table[wds.index(point[_WD]), lrs.index(point[_LR])] = loss
    masked = np.ma.masked_invalid(table)
    mesh = ax.pcolormesh(_edges(lrs, level.spacing[_LR]), _edges(wds, level.spacing[_WD]), masked, cmap="viridis",
                         shading="flat")
    finite = table[np.isfinite(table)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    size = "x-small" if len(lrs) > 4 else "small"
    below = level.spacing[_WD] ** -0.2
    for (row, col), loss in np.ndenumerate(table):
        text = f"{loss:.3f}" if math.isfinite(loss) else "diverged"
        ax.text(lrs[col], wds[row] * below, text, ha="center", va="center", fontsize=size,
                color="white" if not math.isfinite(loss) or loss < middle else "black")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_ticks(ax.xaxis, lrs)
    _log_ticks(ax.yaxis, wds)
    ax.grid(False)
    return mesh


def _marker_at(point: Mapping[str, float], level: Level) -> tuple[float, float]:
    """Where a marker for ``point`` goes: the upper half of its cell, clear of the loss written there."""
    return point[_LR], point[_WD] * level.spacing[_WD] ** 0.22


def _outline(ax, point: Mapping[str, float], factor: Mapping[str, float], **style) -> None:
    """A rectangle from ``point / factor`` to ``point · factor`` in both hyperparameters."""
    x = [point[_LR] / factor[_LR], point[_LR] * factor[_LR]]
    y = [point[_WD] / factor[_WD], point[_WD] * factor[_WD]]
    ax.plot([x[0], x[1], x[1], x[0], x[0]], [y[0], y[0], y[1], y[1], y[0]], **style)


def _best(level: Level, losses: Sequence[float]) -> Mapping[str, float]:
    finite = [(loss, i) for i, loss in enumerate(losses) if math.isfinite(loss)]
    return level.points[min(finite)[1]]


def plot_levels(levels: Sequence[tuple[Level, Sequence[float]]], path: str | os.PathLike) -> Path:
    """One panel per calibration level: its grid of losses, its best point (★) and its centre (+)."""
    fig, axes = new_figure(len(levels), width=4.8, height=4.4)
    for ax, (level, losses) in zip(axes, levels):
        mesh = _draw_grid(ax, level, losses)
        fig.colorbar(mesh, ax=ax, label="final validation loss", shrink=0.85)
        ax.plot(*_marker_at(_best(level, losses), level), marker="*", markersize=15, color="tab:red",
                markeredgecolor="white", linestyle="none")
        ax.plot(*_marker_at(level.center, level), marker="+", markersize=13, color="black", markeredgewidth=2,
                linestyle="none")
        n = round(len(level.points) ** 0.5)
        finish_axes(ax, f"L{level.index}: d={level.width}, {n}×{n}, step ×{level.spacing[_LR]:.3g}",
                    "peak learning rate", "weight decay λ", legend=False)
    fig.suptitle("Telescoping levels: ★ the level's best, + its centre (the previous level's best)")
    return save_figure(fig, path)


def plot_brute(grid: Level, losses: Sequence[float], path_points: Sequence[Mapping[str, float]],
               refined: Mapping[str, float], fine: Mapping[str, float], checks: Mapping[str, Sequence[float]],
               path: str | os.PathLike) -> Path:
    """Left: the brute-force grid, the telescope's per-level best points (the last is its choice, ★), the
    grid's best cell (○), its refined optimum (×) and ±1 fine cell around it (dashed). Right: the losses
    of the fresh seeds at the telescoped choice and at the brute-force best point, mean ± std."""
    fig, (ax, noise) = new_figure(2, width=5.8, height=4.8)
    mesh = _draw_grid(ax, grid, losses)
    fig.colorbar(mesh, ax=ax, label="final validation loss", shrink=0.85)
    best = _best(grid, losses)
    _outline(ax, best, {name: math.sqrt(grid.spacing[name]) for name in (_LR, _WD)}, color="white", linestyle="-",
             linewidth=2.5, label="brute-force best cell")
    ax.plot(refined[_LR], refined[_WD], marker="x", markersize=11, color="white", markeredgewidth=2,
            linestyle="none", label="refined brute-force optimum")
    _outline(ax, refined, fine, color="white", linestyle="--", linewidth=1.2, label="±1 fine cell")
    ax.plot([q[_LR] for q in path_points], [q[_WD] for q in path_points], color="tab:red", marker="o", markersize=4,
            linewidth=1.2, label="telescope: best per level")
    ax.plot(path_points[-1][_LR], path_points[-1][_WD], marker="*", markersize=18, color="tab:red",
            markeredgecolor="white", linestyle="none", label="telescoped choice")
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, facecolor="0.6")
    finish_axes(ax, f"Brute force at d={grid.width} (seed 0)", "peak learning rate", "weight decay λ", legend=False)
    labels = {"telescoped": "telescoped choice", "brute": "brute-force best"}
    for i, (arm, values) in enumerate(checks.items()):
        color = "tab:red" if arm == "telescoped" else "tab:blue"
        values = [v for v in values if math.isfinite(v)]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        noise.errorbar([i], [np.mean(values)], yerr=[std], marker="s", color=color, capsize=8, markersize=8)
        noise.plot([i] * len(values), values, linestyle="none", marker=".", color=color, alpha=0.6, markersize=9)
    noise.set_xticks(range(len(checks)), [labels.get(a, a) for a in checks])
    noise.set_xlim(-0.7, len(checks) - 0.3)
    finish_axes(noise, f"Fresh seeds at d={grid.width}: mean ± std", "", "final validation loss", legend=False)
    return save_figure(fig, path)


def plot_minima(widths: Sequence[int], minima: Sequence[float], fit: SaturatingPowerLaw,
                level_losses: Sequence[Sequence[float]], path: str | os.PathLike) -> Path:
    """Left: the minimum loss per level and the final run against width (log x), the L(d) fit. Right: every
    level's losses (one dot per run) with its range, at its width, and the final run."""
    fig, (ax, spread) = new_figure(2, width=5.6, height=4.4)
    line = np.geomspace(min(widths) / 1.3, max(widths) * 1.3, 100)
    ax.plot(widths[:-1], minima[:-1], marker="o", linestyle="none", color="tab:red", label="minimum of each level")
    ax.plot(widths[-1:], minima[-1:], marker="*", markersize=14, linestyle="none", color="tab:red",
            label="final run (telescoped choice)")
    ax.plot(line, fit(line), color="black", linewidth=1,
            label=f"L(d) = {fit.A:.3g}/d^{fit.alpha:.3f} + {fit.E:.3f}, R² {fit.r2:.3f}")
    ax.axhline(fit.E, color="gray", linestyle=":", linewidth=1, label="E (irreducible)")
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, widths)
    finish_axes(ax, "Per-level minimum loss against width", "width d_model", "final validation loss")
    for width, losses in zip(widths, level_losses):
        finite = [v for v in losses if math.isfinite(v)]
        spread.plot([width] * len(finite), finite, linestyle="none", marker="o", color="tab:blue", alpha=0.45)
        spread.vlines(width, min(finite), max(finite), color="tab:blue", linewidth=2)
        spread.annotate(f"spread {max(finite) - min(finite):.3f}", (width, max(finite)), textcoords="offset points",
                        xytext=(6, 0), fontsize="x-small", va="center")
    spread.plot(widths[-1:], minima[-1:], marker="*", markersize=14, linestyle="none", color="tab:red",
                label="final run")
    spread.set_xscale("log")
    _log_ticks(spread.xaxis, widths)
    finish_axes(spread, "Losses of every level (range: the loss spread)", "width d_model", "final validation loss")
    return save_figure(fig, path)


def plot_ledger(book: Mapping[str, Any], measured: Mapping[str, Any], brute_flops: float,
                path: str | os.PathLike) -> Path:
    """Per level and for the final run, FLOPs (left) and measured training time (right), next to the
    telescope's total, a full grid at the final width (hatched: level 0's grid size × the final run) and
    the brute-force check grid; log y, each bar labelled with its value."""
    fig, (flops, wall) = new_figure(2, width=6.2, height=4.6)
    labels = [f"L{r['level']}\nd={r['width']}\n{r['runs']} run{'s' if r['runs'] != 1 else ''}" for r in book["levels"]]
    labels += ["final"]
    labels += ["telescope\ntotal", "full grid\nat final", "brute force\n(check)"]
    colors = ["tab:red"] * len(book["levels"]) + ["darkred", "tab:orange", "white", "tab:blue"]
    columns = (
        (flops, [r["cost"] for r in book["levels"]] + [book["final_cost"], book["total_cost"],
                                                        book["full_grid_cost_at_final_width"], brute_flops],
         "training FLOPs", "{:.2g}"),
        (wall, [*measured["levels_s"], measured["final_s"], measured["search_s"] + measured["final_s"],
                measured["full_grid_at_final_s"], measured["brute_s"]], "training wall time (s)", "{:.0f}"),
    )
    for ax, values, unit, form in columns:
        bars = ax.bar(range(len(values)), values, color=colors, edgecolor="gray")
        bars[-2].set_hatch("//")
        ax.bar_label(bars, [form.format(v) for v in values], fontsize="x-small")
        ax.set_xticks(range(len(labels)), labels, fontsize="x-small")
        ax.set_yscale("log")
        finish_axes(ax, f"Cost ledger: {unit}", "", unit, legend=False)
    return save_figure(fig, path)
