"""Plots of the ``qk-clip`` study: loss curves and clipping activity by variant (the max-logit plot is
``muonlab.analysis.logits.plot_max_logits``, shared with other studies)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ....analysis.figures import finish_axes, new_figure, save_figure
from ....analysis.logits import draw_bands, group_by_variant
from ....analysis.runs import Run

__all__ = ["plot_clipping", "plot_losses"]


def _binned(width: int) -> Callable[[np.ndarray, np.ndarray], tuple]:
    """Mean over consecutive windows of ``width`` logged steps (the window's last step as x)."""
    def transform(steps: np.ndarray, values: np.ndarray) -> tuple:
        n = len(steps) // width * width
        if n == 0:
            return steps, values
        return steps[width - 1:n:width], values[:, :n].reshape(len(values), -1, width).mean(axis=2)
    return transform


def plot_losses(runs: Sequence[Run], path: str | os.PathLike, window: int = 10) -> Path | None:
    """Training loss (mean over windows of ``window`` steps) and validation loss, mean ± std by variant."""
    groups = group_by_variant(runs)
    fig, (train_ax, val_ax) = new_figure(2, width=6.0)
    drawn = draw_bands(train_ax, groups, "loss", transform=_binned(window))
    drawn |= draw_bands(val_ax, groups, "val_loss", marker="o")
    if not drawn:
        return None
    finish_axes(train_ax, f"Training loss (mean over {window}-row windows)", "optimizer step", "loss (nats/token)")
    finish_axes(val_ax, "Validation loss", "optimizer step", "validation loss (nats/token)")
    for ax in (train_ax, val_ax):  # the early steps' loss (~8 nats) would flatten the part that differs
        lows = [line.get_ydata().min() for line in ax.get_lines()]
        finals = [line.get_ydata()[-1] for line in ax.get_lines()]
        if lows:
            ax.set_ylim(min(lows) - 0.05, max(finals) + 1.0)
    fig.suptitle("Loss by variant (mean ± std over seeds)")
    return save_figure(fig, path)


def plot_clipping(runs: Sequence[Run], path: str | os.PathLike) -> Path | None:
    """For each QK-Clip run: heads clipped so far (cumulative) and γ = τ / S_max at the steps that clipped."""
    clip_runs = [run for run in runs if len(run.series("qk_clip/heads_clipped")[0])]
    if not clip_runs:
        return None
    fig, (heads_ax, gamma_ax) = new_figure(2, width=6.0)
    markers = ["o", "s", "^", "D", "v"]
    for i, run in enumerate(clip_runs):
        steps, _, heads = run.series("qk_clip/heads_clipped")
        gamma_steps, _, gamma = run.series("qk_clip/min_gamma")
        label = f"{run.name} (seed {run.config.get('seed')})"
        heads_ax.plot(steps, np.cumsum(heads), linewidth=1.2, label=label)
        clipped = gamma < 1
        gamma_ax.plot(gamma_steps[clipped], gamma[clipped], linestyle="none", marker=markers[i % len(markers)],
                      markersize=3, alpha=0.7, label=label)
    finish_axes(heads_ax, "Heads clipped so far", "optimizer step", "clipped heads, summed over steps")
    finish_axes(gamma_ax, "Smallest γ = τ / S_max at steps that clipped", "optimizer step", "min γ over heads")
    fig.suptitle("QK-Clip activity, per run")
    return save_figure(fig, path)
