"""The telescoping hyperparameter search (Essential AI, arXiv 2505.02222 §3.3, Algorithm 1), as pure planning.

Search ``k`` hyperparameters on log-spaced grids while the width doubles::

    level 0, width N₀:   m points per hyperparameter (m^k runs), spacing s₀, centred on a guess
    level i, width 2ⁱN₀:  m·4^(−i/k) (rounded) points per hyperparameter, spacing s₀/2ⁱ, centred on the best
                         point of level i − 1 (the optimum drifts as O(1/n), so halving the spacing
                         tracks it), until the calibration width N_c
    final:               one run at the target width N at the last level's best point

A run at twice the width costs about four times as much, and each level has about four times fewer
runs, so every level costs about the same and the whole search ``O(C log N)`` for a final run of
cost ``C`` (paper §3.3). With k = 2 and m = 8 the grids are 8×8, 4×4, 2×2, then 1.

The study plans one level at a time (:func:`plan_level`) from the losses of the level before it
(:func:`best_point`), and :func:`ledger` accounts the cost. :func:`spanning_grid` is the check: a
brute-force grid over level 0's box at another width (the top calibration width), and
:func:`bracketed_grid` grows it by whole lines beyond any edge its best point sits on, so the check's
optimum is interior (or at a stated cap) rather than wherever the box happened to end.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..analysis.lr_sweep import AT_CAP, INTERIOR, PENDING

__all__ = ["Level", "best_point", "bracketed_grid", "grid_indices", "ledger", "plan_level", "points_per_axis",
           "spanning_grid", "telescope"]


def points_per_axis(level: int, first: int, k: int) -> int:
    """Grid points per hyperparameter at ``level``: ``first · 4^(−level/k)`` rounded to the nearest
    integer (so each level has about four times fewer runs), at least 1."""
    return max(1, round(first * 4.0 ** (-level / k)))


@dataclass(frozen=True)
class Level:
    """One level of the telescope: a width and a log-spaced grid of hyperparameter points."""

    index: int
    width: int
    points: tuple[dict[str, float], ...]  # every grid point, as {name: value}
    spacing: dict[str, float]  # multiplicative step between neighbouring values of each hyperparameter
    center: dict[str, float]
    indices: tuple[tuple[int, ...], ...]  # each point's position per hyperparameter (see ``grid_indices``)


def _grid(index: int, width: int, center: Mapping[str, float], spacing: Mapping[str, float], points: int,
          span: Mapping[str, tuple[int, int]]) -> Level:
    """Per hyperparameter the values ``center · spacing^(j − (points − 1)/2)`` for ``j`` from ``span[name][0]``
    to ``span[name][1]`` (inclusive; ``j = 0 … points − 1`` is a grid of ``points`` values centred on
    ``center``, indices beyond it extend that grid by whole steps), and every combination of them."""
    names = list(center)
    ranges = [range(span[name][0], span[name][1] + 1) for name in names]
    indices = tuple(itertools.product(*ranges))
    points = tuple({name: center[name] * spacing[name] ** (j - (points - 1) / 2) for name, j in zip(names, ix)}
                   for ix in indices)
    return Level(index, width, points, dict(spacing), dict(center), indices)


def plan_level(index: int, width: int, center: Mapping[str, float], first_spacing: Mapping[str, float],
               first_points: int) -> Level:
    """The grid of level ``index``: per hyperparameter ``points_per_axis`` values, log-spaced by
    ``first_spacing^(1/2^index)`` (the mesh halves in log space at each level), centred on ``center``."""
    n = points_per_axis(index, first_points, len(center))
    spacing = {name: first_spacing[name] ** (0.5**index) for name in center}
    return _grid(index, width, center, spacing, n, {name: (0, n - 1) for name in center})


def grid_indices(level: Level) -> list[tuple[int, ...]]:
    """Each point's position on the grid, one index per hyperparameter (in ``center``'s order), in the
    order of ``level.points``: index 0 is the smallest value of the grid as first planned (a grid that
    ``bracketed_grid`` extended below it has negative indices there)."""
    return list(level.indices)


def spanning_grid(width: int, center: Mapping[str, float], first_spacing: Mapping[str, float], first_points: int,
                  points: int, span: Mapping[str, tuple[int, int]] | None = None) -> Level:
    """A full grid of ``points`` values per hyperparameter over the box level 0 covers (``first_points``
    values spaced ``first_spacing``, centred on ``center``): the same extremes, spacing
    ``first_spacing^((first_points − 1)/(points − 1))``. With ``points = first_points`` it is level 0's
    grid at ``width``: the brute-force search the telescope replaces. ``span`` (per hyperparameter, the
    first and last index, default ``(0, points − 1)``) extends it by whole steps beyond the box."""
    if points < 2 or first_points < 2:
        raise ValueError(f"a spanning grid needs at least 2 points per axis, got points={points}, "
                         f"first_points={first_points}")
    spacing = {name: first_spacing[name] ** ((first_points - 1) / (points - 1)) for name in center}
    return _grid(0, width, center, spacing, points, span or {name: (0, points - 1) for name in center})


def bracketed_grid(width: int, center: Mapping[str, float], first_spacing: Mapping[str, float], first_points: int,
                   points: int, caps: Mapping[str, tuple[float, float]],
                   losses: Mapping[tuple[int, ...], float]) -> tuple[Level, str]:
    """The ``spanning_grid`` grown until its best point is interior, and its status.

    ``losses`` maps grid indices (``grid_indices``) to the final losses finished so far. While every point of
    the grid has one and the best point (``best_point``) lies on the lowest or highest value of a
    hyperparameter, the grid gains the whole line one step beyond that edge (every value of the other
    hyperparameters), unless that value would leave ``caps[name] = (low, high)``. Returns the grid so far and
    ``"pending"`` (points still to train), ``"interior"``, or ``"at the cap"`` (best on an edge that may not
    grow). A pure function of ``losses``: a resumed study re-derives the same grid.
    """
    span = {name: (0, points - 1) for name in center}
    while True:
        grid = spanning_grid(width, center, first_spacing, first_points, points, span)
        if not all(ix in losses for ix in grid.indices):
            return grid, PENDING
        top = grid.indices[grid.points.index(best_point(grid.points, [losses[ix] for ix in grid.indices]))]
        on_edge, grown = False, False
        for axis, name in enumerate(center):
            low, high = span[name]
            if top[axis] not in (low, high):
                continue
            on_edge = True
            beyond = low - 1 if top[axis] == low else high + 1
            value = center[name] * grid.spacing[name] ** (beyond - (points - 1) / 2)
            if caps[name][0] * (1 - 1e-9) <= value <= caps[name][1] * (1 + 1e-9):
                span[name] = (min(low, beyond), max(high, beyond))
                grown = True
        if not grown:
            return grid, AT_CAP if on_edge else INTERIOR


def best_point(points: Sequence[Mapping[str, float]], losses: Sequence[float]) -> dict[str, float]:
    """The point with the lowest loss (ties: the first); non-finite losses (diverged runs) never win."""
    finite = [(loss, i) for i, loss in enumerate(losses) if math.isfinite(loss)]
    if not finite:
        raise ValueError("every run of the level diverged (no finite loss); widen or move the first grid")
    return dict(points[min(finite)[1]])


def telescope(widths: Sequence[int], center: Mapping[str, float], first_spacing: Mapping[str, float],
              first_points: int,
              evaluate: Callable[[int, Mapping[str, float]], float]) -> list[tuple[Level, list[float]]]:
    """Run the whole search with ``evaluate(width, point) -> loss``: each level of ``widths`` (doubling
    from N₀ to N_c) centred on the previous level's best. Returns every level with its losses."""
    history = []
    for index, width in enumerate(widths):
        level = plan_level(index, width, center, first_spacing, first_points)
        losses = [evaluate(width, point) for point in level.points]
        history.append((level, losses))
        center = best_point(level.points, losses)
    return history


def ledger(levels: Sequence[Level], run_cost: Callable[[int], float], final_width: int | None = None) -> dict:
    """Cost accounting: runs and cost per level, the final run, and what a full grid (the first level's
    grid size) would have cost instead at the top calibration width and, with ``final_width``, at the
    final width (the paper's Figure 13 comparison: telescoping search + final run against that grid)."""
    rows = [{"level": lv.index, "width": lv.width, "runs": len(lv.points), "cost": len(lv.points) * run_cost(lv.width)}
            for lv in levels]
    search = sum(r["cost"] for r in rows)
    final = run_cost(final_width) if final_width is not None else 0.0
    full_grid = len(levels[0].points) * run_cost(levels[-1].width)
    book = {"levels": rows, "search_cost": search, "final_cost": final, "total_cost": search + final,
            "full_grid_cost_at_top_width": full_grid, "saved_fraction": 1.0 - search / full_grid}
    if final_width is not None:
        at_final = len(levels[0].points) * final
        book.update(full_grid_cost_at_final_width=at_final, saved_fraction_at_final_width=1.0 - (search + final)
                    / at_final, final_share=final / (search + final))
    return book
