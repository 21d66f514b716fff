"""Plots of the ``batch-size`` study: token ratio, extra tokens and steps to loss against batch size, loss curves,
learning-rate sweeps. One panel per corpus; one colour per target loss (dark: high loss, early; light: low loss,
late) or per batch size; Muon solid, AdamW dashed."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ....analysis.batch_size import OPTIMIZERS, ArmFits, CorpusTokens
from ....analysis.figures import finish_axes, new_figure, plot_lr_sweeps, save_figure, shades

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as e:  # an optional extra
    raise ImportError("the batch-size study's plots need matplotlib: pip install 'muonlab[plot]'") from e

__all__ = ["plot_extra_tokens", "plot_loss_curves", "plot_steps_to_loss", "plot_sweeps", "plot_token_ratio"]

PAPER_RATIO_BAND = (1 / 0.90, 1 / 0.85)
"""R for "10–15 % fewer tokens" (Essential AI §5): 1/(1 − 0.10) to 1/(1 − 0.15)."""
_STYLE = {"adamw": "--", "muon": "-"}
_COLORS = {"adamw": "tab:blue", "muon": "tab:red"}


def _log2_batches(ax) -> None:
    ax.set_xscale("log", base=2)


def _against_batch(tables: Mapping[str, CorpusTokens], values: Mapping[str, list[list]], path, ylabel: str,
                   title: str, reference) -> Path:
    """One panel per corpus: mean ± std over seeds of a per-(batch, target) value against batch size (a None
    cell, where a seed missed the target, is left out)."""
    fig, axes = new_figure(len(tables), width=6.0, height=4.4)
    for ax, (corpus, table) in zip(axes, tables.items()):
        reference(ax)
        for j, (target, color) in enumerate(zip(table.targets, shades(len(table.targets)))):
            points = [(b, row[j]) for b, row in zip(table.batches, values[corpus]) if row[j] is not None]
            if not points:
                continue
            ax.errorbar([b for b, _ in points], [c.mean for _, c in points], yerr=[c.std or 0.0 for _, c in points],
                        color=color, marker="o", markersize=4, capsize=3, label=f"L = {target:.3f}")
        _log2_batches(ax)
        finish_axes(ax, f"{title}, {corpus}", "batch size B (tokens per step)", ylabel)
    return save_figure(fig, path)


def plot_token_ratio(tables: Mapping[str, CorpusTokens], ratios: Mapping[str, list[list]],
                     path: str | os.PathLike) -> Path:
    """R_L(B) against B per target (error bars: seed std where there are several seeds), parity and the paper's
    10–15 % band."""

    def reference(ax):
        ax.axhspan(*PAPER_RATIO_BAND, color="gray", alpha=0.2, label="paper: 10–15 % fewer tokens")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")

    return _against_batch(tables, ratios, path, "R_L(B) = T_AdamW / T_Muon", "Token ratio", reference)


def plot_extra_tokens(tables: Mapping[str, CorpusTokens], extras: Mapping[str, list[list]],
                      path: str | os.PathLike) -> Path:
    """T_AdamW − T_Muon against B per target, and zero."""
    return _against_batch(tables, extras, path, "extra tokens T_AdamW − T_Muon", "Extra tokens AdamW needs",
                          lambda ax: ax.axhline(0.0, color="black", linewidth=0.8, linestyle=":"))


def plot_steps_to_loss(tables: Mapping[str, CorpusTokens], fits: Mapping[str, Mapping[str, ArmFits]],
                       path: str | os.PathLike) -> Path:
    """Per corpus and optimizer, seed-mean steps to each target against B (log-log; a batch size that missed the
    target is not drawn) with the App. F fit and its knee B* (open circle)."""
    fig = Figure(figsize=(5.6 * len(OPTIMIZERS), 4.4 * len(tables)), layout="constrained")
    FigureCanvasAgg(fig)
    panels = [(c, o) for c in tables for o in OPTIMIZERS]
    for k, (corpus, optimizer) in enumerate(panels):
        ax = fig.add_subplot(len(tables), len(OPTIMIZERS), k + 1)
        table = tables[corpus]
        steps = table.mean_steps(optimizer)
        for j, (target, color) in enumerate(zip(table.targets, shades(len(table.targets)))):
            fit = fits[corpus][optimizer].fits[j]
            label = f"L = {target:.3f}: " + (f"B* = {fit.critical_batch:,.0f}, m = {fit.m:+.2f}" if fit else "no fit")
            reached = np.asarray(table.batches)[np.isfinite(steps[:, j])]
            ax.plot(reached, steps[np.isfinite(steps[:, j]), j], linestyle="none", marker="o", markersize=4,
                    color=color, label=label)
            if fit is not None:
                line = np.geomspace(reached[0], reached[-1], 200)
                ax.plot(line, fit.steps(line), color=color, linestyle=_STYLE[optimizer], linewidth=1.0)
                ax.plot([fit.critical_batch], fit.steps([fit.critical_batch]), marker="o", markersize=9,
                        markerfacecolor="none", color=color)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        finish_axes(ax, f"{corpus}, {'Muon' if optimizer == 'muon' else 'AdamW'}", "batch size B (tokens)",
                    "steps to target S_L(B)", legend=False)
        ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_loss_curves(tables: Mapping[str, CorpusTokens],
                     curves: Mapping[str, Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]]],
                     path: str | os.PathLike) -> Path:
    """Per corpus, the first seed's smoothed training loss against tokens at every batch size (colour), Muon
    solid and AdamW dashed, with the target losses dotted."""
    fig, axes = new_figure(len(tables), width=6.5, height=4.6)
    for ax, (corpus, table) in zip(axes, tables.items()):
        for target in table.targets:
            ax.axhline(target, color="gray", linewidth=0.6, linestyle=":")
        span = table.targets[0] - table.targets[-1]
        top = table.targets[0] + 1.5 * span
        first_shown = np.inf  # the fewest tokens at which a curve is inside the plot: the x axis starts there
        for i, (batch, color) in enumerate(zip(table.batches, shades(len(table.batches), "plasma"))):
            for optimizer in OPTIMIZERS:
                tokens, loss = curves[corpus][optimizer][i]
                ax.plot(tokens[tokens > 0], loss[tokens > 0], color=color, linestyle=_STYLE[optimizer], linewidth=0.9,
                        label=f"B={batch:,}" if optimizer == "muon" else None)
                inside = tokens[(tokens > 0) & (loss <= top)]
                first_shown = min(first_shown, inside.min()) if inside.size else first_shown
        ax.set_ylim(table.targets[-1] - 0.5 * span, top)
        ax.set_xscale("log")
        if np.isfinite(first_shown):
            ax.set_xlim(left=first_shown / 1.5)
        finish_axes(ax, f"{corpus}: smoothed training loss (Muon solid, AdamW dashed)", "tokens trained",
                    "smoothed training loss (nats/byte)")
    return save_figure(fig, path)


def plot_sweeps(sweeps: Mapping[str, Mapping[float, float | None]], path: str | os.PathLike) -> Path | None:
    """Final validation loss against learning rate of every sweep: Muon red, AdamW blue; line style per corpus,
    marker per batch size."""
    corpora = sorted({label.split()[1] for label in sweeps})
    batches = sorted({label.split()[2] for label in sweeps})
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]

    def look(label: str) -> tuple[str, str, str]:
        name, corpus, batch = label.split()
        return (_COLORS["muon" if name == "Muon" else "adamw"], styles[corpora.index(corpus) % len(styles)],
                markers[batches.index(batch) % len(markers)])

    return plot_lr_sweeps(sweeps, path, "Learning-rate sweeps at the ends of the batch range (circled: best)", look)
