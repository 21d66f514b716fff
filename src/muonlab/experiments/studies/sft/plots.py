"""Plots of the ``sft`` study: the pretrain × fine-tune cells, their curves, and the learning-rate sweep.

Groups are labelled runs (one per seed); colours follow the fine-tuning optimizer (Muon red, AdamW
blue) and the marker / line style the pretraining optimizer, so the four cells read apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ....analysis.figures import band_of, finish_axes, new_figure, plot_lr_sweeps, save_figure
from ....analysis.runs import Run

__all__ = ["plot_cells", "plot_curves", "plot_sweep"]

_COLORS = {"muon": "tab:red", "adamw": "tab:blue"}
_STYLES = {"muon": ("-", "o"), "adamw": ("--", "s")}


def _look(label: str) -> tuple[str, str, str]:
    """``(colour, line style, marker)`` of a group labelled ``"pretrain P → SFT S"`` or by one optimizer."""
    parts = label.replace("pretrain ", "").split(" → SFT ")
    pre, sft = (parts[0], parts[-1]) if len(parts) == 2 else (label, label)
    linestyle, marker = _STYLES.get(pre, ("-", "o"))
    return _COLORS.get(sft, "tab:gray"), linestyle, marker


def _val_loss_by_tokens(run: Run) -> dict[int, float]:
    tokens, values = run.xy("tokens", "val_loss")
    return {int(t): float(v) for t, v in zip(tokens, values)}


def plot_cells(groups: Mapping[str, Sequence[Run]], path: str | os.PathLike) -> Path | None:
    """Final validation loss per group: mean ± std as a bar with error bars, each seed as a dot."""
    finals = {label: [r.final("val_loss") for r in runs] for label, runs in groups.items()}
    finals = {label: [v for v in values if v is not None] for label, values in finals.items()}
    if not any(finals.values()):
        return None
    fig, (ax,) = new_figure(1, width=7.5, height=4.6)
    for i, (label, values) in enumerate(finals.items()):
        color, _, marker = _look(label)
        mean = float(np.mean(values))
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        ax.bar(i, mean, yerr=std, color=color, alpha=0.35, capsize=6, edgecolor=color)
        ax.plot([i] * len(values), values, linestyle="none", marker=marker, color=color, markersize=5)
    ax.set_xticks(range(len(finals)), [label.replace(" → ", "\n→ ") for label in finals], fontsize="small")
    low = min(min(v) for v in finals.values() if v)
    high = max(max(v) for v in finals.values() if v)
    ax.set_ylim(low - 0.5 * (high - low + 1e-3), high + 0.5 * (high - low + 1e-3))
    finish_axes(ax, "Final fine-tuning validation loss (bar: mean ± std; dots: seeds)", "",
                "validation loss (nats/trained token)", legend=False)
    return save_figure(fig, path)


def plot_curves(groups: Mapping[str, Sequence[Run]], path: str | os.PathLike) -> Path | None:
    """Validation loss against tokens per group: mean ± std over its runs; the right panel zooms on the end."""
    fig, axes = new_figure(2, width=6.0, height=4.4)
    drawn = False
    finals = []
    for label, runs in groups.items():
        got = band_of([_val_loss_by_tokens(r) for r in runs])
        if got is None:
            continue
        tokens, mean, std = got
        color, linestyle, marker = _look(label)
        for ax in axes:
            ax.plot(tokens, mean, color=color, linestyle=linestyle, marker=marker, markersize=3,
                    label=f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
            if std is not None:
                ax.fill_between(tokens, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        finals.append((tokens, mean))
        drawn = True
    if not drawn:
        return None
    half = max(t[-1] for t, _ in finals) / 2
    tail = [m[t >= half] for t, m in finals]
    low, high = min(float(x.min()) for x in tail), max(float(x.max()) for x in tail)
    axes[1].set_xlim(half, None)
    axes[1].set_ylim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
    finish_axes(axes[0], "Validation loss over training", "tokens", "validation loss (nats/token)")
    finish_axes(axes[1], "Second half, zoomed", "tokens", "validation loss (nats/token)")
    return save_figure(fig, path)


def plot_sweep(sweeps: Mapping[str, Mapping[float, Run]], path: str | os.PathLike) -> Path | None:
    """Final validation loss against learning rate (log x) per group, the best point circled."""
    losses = {label: {lr: run.final("val_loss") for lr, run in by_lr.items()} for label, by_lr in sweeps.items()}
    return plot_lr_sweeps(losses, path, "Fine-tuning learning-rate sweep (first seed; circled: chosen)", _look)
