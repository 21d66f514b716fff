"""Building blocks of the studies' multi-panel figures: mean ± std bands over seeds, panels, saving.

A *band* is the mean and sample std (ddof=1) over runs of one metric at the steps every run logged.
Figures are matplotlib ``Figure`` objects on the Agg canvas (no display), saved as 150-dpi PNGs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from muonlab.analysis.plots import DPI

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as e:  # an optional extra
    raise ImportError("muonlab.analysis.figures needs matplotlib: pip install 'muonlab[plot]'") from e

__all__ = ["Band", "band_of", "finish_axes", "log_axes", "new_figure", "plot_lr_sweeps", "save_figure", "shades"]

Band = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
"""``(steps, mean, std)``; std is None for a single run."""


def band_of(per_run: Sequence[dict[int, float]], transform: Callable[[np.ndarray, np.ndarray], tuple] | None = None
            ) -> Band | None:
    """Mean ± std over runs of ``step -> value`` series, at the steps all of them have (None if none).

    ``transform(steps, values[runs, steps]) -> (steps, values)`` is applied first (e.g. binning).
    """
    common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    if not common:
        return None
    steps = np.array(common)
    values = np.array([[d[s] for s in common] for d in per_run])
    if transform is not None:
        steps, values = transform(steps, values)
    std = values.std(axis=0, ddof=1) if len(per_run) > 1 else None
    return steps, values.mean(axis=0), std


def new_figure(panels: int, width: float = 5.0, height: float = 4.0):
    """``(figure, axes)``: ``panels`` side by side, each ``width`` × ``height`` inches."""
    fig = Figure(figsize=(width * panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def finish_axes(ax, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    """Title, axis labels, a light grid and (when asked) the legend."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize="small")


def log_axes(ax, x: bool = True, y: bool = False, x_ticks: Sequence[float] | None = None) -> None:
    """Log scale on the chosen axes, labelled at the decades only: the minor ticks' labels (2×10⁻³, 3×10⁻³, …)
    overlap on a narrow panel. ``x_ticks``: label the x axis at these values instead (e.g. the steps a study
    ran, when they span less than a few decades)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    for use, axis, scale in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
        if use:
            scale("log")
            axis.set_minor_formatter(NullFormatter())
    if x_ticks is not None:
        ax.xaxis.set_major_locator(FixedLocator(list(x_ticks)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:,g}" for t in x_ticks])


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_lr_sweeps(sweeps: Mapping[str, Mapping[float, float]], path: str | os.PathLike, title: str,
                   look: Callable[[str], tuple[str, str, str]]) -> Path | None:
    """Final loss against learning rate (log x), one line per labelled sweep, its lowest point circled.

    ``look(label) -> (colour, line style, marker)``. None (nothing written) when no sweep has a point.
    """
    fig, (ax,) = new_figure(1, width=8.6, height=4.6)
    drawn = False
    for label, by_lr in sweeps.items():
        points = sorted((lr, loss) for lr, loss in by_lr.items() if loss is not None)
        if not points:
            continue
        lrs, losses = zip(*points)
        color, linestyle, marker = look(label)
        ax.plot(lrs, losses, color=color, linestyle=linestyle, marker=marker, label=label)
        best = int(np.argmin(losses))
        ax.plot(lrs[best], losses[best], marker="o", markersize=12, markerfacecolor="none", color=color)
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    finish_axes(ax, title, "peak learning rate", "final validation loss (nats/token)", legend=False)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never over them
    return save_figure(fig, path)


def shades(n: int, cmap: str = "viridis") -> list:
    """``n`` colours along ``cmap`` (its light end cut off, so the last stays visible on white)."""
    from matplotlib import colormaps

    return [colormaps[cmap](x) for x in np.linspace(0.0, 0.85, max(n, 1))]
