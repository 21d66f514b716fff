"""Plots of the ``update-rms`` study (Moonlight Table 8 and Table 1), from its per-variant numbers.

Every function takes the study's numbers — per variant a dict of quantities, each ``asdict(MeanStd)``
(``mean``, ``std`` or None, ``n``) — writes one PNG and returns its path, or None (nothing written)
when there is nothing to plot. Part (a)'s variants are ``"adamw"`` and the target RMS values as
strings (``"0.05"``, …); error bars and bands are ± one sample std over seeds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from muonlab.analysis.figures import finish_axes, new_figure, save_figure

__all__ = ["plot_measured_update_rms", "plot_sweep_loss", "plot_table1", "plot_weight_rms_vs_target"]

Numbers = Mapping[str, Mapping[str, Any]]
ADAMW_COLOR, MUON_COLOR = "tab:blue", "tab:red"


def _targets(sweep: Numbers) -> list[str]:
    return sorted((v for v in sweep if v != "adamw"), key=float)


def _points(sweep: Numbers, targets: Sequence[str], get) -> tuple[list[float], list[float], list[float]]:
    """(x, mean, std) of ``get(numbers)`` over the targets that have it (std 0 for one seed)."""
    xs, means, stds = [], [], []
    for t in targets:
        value = get(sweep[t])
        if value:
            xs.append(float(t))
            means.append(value["mean"])
            stds.append(value["std"] or 0.0)
    return xs, means, stds


def _band(ax, value: Mapping[str, Any] | None, label: str, color: str = ADAMW_COLOR, style: str = "--") -> None:
    """A horizontal line at the mean with a shaded ± std band."""
    if not value:
        return
    ax.axhline(value["mean"], color=color, linestyle=style, linewidth=1.2, label=label)
    if value["std"]:
        ax.axhspan(value["mean"] - value["std"], value["mean"] + value["std"], color=color, alpha=0.15, linewidth=0)


def _log_targets(ax, targets: Sequence[str]) -> None:
    ax.set_xscale("log")
    ax.set_xticks([float(t) for t in targets], labels=list(targets))
    ax.minorticks_off()


def plot_sweep_loss(sweep: Numbers, path: str | os.PathLike) -> Path | None:
    """Final validation and training loss vs target update RMS (log x), AdamW at the same lr/wd as a band."""
    targets = _targets(sweep)
    if not targets:
        return None
    fig, axes = new_figure(2)
    for ax, key, what in zip(axes, ("final_val_loss", "final_train_loss"), ("Validation", "Training")):
        xs, means, stds = _points(sweep, targets, lambda n, key=key: n[key])
        ax.errorbar(xs, means, yerr=stds, color=MUON_COLOR, marker="o", capsize=4, label="Muon (moonlight scale)")
        _band(ax, sweep.get("adamw", {}).get(key), "AdamW, same lr and wd")
        _log_targets(ax, targets)
        finish_axes(ax, f"{what} loss at the end of training", "target update RMS r", "loss (nats/token)")
    fig.suptitle("Muon's target update RMS (Moonlight Table 8): mean ± std over seeds")
    return save_figure(fig, path)


def plot_weight_rms_vs_target(sweep: Numbers, path: str | os.PathLike) -> Path | None:
    """Final weight RMS of each hidden matrix type vs target RMS (log-log); AdamW's as dotted lines."""
    targets = _targets(sweep)
    if not targets:
        return None
    kinds = [k for k in sweep[targets[0]]["weight_rms"] if k.startswith(("attn.", "mlp."))]
    fig, (ax,) = new_figure(1, width=7.5, height=5.0)
    colors = {}
    for kind in kinds:
        xs, means, stds = _points(sweep, targets, lambda n, kind=kind: n["weight_rms"].get(kind))
        line = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=kind)
        colors[kind] = line.lines[0].get_color()
    adamw = sweep.get("adamw", {}).get("weight_rms", {})
    for kind in kinds:
        if adamw.get(kind):
            ax.axhline(adamw[kind]["mean"], color=colors[kind], linestyle=":", linewidth=1)
    ax.plot([], [], color="gray", linestyle=":", label="AdamW (same lr, wd), per type")
    ax.set_yscale("log")
    _log_targets(ax, targets)
    finish_axes(ax, "Final weight RMS per matrix type (mean over layers; mean ± std over seeds)", "target update RMS r",
            "weight RMS sqrt(mean(W²))")
    return save_figure(fig, path)


def plot_measured_update_rms(sweep: Numbers, table1: Numbers, labels: Mapping[str, str],
                             path: str | os.PathLike) -> Path | None:
    """Measured update RMS (median after warmup) vs target for part (a), and per rule for part (b)."""
    targets = _targets(sweep)
    if not targets and not table1:
        return None
    fig, (sweep_ax, table_ax) = new_figure(2)
    xs, means, stds = _points(sweep, targets, lambda n: n["update_rms_muon"])
    sweep_ax.errorbar(xs, means, yerr=stds, color=MUON_COLOR, marker="o", capsize=4, label="Muon, mean over matrices")
    if xs:
        sweep_ax.plot(xs, xs, color="black", linestyle=":", linewidth=1, label="measured = target")
        _log_targets(sweep_ax, targets)
        sweep_ax.set_yscale("log")
    adamw = sweep.get("adamw", {})
    _band(sweep_ax, adamw.get("update_rms_hidden"), "AdamW, hidden matrices")
    _band(sweep_ax, adamw.get("update_rms_adamw"), "AdamW, all parameters", color="tab:cyan", style="-.")
    finish_axes(sweep_ax, "Part (a): update RMS of the lr-free update", "target update RMS r", "measured update RMS")
    names = list(table1)
    values = [table1[v]["update_rms_muon"] for v in names]
    table_ax.bar([labels.get(v, v) for v in names], [v["mean"] if v else 0.0 for v in values],
                 yerr=[(v["std"] or 0.0) if v else 0.0 for v in values], color=MUON_COLOR, alpha=0.7, capsize=4,
                 label="Muon, mean over matrices")
    table_ax.axhline(0.2, color="black", linestyle=":", linewidth=1, label="target 0.2")
    finish_axes(table_ax, "Part (b): measured update RMS by rule", "rule", "measured update RMS")
    fig.suptitle("Measured update RMS (telemetry, median after warmup; mean ± std over seeds)")
    return save_figure(fig, path)


def plot_table1(table1: Numbers, labels: Mapping[str, str], path: str | os.PathLike) -> Path | None:
    """Table 1: validation loss (points: the axis does not start at 0), query and MLP weight RMS (bars) per rule."""
    if not table1:
        return None
    names = list(table1)
    fig, (loss_ax, query_ax, mlp_ax) = new_figure(3, width=4.6)
    ticks = [labels.get(v, v) for v in names]

    def bars(ax, offset: float, values, label: str, color: str, width: float = 0.6) -> None:
        ax.bar([i + offset for i in range(len(names))], [v["mean"] if v else 0.0 for v in values], width=width,
               yerr=[(v["std"] or 0.0) if v else 0.0 for v in values], capsize=4, color=color, alpha=0.8, label=label)

    losses = [(i, table1[v]["final_val_loss"]) for i, v in enumerate(names) if table1[v]["final_val_loss"]]
    loss_ax.errorbar([i for i, _ in losses], [v["mean"] for _, v in losses], yerr=[v["std"] or 0.0 for _, v in losses],
                     color="black", marker="o", linestyle="none", capsize=5, label="final validation loss")
    loss_ax.set_xlim(-0.5, len(names) - 0.5)
    bars(query_ax, 0.0, [table1[v]["weight_rms"].get("attn.wq") for v in names], "attn.wq [H, H]", "tab:green")
    for offset, kind, color in ((-0.2, "mlp.w_in", "tab:orange"), (0.2, "mlp.w_out", "tab:purple")):
        bars(mlp_ax, offset, [table1[v]["weight_rms"].get(kind) for v in names], kind, color, width=0.4)
    for ax, title, ylabel in ((loss_ax, "Validation loss", "loss (nats/token)"),
                              (query_ax, "Query weight RMS", "weight RMS"),
                              (mlp_ax, "MLP weight RMS (w_in [4H,H], w_out [H,4H])", "weight RMS")):
        ax.set_xticks(range(len(names)), labels=ticks)
        finish_axes(ax, title, "rule", ylabel)
    fig.suptitle("Moonlight Table 1 at small scale: 20 % into the schedule (mean ± std over seeds)")
    return save_figure(fig, path)
