"""Planning bracketed learning-rate sweeps of AdamW and Muon side by side, for the studies that need them.

A *group* is one setting both optimizers are tuned in (a width, a width and batch size, ...). In each,
each optimizer runs its own bracketed sweep (``muonlab.analysis.lr_sweep.bracket``), and once AdamW's is
done Muon also trains every seed at AdamW's fully seeded cells (``reused_cells``): "Muon at AdamW's lr"
is then measured at every lr AdamW's choice could be, so its interval can include that choice.

``sweep_runs`` turns the cells decided so far into ``PlannedRun`` s (a growing plan, see
``muonlab.experiments.study``); ``projected_runs`` is the plan as it ends when no sweep extends;
``cells_from`` reads the finished runs back as ``{(optimizer, group): {lr: {seed: loss}}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..analysis.lr_sweep import Bracket, SweepSpec, bracket, grid_value, reused_cells
from ..analysis.runs import Run
from ..train.config import TrainConfig
from .study import PlannedRun

__all__ = ["OPTIMIZERS", "PairedSweeps", "cells_from", "lattice"]

OPTIMIZERS = ("adamw", "muon")

Losses = Mapping[tuple[float, int], float]


@dataclass(frozen=True)
class PairedSweeps:
    """Both optimizers' bracketed sweeps in every group.

    ``groups``: the settings, in plan order; ``specs``: each optimizer's ``SweepSpec``; ``name(optimizer, group,
    lr, seed)`` and ``config(optimizer, group, lr, seed)``: a run's folder name and config; ``group_of(run)``:
    the group of a finished run (from its config), or None for a run of no group.
    """

    groups: Sequence[Hashable]
    specs: Mapping[str, SweepSpec]
    name: Callable[[str, Hashable, float, int], str]
    config: Callable[[str, Hashable, float, int], TrainConfig]
    group_of: Callable[[Run], Hashable | None]

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.specs["adamw"].seeds

    def brackets(self, cells: Mapping[tuple[str, Hashable], Losses]) -> dict[tuple[str, Hashable], Bracket]:
        """Each sweep's state, ``{(optimizer, group): Bracket}``, from the finished runs' losses."""
        return {(o, g): bracket(self.specs[o], cells.get((o, g), {})) for g in self.groups for o in OPTIMIZERS}

    def cells(self, losses: Mapping[tuple[str, Hashable], Losses]) -> dict[tuple[str, Hashable],
                                                                          list[tuple[float, int]]]:
        """Every ``(lr, seed)`` to train per optimizer and group: the sweeps' cells, then Muon at AdamW's cells."""
        state = self.brackets(losses)
        out = {key: list(b.cells) for key, b in state.items()}
        for g in self.groups:
            out[("muon", g)] += [c for c in reused_cells(state[("adamw", g)], self.seeds) if c not in out[("muon", g)]]
        return out

    def runs(self, losses: Mapping[tuple[str, Hashable], Losses]) -> list[PlannedRun]:
        """The runs of the cells decided so far. A sweep's first round needs nothing; its later runs need the
        first round (the results that placed them); Muon's runs at AdamW's lrs need AdamW's runs of the group."""
        planned: list[PlannedRun] = []
        cells, state = self.cells(losses), self.brackets(losses)
        for g in self.groups:
            adamw_runs = tuple(self.name("adamw", g, lr, s) for lr, s in cells[("adamw", g)])
            for o in OPTIMIZERS:
                first_round = tuple(self.name(o, g, lr, self.seeds[0]) for lr in self.specs[o].initial)
                own = set(state[(o, g)].cells)
                for lr, s in cells[(o, g)]:
                    name = self.name(o, g, lr, s)
                    needs = () if name in first_round else first_round if (lr, s) in own else adamw_runs
                    planned.append(PlannedRun(name, self.config(o, g, lr, s), needs))
        return planned

    def planned(self, done: Mapping[str, Run]) -> list[PlannedRun]:
        """``runs`` given the finished runs ``done``."""
        return self.runs({k: {(lr, s): v for lr, by_seed in c.items() for s, v in by_seed.items()}
                          for k, c in cells_from(done.values(), self.group_of).items()})

    def projected(self) -> list[PlannedRun]:
        """The plan as it ends when every sweep's best first-seed cell is its grid's second-highest lr and no
        sweep extends (what ``--dry-run`` costs; an extension adds one run per seed per step)."""
        lrs = lattice(self.specs.values())

        def bowl(optimizer: str) -> dict[tuple[float, int], float]:
            centre = sorted(self.specs[optimizer].initial)[-2]
            return {(lr, s): abs(lr / centre - 1.0) for lr in lrs for s in self.seeds}

        return self.runs({(o, g): bowl(o) for g in self.groups for o in OPTIMIZERS})


def lattice(specs: Iterable[SweepSpec]) -> list[float]:
    """Every lr the sweeps could reach: their grids, extended by their steps up to their caps."""
    values: set[float] = set()
    for spec in specs:
        for lr in spec.initial:
            up = down = grid_value(lr)
            values.add(up)
            while (up := grid_value(up * spec.step)) <= spec.high_cap:
                values.add(up)
            while (down := grid_value(down / spec.step)) >= spec.low_cap:
                values.add(down)
    return sorted(values)


Cells = dict[tuple[str, Hashable], dict[float, dict[int, float]]]
"""``{(optimizer, group): {lr: {seed: final validation loss}}}``."""


def cells_from(runs: Iterable[Run], group_of: Callable[[Run], Hashable | None]) -> Cells:
    """The cells of finished runs (runs of no group left out)."""
    out: Cells = {}
    for run in runs:
        group = group_of(run)
        if group is None:
            continue
        c = run.config
        out.setdefault((c["optimizer"], group), {}).setdefault(grid_value(c["lr"]), {})[int(c["seed"])] = (
            run.final("val_loss"))
    return out
