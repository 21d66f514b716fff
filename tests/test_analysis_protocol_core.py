"""The studies' shared protocol core on synthetic data with known answers: the paired interval, the
bracketed sweep's grid extension and seed stage, and the bootstrap that re-selects the lr."""

from __future__ import annotations

import numpy as np
import pytest

from muonlab.analysis.lr_sweep import SweepSpec, bracket, cell_means, choose, grid_value, selection_bootstrap
from muonlab.analysis.paired import paired_difference, t_quantile_975


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    d = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.5, 2: 5.0})  # differences 1, 1.5, 2
    assert d.mean == pytest.approx(1.5)
    low, high = d.interval
    half = 4.303 * 0.5 / np.sqrt(3)  # t_{0.975, 2} · sd / √n, sd of (1, 1.5, 2) = 0.5
    assert (low, high) == pytest.approx((1.5 - half, 1.5 + half))
    assert d.separated and d.verdict(+1) is True and d.verdict(-1) is False


def test_pairing_separates_what_the_unpaired_spread_hides():
    # The arms' seed-to-seed spread (0.1) is ten times their gap (0.0135), but every seed moves by 0.0135 ± 0.0015.
    a = {0: 2.0, 1: 2.1, 2: 2.2}
    b = {0: 2.012, 1: 2.1135, 2: 2.215}
    d = paired_difference(a, b)
    assert d.std_a == pytest.approx(0.1) and d.mean == pytest.approx(0.0135)
    assert d.separated and d.sign_count == (3, 0)


def test_a_difference_whose_interval_covers_zero_is_not_separated_and_two_seeds_never_are():
    assert not paired_difference({0: 1.0, 1: 1.0, 2: 1.0}, {0: 1.1, 1: 0.9, 2: 1.05}).separated
    two = paired_difference({0: 1.0, 1: 1.0}, {0: 2.0, 1: 2.001})
    assert two.interval[0] > 0 and not two.separated  # below the minimum of seeds
    assert paired_difference({0: 1.0}, {0: 2.0}).interval is None
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_the_text_counts_the_signs_of_the_per_seed_differences_b_minus_a():
    d = paired_difference({0: 1.0, 1: 1.0, 2: 1.0}, {0: 2.0, 1: 0.5, 2: 3.0})  # differences +1, -0.5, +2
    text = d.text()
    assert text.startswith("+0.8333 nats (95 % CI ")
    assert "paired over 3 seeds; positive in 2 seeds, negative in 1; unpaired 1.0000" in text
    one_up = paired_difference({0: 2.0, 1: 2.0, 2: 2.0}, {0: 1.0, 1: 2.5, 2: 0.0})
    assert "positive in 1 seed, negative in 2;" in one_up.text()
    assert d.text(unit="").startswith("+0.8333 (95 % CI ")  # a unitless figure: one space before the interval


def test_t_quantiles_match_the_table_and_the_normal_limit():
    assert t_quantile_975(1) == pytest.approx(12.706) and t_quantile_975(30) == pytest.approx(2.042)
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=1e-3)  # tables: 2.040 at 31 degrees of freedom
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)


def _run_sweep(spec: SweepSpec, loss_of, max_stages: int = 20):
    """Drive ``bracket`` as the study machinery does: train what it asks for, call again."""
    losses, stages = {}, 0
    while not (state := bracket(spec, losses)).complete:
        new = [c for c in state.cells if c not in losses]
        assert new, "a pending sweep must ask for a run it does not have"
        losses.update({c: loss_of(*c) for c in new})
        stages += 1
        assert stages < max_stages
    return state, losses


def _bowl(optimum: float, noise: dict | None = None):
    return lambda lr, seed: float(np.log(lr / optimum) ** 2) + (noise or {}).get((grid_value(lr), seed), 0.0)


def test_a_sweep_whose_optimum_lies_beyond_the_top_extends_until_it_is_interior():
    spec = SweepSpec(initial=(1e-3, 2e-3, 4e-3), seeds=(0, 1, 2))
    state, losses = _run_sweep(spec, _bowl(0.02))
    assert state.status == "interior"
    assert state.best == pytest.approx(0.016)  # the grid point nearest 0.02 in log distance
    assert state.grid == (0.001, 0.002, 0.004, 0.008, 0.016, 0.032)
    assert {s for (lr, s) in losses if lr == 0.016} == {0, 1, 2}
    assert {s for (lr, s) in losses if lr == 0.001} == {0}  # far cells: the first seed only
    assert set(state.full_cells(spec.seeds)) == {0.008, 0.016, 0.032}


def test_a_sweep_extends_downwards_and_stops_at_the_cap():
    spec = SweepSpec(initial=(1e-3, 2e-3, 4e-3), seeds=(0, 1), low_cap=2.5e-4)
    state, losses = _run_sweep(spec, _bowl(1e-5))
    assert state.status == "at the cap" and state.best == pytest.approx(2.5e-4)
    assert min(lr for lr, _ in losses) == pytest.approx(2.5e-4)


def test_when_the_seeds_move_the_choice_to_an_edge_the_grid_extends_again():
    # Seed 0 likes 2e-3 (interior); seeds 1 and 2 make 4e-3 (the top edge) the best mean, and 8e-3 better still.
    noise = {(0.004, 1): -3.0, (0.004, 2): -3.0, (0.008, 0): -2.5}
    spec = SweepSpec(initial=(1e-3, 2e-3, 4e-3), seeds=(0, 1, 2))
    state, losses = _run_sweep(spec, _bowl(2e-3, noise))
    assert 0.008 in state.grid and (0.008, 1) in losses
    assert state.complete and state.best in state.full_cells(spec.seeds)
    assert state.best not in (min(state.grid), max(state.grid)) or state.status == "at the cap"


def test_the_plan_only_grows_as_results_arrive():
    spec = SweepSpec(initial=(1e-3, 2e-3, 4e-3), seeds=(0, 1, 2))
    loss_of, losses, seen = _bowl(0.01), {}, []
    while not (state := bracket(spec, losses)).complete:
        assert list(state.cells[: len(seen)]) == seen
        seen = list(state.cells)
        losses.update({c: loss_of(*c) for c in state.cells if c not in losses})


def test_choose_takes_the_lowest_mean_and_cell_means_keeps_only_complete_cells():
    assert choose({1e-3: [2.0, 2.2], 2e-3: [2.05, 2.05]}) == 2e-3
    cells = {1e-3: {0: 1.0, 1: 3.0}, 2e-3: {0: 5.0}}
    assert cell_means(cells, [0, 1]) == {1e-3: 2.0}
    assert cell_means(cells, [1, 1]) == {1e-3: 3.0}


def test_the_selection_aware_interval_widens_when_the_choice_is_uncertain():
    # Two cells whose means tie and whose seeds disagree: the statistic "best loss" depends on the choice.
    rng = np.random.default_rng(0)
    seeds = list(range(6))
    tied = {1e-3: {s: 1.0 + 0.05 * rng.standard_normal() for s in seeds},
            2e-3: {s: 1.0 + 0.05 * rng.standard_normal() for s in seeds}}
    clear = {1e-3: tied[1e-3], 2e-3: {s: 9.0 for s in seeds}}

    def best_loss(groups):
        means = groups[0]["a"]
        return np.array([means[choose({lr: [m] for lr, m in means.items()})]])

    point_t, low_t, high_t = selection_bootstrap([{"a": tied}], seeds, best_loss, samples=500)
    point_c, low_c, high_c = selection_bootstrap([{"a": clear}], seeds, best_loss, samples=500)
    assert point_t[0] == pytest.approx(min(np.mean(list(v.values())) for v in tied.values()))
    # choosing the minimum of two noisy cells in every resample biases the resampled minimum downwards
    assert low_t[0] < low_c[0] and high_t[0] <= high_c[0] + 1e-12


def test_the_bootstrap_draws_the_same_seeds_for_every_arm_of_a_group():
    seeds = [0, 1, 2, 3]
    a = {1e-3: {s: float(s) for s in seeds}}
    b = {1e-3: {s: float(s) + 0.5 for s in seeds}}  # b − a = 0.5 for every seed: a paired statistic has no spread

    def gap(groups):
        return np.array([groups[0]["b"][1e-3] - groups[0]["a"][1e-3]])

    point, low, high = selection_bootstrap([{"a": a, "b": b}], seeds, gap, samples=300)
    assert point[0] == low[0] == high[0] == pytest.approx(0.5)
