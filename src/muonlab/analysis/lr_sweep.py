"""Learning-rate sweeps that bracket their optimum, and statistics that include the choice of the lr.

A study that reports "optimizer X at its best learning rate" must show that the best lr lies *inside*
its grid, or the optimum may lie beyond the edge and X is under-tuned. ``bracket`` plans such a sweep
stage by stage, from the results so far (a pure function, so a killed study re-derives the same plan):

1. the first seed at every lr of the grid (``SweepSpec.initial``, geometric with ratio ``step``);
2. while the best cell is at an edge of the grid, one more lr one ``step`` beyond that edge (first
   seed), until the best is interior or the next lr would pass ``low_cap`` / ``high_cap`` ("at the cap");
3. every seed at the best cell and at its neighbours; the choice is then the lowest *mean over seeds*
   among the cells that have every seed. If that choice moved to a cell at the edge, the grid extends
   again and the new cell gets every seed too; the sweep ends when the choice is stable.

``selection_bootstrap`` gives a 95 % interval of any statistic computed from chosen cells that
re-selects the lr inside every resample (seeds drawn with replacement, the same draw for every cell of a
group, so arms that share seeds stay paired): the uncertainty of the choice is part of the interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Bracket", "SweepSpec", "Transfer", "at_edge", "bracket", "cell_means", "choose", "grid_value",
           "reused_cells", "selection_bootstrap", "transfer"]

PENDING, INTERIOR, AT_CAP = "pending", "interior", "at the cap"


def grid_value(lr: float) -> float:
    """``lr`` rounded to 6 significant digits: grid values computed by repeated ×step stay equal to the
    values written in a preset, and to the ``{lr:g}`` of a run's name."""
    return float(f"{lr:.6g}")


@dataclass(frozen=True)
class SweepSpec:
    """A bracketed sweep: the starting grid, the ratio of one grid step, the caps an extension may not pass,
    and the seeds (the first sweeps; all of them run at the chosen cell and its neighbours)."""

    initial: tuple[float, ...]
    seeds: tuple[int, ...]
    step: float = 2.0
    low_cap: float = 1e-5
    high_cap: float = 1.0

    def __post_init__(self) -> None:
        if len(self.initial) < 3:
            raise ValueError(f"a bracketed sweep needs at least 3 learning rates to have an interior, "
                             f"got {self.initial}")
        if not self.seeds:
            raise ValueError("a bracketed sweep needs at least one seed")
        if self.step <= 1:
            raise ValueError(f"the grid step must be a ratio > 1, got {self.step}")
        if not all(self.low_cap <= lr <= self.high_cap for lr in self.initial):
            raise ValueError(f"the grid {self.initial} must lie within the caps [{self.low_cap:g}, {self.high_cap:g}]")


@dataclass(frozen=True)
class Bracket:
    """Where a bracketed sweep stands.

    ``grid``: its learning rates, sorted (the initial ones and the extensions so far); ``cells``: every
    ``(lr, seed)`` it has asked for so far, in the order asked (the runs to plan: a later call with more
    results asks for a superset); ``best``: the chosen lr once ``status`` is not ``"pending"``;
    ``status``: ``"pending"`` (runs still to train), ``"interior"`` or ``"at the cap"``.
    """

    grid: tuple[float, ...]
    cells: tuple[tuple[float, int], ...]
    best: float | None
    status: str

    @property
    def complete(self) -> bool:
        return self.status != PENDING

    def full_cells(self, seeds: Sequence[int]) -> list[float]:
        """The lrs at which every seed was asked for."""
        asked = set(self.cells)
        return [lr for lr in self.grid if all((lr, s) in asked for s in seeds)]


def at_edge(grid: Sequence[float], lr: float) -> bool:
    """Whether ``lr`` is the lowest or the highest value of ``grid``."""
    return lr in (min(grid), max(grid))


def _beyond(spec: SweepSpec, grid: list[float], lr: float) -> float | None:
    """The next lr one step past the edge ``lr`` sits on, or None when it would pass a cap."""
    nxt = grid_value(lr * spec.step) if lr == grid[-1] else grid_value(lr / spec.step)
    return nxt if spec.low_cap * (1 - 1e-9) <= nxt <= spec.high_cap * (1 + 1e-9) else None


def choose(cells: Mapping[float, Sequence[float]]) -> float:
    """The lr with the lowest mean loss among ``cells`` (``{lr: losses}``); ties go to the smaller lr."""
    if not cells:
        raise ValueError("no cell to choose a learning rate from")
    return min(sorted(cells), key=lambda lr: float(np.mean(cells[lr])))


def bracket(spec: SweepSpec, losses: Mapping[tuple[float, int], float]) -> Bracket:
    """The sweep's state given the final ``losses`` of the runs finished so far (``{(lr, seed): loss}``,
    lrs as ``grid_value``); see the module docstring for the rule."""
    first, seeds = spec.seeds[0], spec.seeds
    grid = sorted(grid_value(lr) for lr in spec.initial)
    asked: list[tuple[float, int]] = []

    def ask(cells: Sequence[tuple[float, int]]) -> bool:
        """Add the cells to the plan; True when they all have results."""
        asked.extend(c for c in cells if c not in asked)
        return all(c in losses for c in cells)

    while True:
        if not ask([(lr, first) for lr in grid]):
            return Bracket(tuple(grid), tuple(asked), None, PENDING)
        full = {lr: [losses[(lr, s)] for s in seeds] for lr in grid if all((lr, s) in asked for s in seeds)}
        centre = choose(full) if full else choose({lr: [losses[(lr, first)]] for lr in grid})
        if at_edge(grid, centre) and (nxt := _beyond(spec, grid, centre)) is not None:
            grid = sorted({*grid, nxt})
            continue
        i = grid.index(centre)
        neighbourhood = grid[max(0, i - 1): i + 2]
        if not ask([(lr, s) for lr in neighbourhood for s in seeds]):
            return Bracket(tuple(grid), tuple(asked), None, PENDING)
        full = {lr: [losses[(lr, s)] for s in seeds] for lr in grid if all((lr, s) in asked for s in seeds)}
        if choose(full) == centre:
            return Bracket(tuple(grid), tuple(asked), centre, AT_CAP if at_edge(grid, centre) else INTERIOR)


def reused_cells(source: Bracket, seeds: Sequence[int]) -> list[tuple[float, int]]:
    """Every seed at each of a finished sweep's fully seeded lrs (none while it is pending): what another
    optimizer trains to be measured at ``source``'s choice *and* at every lr that choice could have been, so a
    bootstrap that re-selects ``source``'s lr always finds the other optimizer's cell there."""
    if not source.complete:
        return []
    return [(lr, s) for lr in source.full_cells(seeds) for s in seeds]


@dataclass(frozen=True)
class Transfer:
    """One optimizer's lr reused by another: the source's chosen lr and loss, the target's loss at that lr, and
    the target's own chosen lr and loss (all from cell means)."""

    source_lr: float
    source_loss: float
    target_at_source_lr: float
    target_lr: float
    target_loss: float


def transfer(source: Mapping[float, float], target: Mapping[float, float]) -> Transfer:
    """``Transfer`` from cell means ``{lr: mean loss}``: each optimizer ``choose``s its own best; the target's
    loss at the source's lr is NaN when the target has no cell there."""
    source_lr = choose({lr: [v] for lr, v in source.items()})
    target_lr = choose({lr: [v] for lr, v in target.items()})
    return Transfer(source_lr, source[source_lr], target.get(source_lr, float("nan")), target_lr, target[target_lr])


def cell_means(cells: Mapping[float, Mapping[int, float]], seeds: Sequence[int]) -> dict[float, float]:
    """``{lr: mean loss over seeds}`` of the cells that have every seed in ``seeds`` (a seed may repeat: a
    bootstrap draw)."""
    need = set(seeds)
    return {lr: float(np.mean([by_seed[s] for s in seeds])) for lr, by_seed in cells.items() if need <= set(by_seed)}


def selection_bootstrap(groups: Sequence[Mapping[str, Mapping[float, Mapping[int, float]]]], seeds: Sequence[int],
                        statistic: Callable[[list[dict[str, dict[float, float]]]], np.ndarray], samples: int = 2000,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A statistic of chosen cells with a 95 % bootstrap interval that includes the choice.

    ``groups[g][arm][lr][seed]`` is a final loss (a group: e.g. one width; an arm: e.g. one optimizer).
    ``statistic`` gets, per group and arm, the cell means ``{lr: mean}`` (``cell_means``) and makes its own
    choices from them (e.g. ``choose`` the best lr, then fit). Each resample draws ``len(seeds)`` seeds with
    replacement, independently per group and the same for every arm and cell of a group (paired).
    Returns ``(statistic on all seeds, 2.5th percentile, 97.5th percentile)``.
    """
    rng = np.random.default_rng(seed)
    seeds = list(seeds)

    def means(drawn: Sequence[Sequence[int]]) -> list[dict[str, dict[float, float]]]:
        return [{arm: cell_means(cells, d) for arm, cells in group.items()} for group, d in zip(groups, drawn)]

    point = np.asarray(statistic(means([seeds] * len(groups))), dtype=float)
    draws = np.stack([np.asarray(statistic(means([list(rng.choice(seeds, len(seeds))) for _ in groups])), dtype=float)
                      for _ in range(samples)])
    kept = draws[np.isfinite(draws.reshape(samples, -1)).all(axis=1)]
    if not np.isfinite(point).all() or not len(kept):
        raise ValueError(f"the statistic is not finite on these losses ({point}); it has no interval")
    return point, np.percentile(kept, 2.5, axis=0), np.percentile(kept, 97.5, axis=0)
