"""What the ``scaling`` study's runs measured, gathered once for the report, its side claims and its plots:
per width the budget, per optimizer and width the cells ``{lr: {seed: final validation loss}}`` and the
sweep's state, and the runs by cell."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ....analysis.lr_sweep import Bracket, grid_value
from ....analysis.runs import Run
from ...sweeps import OPTIMIZERS, cells_from
from . import plan as scaling_plan

__all__ = ["Cells", "Measured", "measure"]

Cells = dict[float, dict[int, float]]


@dataclass(frozen=True)
class Measured:
    """What the runs measured, per width in ``widths`` order: compute, parameters, tokens, batch, steps;
    per ``(optimizer, width)`` the cells and the sweep's state; the runs by cell."""

    widths: list[int]
    compute: list[float]
    params: list[int]
    tokens: list[int]
    batch_tokens: list[int]
    steps: list[int]
    seeds: list[int]
    cells: dict[tuple[str, int], Cells]
    sweeps: dict[tuple[str, int], Bracket]
    runs: dict[tuple[str, int, float, int], Run]


def measure(p: Mapping[str, Any], runs: Mapping[str, Run]) -> Measured:
    """Cells, sweep states and budgets from the finished runs."""
    plan = scaling_plan.sweeps(p)
    cells = {(o, w): {} for o in OPTIMIZERS for w in p["widths"]} | cells_from(runs.values(), plan.group_of)
    by_cell = {(r.config["optimizer"], r.config["d_model"], grid_value(r.config["lr"]), int(r.config["seed"])): r
               for r in runs.values()}
    losses = {k: {(lr, s): v for lr, by_seed in c.items() for s, v in by_seed.items()} for k, c in cells.items()}
    widths = list(p["widths"])
    batch = [scaling_plan.batch_size(p, w) * p["seq_len"] for w in widths]
    tokens = [scaling_plan.train_tokens(p, w) for w in widths]
    return Measured(
        widths=widths,
        compute=[float(scaling_plan.model_for(p, w).flops_per_token(p["seq_len"]) * t) for w, t in zip(widths, tokens)],
        params=[scaling_plan.non_embedding_params(p, w) for w in widths], tokens=tokens, batch_tokens=batch,
        steps=[t // b for t, b in zip(tokens, batch)], seeds=list(p["seeds"]), cells=cells,
        sweeps=plan.brackets(losses), runs=by_cell)
