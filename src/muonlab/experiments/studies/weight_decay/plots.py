"""Plots of the ``weight-decay`` study (Moonlight, arXiv 2502.16982 Figure 2 and App. D), by arm.

An *arm* is a group of runs that differ only in the seed: ``arm_of`` names it from the run's config
(``adamw``; ``muon-nowd`` for Muon with weight_decay 0; ``muon-wd`` for Muon with weight decay on the
matrices but not on the norm gains, ``decay_norms`` false, the default arm; ``muon-wd-norms`` with the
gains decayed too). The report passes only the arms' runs (the λ sweep's other cells are not an arm).
Curves are the mean over the arm's seeds at the steps every one of its runs logged, with a shaded mean ± sample std band
(``muonlab.analysis.logits.band``); a difference of two arms is taken per seed first (same initialisation and
data order), then averaged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ....analysis.figures import finish_axes, new_figure, save_figure
from ....analysis.logits import band, draw_bands, layer_count
from ....analysis.runs import Run

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as e:  # an optional extra
    raise ImportError("the weight-decay study's plots need matplotlib: pip install 'muonlab[plot]'") from e

__all__ = ["ARMS", "ARM_COLORS", "ARM_LABELS", "MATRICES", "arm_of", "group_by_arm", "matrix_types", "norm_types",
           "output_layers", "paired_curves", "plot_max_logits", "plot_output_rms", "plot_val_loss",
           "plot_weight_rms"]

ARMS = ("adamw", "muon-nowd", "muon-wd", "muon-wd-norms")
ARM_LABELS = {"adamw": "AdamW (wd)", "muon-nowd": "Muon (no wd)", "muon-wd": "Muon (wd at the chosen λ)",
              "muon-wd-norms": "Muon (wd, on norm gains too)"}
ARM_COLORS = {"adamw": "tab:blue", "muon-nowd": "tab:red", "muon-wd": "tab:green", "muon-wd-norms": "tab:purple"}
MATRICES = ("attn.wq", "attn.wo", "mlp.w_up", "mlp.w_down", "mlp.w_in", "mlp.w_out", "attn.wq_nope", "attn.wkv_down")
"""Hidden matrices whose weight RMS the study shows, in order of preference (dense SwiGLU, GELU MLP, MLA)."""


def arm_of(run: Run) -> str:
    """The run's arm (module docstring), from its ``optimizer``, ``weight_decay`` and ``decay_norms``."""
    if run.optimizer != "muon":
        return run.optimizer
    if float(run.config.get("weight_decay", 0.0)) == 0.0:
        return "muon-nowd"
    return "muon-wd-norms" if run.config.get("decay_norms", True) else "muon-wd"


def group_by_arm(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by arm: the known arms in ``ARMS`` order, then any other in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(arm_of(run), []).append(run)
    order = [a for a in ARMS if a in groups] + [a for a in groups if a not in ARMS]
    return {a: groups[a] for a in order}


def output_layers(runs: Sequence[Run]) -> int:
    """How many blocks logged ``output_rms/layer{i}`` (the most over ``runs``)."""
    return max((len({k for row in run.rows for k in row if k.startswith("output_rms/layer")}) for run in runs),
               default=0)


def _logged_types(runs: Sequence[Run]) -> set[str]:
    return {k.removeprefix("weight_rms/") for run in runs for row in run.rows for k in row
            if k.startswith("weight_rms/")}


def matrix_types(runs: Sequence[Run], most: int = 4) -> list[str]:
    """Up to ``most`` logged block-matrix types (``layers.*.<m>.weight``), ``MATRICES`` first by preference."""
    logged = _logged_types(runs)
    return [t for t in (f"layers.*.{m}.weight" for m in MATRICES) if t in logged][:most]


def norm_types(runs: Sequence[Run]) -> list[str]:
    """Every logged RMSNorm gain type (names ending in ``norm.weight``), sorted."""
    return sorted(t for t in _logged_types(runs) if t.endswith("norm.weight"))


def _by_step(run: Run, key: str) -> dict[int, float]:
    steps, _, values = run.series(key)
    return dict(zip(steps.tolist(), values.tolist()))


def paired_curves(a: Sequence[Run], b: Sequence[Run], key: str):
    """``(steps, mean, std, per_seed)`` of ``key``(b) − ``key``(a) per seed, at the steps every run logged.

    Runs are paired by ``config["seed"]``; seeds missing from either side are left out. ``std`` is
    None with one seed; None when no seed or no step is shared.
    """
    a_by, b_by = ({int(r.config["seed"]): r for r in runs} for runs in (a, b))
    seeds = sorted(set(a_by) & set(b_by))
    pairs = [(_by_step(a_by[s], key), _by_step(b_by[s], key)) for s in seeds]
    common = sorted(set.intersection(*(set(d) for pair in pairs for d in pair))) if pairs else []
    if not common:
        return None
    diffs = np.array([[b_steps[t] - a_steps[t] for t in common] for a_steps, b_steps in pairs])
    std = diffs.std(axis=0, ddof=1) if len(seeds) > 1 else None
    return np.array(common), diffs.mean(axis=0), std, dict(zip(seeds, diffs))


def plot_val_loss(runs: Sequence[Run], path: str | os.PathLike, zoom_from: float = 0.2) -> Path | None:
    """Validation loss per arm (mean ± std), and Muon (no wd) − Muon (wd) per seed, mean ± std, over training.

    The loss panel's y range starts at the arms' loss after ``zoom_from`` of training, where they differ.
    """
    groups = group_by_arm(runs)
    fig, (loss_ax, diff_ax) = new_figure(2, width=6.2, height=4.4)
    if not draw_bands(loss_ax, groups, "val_loss", marker="o", colors=ARM_COLORS, labels=ARM_LABELS):
        return None
    tops, lows = [], []
    for line in loss_ax.get_lines():
        x, y = line.get_xdata(), line.get_ydata()
        tops.append(y[min(len(y) - 1, int(np.searchsorted(x, zoom_from * x[-1])))])
        lows.append(y.min())
    loss_ax.set_ylim(min(lows) - 0.02, max(tops) + 0.02)
    finish_axes(loss_ax, "Validation loss", "optimizer step", "validation loss (nats/token), mean ± std")
    got = paired_curves(groups.get("muon-wd", []), groups.get("muon-nowd", []), "val_loss")
    if got is not None:
        steps, mean, std, per_seed = got
        diff_ax.plot(steps, mean, color="black", marker="o", markersize=2, linewidth=1.2,
                     label=f"Muon (no wd) − Muon (wd), {len(per_seed)} seed{'s' if len(per_seed) > 1 else ''}")
        if std is not None:
            diff_ax.fill_between(steps, mean - std, mean + std, color="gray", alpha=0.3, linewidth=0)
    diff_ax.axhline(0.0, color="black", linestyle="--", linewidth=0.8)
    finish_axes(diff_ax, "Difference (> 0: weight decay wins)", "optimizer step",
                "Δ validation loss (nats/token), mean ± std over seeds")
    fig.suptitle("Moonlight Figure 2 at small scale: validation loss and Muon's weight-decay difference")
    return save_figure(fig, path)


def plot_weight_rms(runs: Sequence[Run], types: Sequence[str], path: str | os.PathLike,
                    log: bool = True) -> Path | None:
    """One panel per parameter type: ``weight_rms/<type>`` per arm over training (mean ± std; log y with ``log``)."""
    groups = group_by_arm(runs)
    logged = [t for t in types if any(band(rs, f"weight_rms/{t}") is not None for rs in groups.values())]
    if not logged:
        return None
    fig, axes = new_figure(len(logged), width=4.2, height=4.0)
    for i, (ax, kind) in enumerate(zip(axes, logged)):
        draw_bands(ax, groups, f"weight_rms/{kind}", colors=ARM_COLORS, labels=ARM_LABELS)
        if log:
            ax.set_yscale("log")
        finish_axes(ax, kind.removeprefix("layers.*."), "optimizer step", "weight RMS over all blocks", legend=i == 0)
    fig.suptitle("Weight RMS by parameter type over training (mean ± std over seeds)")
    return save_figure(fig, path)


def plot_output_rms(runs: Sequence[Run], path: str | os.PathLike, seed: int) -> Path | None:
    """Left, the largest block-output RMS per arm (mean ± std); right, every block's for run ``seed`` of each arm."""
    groups = group_by_arm(runs)
    layers = output_layers(runs)
    if not layers:
        return None
    arms = list(groups)
    columns = (len(arms) + 1) // 2
    fig = Figure(figsize=(5.5 + 4.0 * columns, 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    cells = [arms[i:i + columns] + ["."] * (columns - len(arms[i:i + columns])) for i in (0, columns)]
    axes = fig.subplot_mosaic([["max", *row] for row in cells])
    draw_bands(axes["max"], groups, "output_rms/max", colors=ARM_COLORS, labels=ARM_LABELS)
    axes["max"].set_yscale("log")
    finish_axes(axes["max"], "Max over blocks", "optimizer step", "block-output RMS, mean ± std over seeds")
    shades = np.linspace(0.35, 1.0, layers)
    for arm, arm_runs in groups.items():
        ax = axes[arm]
        run = next((r for r in arm_runs if int(r.config["seed"]) == seed), arm_runs[0])
        for i in range(layers):
            steps, _, values = run.series(f"output_rms/layer{i}")
            ax.plot(steps, values, color=ARM_COLORS.get(arm, "tab:gray"), alpha=float(shades[i]), linewidth=1.2,
                    label=f"block {i}")
        ax.set_yscale("log")
        finish_axes(ax, f"{ARM_LABELS.get(arm, arm)}, seed {run.config['seed']}", "optimizer step",
                    "block-output RMS")
    fig.suptitle("RMS of each block's output (the residual stream) on the telemetry step's batch")
    return save_figure(fig, path)


def plot_max_logits(runs: Sequence[Run], path: str | os.PathLike) -> Path | None:
    """Max attention logit over training per arm: the max over layers, then one panel per layer (log scale)."""
    layers = layer_count(runs)
    if not layers:
        return None
    groups = group_by_arm(runs)
    fig, axes = new_figure(layers + 1, width=4.4, height=4.0)
    keys = ["max_logit/max"] + [f"max_logit/layer{i}" for i in range(layers)]
    titles = ["max over layers"] + [f"layer {i}" for i in range(layers)]
    for i, (ax, key, title) in enumerate(zip(axes, keys, titles)):
        draw_bands(ax, groups, key, colors=ARM_COLORS, labels=ARM_LABELS)
        ax.set_yscale("log")
        finish_axes(ax, f"Max attention logit, {title}", "optimizer step", "max logit q·k/√d, mean ± std",
                    legend=i == 0)
    fig.suptitle("Per-head max attention logit over training, both optimizers (Moonlight App. D)")
    return save_figure(fig, path)
