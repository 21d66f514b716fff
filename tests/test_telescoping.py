"""The telescoping planner (Essential AI Algorithm 1) on a synthetic loss surface whose optimum drifts with width."""

import math

import pytest

from muonlab.experiments.telescoping import (
    best_point,
    bracketed_grid,
    grid_indices,
    ledger,
    plan_level,
    points_per_axis,
    spanning_grid,
    telescope,
)

CENTER = {"lr": 3e-3, "weight_decay": 0.1}
SPACING = {"lr": 2.0, "weight_decay": 2.0}


def optimum(width):
    """Drifts as O(1/width), by under half a level-1 cell per doubling: lr from 1.46e-3 (width 32) up
    towards 2e-3, weight decay from 0.097 down towards 0.08."""
    return {"lr": 2e-3 * math.exp(-10 / width), "weight_decay": 0.08 * math.exp(6 / width)}


def loss(width, point):
    best = optimum(width)
    return 3.0 + sum(math.log(point[k] / best[k]) ** 2 for k in best) + 1.0 / width


def test_points_per_axis_follow_the_geometric_schedule():
    assert [points_per_axis(i, 8, 2) for i in range(4)] == [8, 4, 2, 1]
    assert [points_per_axis(i, 8, 1) for i in range(3)] == [8, 2, 1]
    assert [points_per_axis(i, 5, 3) for i in range(3)] == [5, 3, 2]  # 125 -> 27 -> 8 runs


def test_a_level_is_a_log_spaced_grid_centred_on_its_center():
    level = plan_level(1, 64, CENTER, SPACING, 8)
    assert len(level.points) == 16 and level.width == 64
    lrs = sorted({p["lr"] for p in level.points})
    assert [b / a for a, b in zip(lrs, lrs[1:])] == pytest.approx([math.sqrt(2.0)] * 3)  # mesh halved (log space)
    assert math.sqrt(lrs[0] * lrs[-1]) == pytest.approx(CENTER["lr"])  # centred
    odd = plan_level(0, 32, CENTER, SPACING, 3)
    assert CENTER in [dict(p) for p in odd.points]


def test_best_point_ignores_diverged_runs_and_refuses_all_diverged():
    points = [{"lr": 1.0}, {"lr": 2.0}, {"lr": 3.0}]
    assert best_point(points, [math.nan, 3.5, 3.7]) == {"lr": 2.0}
    with pytest.raises(ValueError, match="diverged"):
        best_point(points, [math.nan, math.inf, math.nan])


def test_telescope_tracks_the_drifting_optimum_to_within_one_fine_cell():
    widths = [32, 64, 128, 256]
    history = telescope(widths, CENTER, SPACING, 8, loss)
    assert [len(level.points) for level, _ in history] == [64, 16, 4, 1]
    chosen = dict(history[-1][0].points[0])
    # the last grid's own cell: spacing 2^(1/8) per hyperparameter; the chosen point must be within
    # one cell of the true optimum at the top width (the brute-force answer on this surface)
    cell = math.log(SPACING["lr"]) / 2 ** (len(widths) - 2)
    for name, value in optimum(widths[-1]).items():
        assert abs(math.log(chosen[name] / value)) <= cell, (name, chosen[name], value)
    # re-centring: each level is centred on the previous level's best
    for (prev, losses), (level, _) in zip(history, history[1:]):
        assert level.center == best_point(prev.points, losses)
    # and the spread of losses shrinks level by level (the last level is a single run)
    spreads = [max(losses) - min(losses) for _, losses in history]
    assert all(b < a for a, b in zip(spreads, spreads[1:])) and spreads[-1] == 0.0


def test_a_telescope_that_stops_recentring_after_level_0_misses_the_drift():
    widths = [32, 64, 128, 256]
    first = plan_level(0, widths[0], CENTER, SPACING, 8)
    center = best_point(first.points, [loss(widths[0], p) for p in first.points])
    frozen = [plan_level(i, w, center, SPACING, 8) for i, w in enumerate(widths)]
    chosen = best_point(frozen[-1].points, [loss(widths[-1], p) for p in frozen[-1].points])
    cell = math.log(SPACING["lr"]) / 2 ** (len(widths) - 2)
    assert any(abs(math.log(chosen[k] / v)) > cell for k, v in optimum(widths[-1]).items())


def test_ledger_costs_each_level_about_the_same_and_saves_against_a_full_grid():
    levels = [level for level, _ in telescope([32, 64, 128, 256], CENTER, SPACING, 8, loss)]
    book = ledger(levels, run_cost=lambda width: (width / 32) ** 2, final_width=512)
    assert [row["cost"] for row in book["levels"]] == [64.0, 64.0, 64.0, 64.0]
    assert book["final_cost"] == 256.0 and book["total_cost"] == 512.0
    assert book["full_grid_cost_at_top_width"] == 64 * 64.0
    assert book["saved_fraction"] == pytest.approx(1 - 256 / 4096)
    assert book["full_grid_cost_at_final_width"] == 64 * 256.0  # Figure 13: the whole telescope against this
    assert book["saved_fraction_at_final_width"] == pytest.approx(1 - 512 / 16384)
    assert book["final_share"] == pytest.approx(0.5)


def test_grid_indices_name_each_point_by_its_rank_along_every_hyperparameter():
    level = plan_level(1, 64, CENTER, SPACING, 6)  # 3 × 3
    for (i, j), point in zip(grid_indices(level), level.points):
        assert point["lr"] == pytest.approx(CENTER["lr"] * math.sqrt(2.0) ** (i - 1))
        assert point["weight_decay"] == pytest.approx(CENTER["weight_decay"] * math.sqrt(2.0) ** (j - 1))
    assert grid_indices(plan_level(3, 256, CENTER, SPACING, 8)) == [(0, 0)]


def test_a_spanning_grid_covers_level_0_s_box_with_its_own_number_of_points():
    grid = spanning_grid(128, CENTER, SPACING, 8, 3)  # level 0: 8 points spaced ×2, i.e. ×2^3.5 either side
    lrs = sorted({p["lr"] for p in grid.points})
    assert lrs == pytest.approx([CENTER["lr"] * 2**-3.5, CENTER["lr"], CENTER["lr"] * 2**3.5])
    assert grid.width == 128 and grid.spacing["lr"] == pytest.approx(2**3.5)
    with pytest.raises(ValueError, match="at least 2 points"):
        spanning_grid(128, CENTER, SPACING, 8, 1)


CAPS = {"lr": (1e-5, 1.0), "weight_decay": (1e-3, 10.0)}


def _grow(surface, caps=CAPS, points=4):
    """Train every point ``bracketed_grid`` asks for (loss from ``surface``) until it stops; its last answer."""
    losses = {}
    while True:
        grid, status = bracketed_grid(64, CENTER, SPACING, points, points, caps, losses)
        if status != "pending":
            return grid, status, losses
        losses.update((ix, surface(q)) for ix, q in zip(grid.indices, grid.points) if ix not in losses)


def _bowl(best):
    return lambda q: sum(math.log(q[k] / best[k]) ** 2 for k in best)


def test_a_bracketed_grid_whose_best_is_interior_stays_the_box():
    grid, status, losses = _grow(_bowl(CENTER))
    assert status == "interior" and len(grid.points) == 16 and len(losses) == 16
    assert grid.points == spanning_grid(64, CENTER, SPACING, 4, 4).points


def test_a_bracketed_grid_grows_whole_lines_past_a_corner_until_the_best_is_interior():
    # box: lr 3e-3·2^(−1.5 … 1.5), λ 0.1·2^(−1.5 … 1.5); the optimum lies 2.2 steps below in lr and 3.4 above in λ
    best = {"lr": 3e-3 * 2**-3.7, "weight_decay": 0.1 * 2**4.9}
    grid, status, losses = _grow(_bowl(best))
    assert status == "interior"
    lrs = sorted({q["lr"] for q in grid.points})
    wds = sorted({q["weight_decay"] for q in grid.points})
    assert lrs == pytest.approx([3e-3 * 2 ** (k - 1.5) for k in range(-3, 4)])  # 3 lines grown below
    assert wds == pytest.approx([0.1 * 2 ** (k - 1.5) for k in range(0, 8)])  # 4 lines grown above
    assert len(grid.points) == len(lrs) * len(wds) == len(losses)  # whole lines: still a full grid
    top = best_point(grid.points, [losses[ix] for ix in grid.indices])
    assert top == pytest.approx({"lr": 3e-3 * 2**-3.5, "weight_decay": 0.1 * 2**4.5})
    assert (-2, 6) in grid.indices and grid.indices[0] == (-3, 0)  # indices count from the box's first value


def test_a_bracketed_grid_stops_at_its_cap_and_says_so():
    grid, status, _ = _grow(_bowl({"lr": 3e-3, "weight_decay": 1e-4}), caps={**CAPS, "weight_decay": (0.01, 10.0)})
    assert status == "at the cap"
    lowest = min(q["weight_decay"] for q in grid.points)
    assert lowest == pytest.approx(0.1 * 2**-2.5)  # grown once, to 0.0177: the next, 0.0088, is below 0.01
    never = {ix: 1.0 for ix in spanning_grid(64, CENTER, SPACING, 4, 4).indices}
    assert bracketed_grid(64, CENTER, SPACING, 4, 4, CAPS, {})[1] == "pending"
    del never[(1, 1)]
    assert bracketed_grid(64, CENTER, SPACING, 4, 4, CAPS, never)[1] == "pending"  # one point untrained
