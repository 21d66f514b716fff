"""Max attention logits, read from run folders and drawn: what the qk-clip, weight-decay and scaling studies share.

A *variant* is a group of runs that differ only in the seed: ``variant_of`` names it from the run's
config (``adamw``, ``muon``, or ``muon+qk-clip`` when ``qk_clip_tau`` > 0). Curves are the mean over
the variant's seeds at the steps every one of its runs logged, with a shaded mean ± sample std band
(``band``, ``draw_bands``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from muonlab.analysis.figures import band_of, finish_axes, new_figure, save_figure
from muonlab.analysis.runs import Run

__all__ = ["VARIANT_COLORS", "band", "draw_bands", "group_by_variant", "layer_count", "max_logit_keys",
           "max_over_layers", "plot_max_logits", "variant_of"]

VARIANT_COLORS = {"adamw": "tab:blue", "muon": "tab:red", "muon+qk-clip": "tab:green"}
_LAYER_KEY = re.compile(r"max_logit/layer(\d+)$")


def variant_of(run: Run) -> str:
    """``adamw``, ``muon`` or ``muon+qk-clip`` (Muon with ``qk_clip_tau`` > 0)."""
    if run.optimizer == "muon" and float(run.config.get("qk_clip_tau") or 0.0) > 0:
        return "muon+qk-clip"
    return run.optimizer


def group_by_variant(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by variant, variants in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(variant_of(run), []).append(run)
    return groups


def max_logit_keys(run: Run) -> list[str]:
    """The run's ``max_logit/layer{i}`` keys, by layer index."""
    found = {int(m.group(1)): k for row in run.rows for k in row if (m := _LAYER_KEY.match(k))}
    return [found[i] for i in sorted(found)]


def layer_count(runs: Sequence[Run]) -> int:
    """The number of layers that logged a max logit (the most over ``runs``)."""
    return max((len(max_logit_keys(r)) for r in runs), default=0)


def max_over_layers(row: Mapping) -> float | None:
    """The largest ``max_logit/layer{i}`` of a metrics row (None when it logged none)."""
    values = [v for k, v in row.items() if _LAYER_KEY.match(k) and isinstance(v, (int, float))]
    return max(values) if values else None


def _series(run: Run, key: str) -> dict[int, float]:
    """step -> value; ``key`` ``"max_logit/max"`` is the max over the row's layers."""
    if key == "max_logit/max":
        return {r["step"]: m for r in run.rows if (m := max_over_layers(r)) is not None}
    steps, _, values = run.series(key)
    return dict(zip(steps.tolist(), values.tolist()))


def band(runs: Sequence[Run], key: str, transform: Callable[[np.ndarray, np.ndarray], tuple] | None = None):
    """``(steps, mean, std)`` of ``key`` over ``runs`` at the steps all of them logged (std None for one run)."""
    return band_of([_series(r, key) for r in runs], transform)


def draw_bands(ax, groups: Mapping[str, Sequence[Run]], key: str, transform=None, marker: str | None = None,
               colors: Mapping[str, str] = VARIANT_COLORS, labels: Mapping[str, str] | None = None) -> bool:
    """One mean line and mean ± std band of ``key`` per group (``band``), coloured by ``colors`` and labelled
    ``labels[group]`` (default: the group's name) with its seed count; False when no group logged ``key``."""
    drawn = False
    for variant, runs in groups.items():
        got = band(runs, key, transform)
        if got is None:
            continue
        steps, mean, std = got
        color = colors.get(variant, "tab:gray")
        name = (labels or {}).get(variant, variant)
        ax.plot(steps, mean, color=color, marker=marker, markersize=2, linewidth=1.2,
                label=f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        if std is not None:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        drawn = True
    return drawn


def plot_max_logits(runs: Sequence[Run], tau: float | None, path: str | os.PathLike) -> Path | None:
    """Max attention logit over training: the max over layers, then one panel per layer; log scale, τ dashed
    (when given).

    Muon + QK-Clip logs the pre-clip max logit at every step; the others at their telemetry steps.
    """
    layers = layer_count(runs)
    if not layers:
        return None
    groups = group_by_variant(runs)
    fig, axes = new_figure(layers + 1, width=4.6)
    keys = ["max_logit/max"] + [f"max_logit/layer{i}" for i in range(layers)]
    titles = ["max over layers"] + [f"layer {i}" for i in range(layers)]
    for ax, key, title in zip(axes, keys, titles):
        draw_bands(ax, groups, key)
        if tau is not None:
            ax.axhline(tau, color="black", linestyle="--", linewidth=1, label=f"τ = {tau:g}")
        ax.set_yscale("log")
        finish_axes(ax, f"Max attention logit, {title}", "optimizer step", "max logit (pre-clip), mean ± std")
    fig.suptitle("Per-head max attention logit q·k/√d over training (mean ± std over seeds)")
    return save_figure(fig, path)
