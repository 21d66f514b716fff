"""The studies' curve fits, on synthetic data whose parameters are known."""

import math

import numpy as np
import pytest

from muonlab.analysis.fits import (
    CriticalBatchFit,
    PowerLaw,
    bootstrap_compute_ratio,
    ema,
    equal_loss_compute_ratio,
    fit_critical_batch,
    fit_power_law,
    fit_saturating_power,
    token_optimal_batch,
    tokens_to_loss,
)

COMPUTE = np.logspace(15, 18, 5)


def test_power_law_recovers_its_parameters():
    fit = fit_power_law(COMPUTE, 2.608 * COMPUTE**-0.054)
    assert fit.a == pytest.approx(2.608, rel=1e-9) and fit.b == pytest.approx(-0.054, rel=1e-9)
    noisy = 2.608 * COMPUTE**-0.054 * np.exp(np.random.default_rng(0).normal(0, 1e-3, len(COMPUTE)))
    assert fit_power_law(COMPUTE, noisy).b == pytest.approx(-0.054, abs=2e-3)


def test_power_law_refuses_a_single_compute_value():
    with pytest.raises(ValueError, match="two distinct compute values"):
        fit_power_law([1e15, 1e15], [3.0, 3.1])


def test_equal_loss_ratio_of_a_shifted_curve_is_the_shift():
    adamw = PowerLaw(2.6, -0.05)
    muon = PowerLaw(2.6 * 2.0**-0.05, -0.05)  # reaches AdamW's loss at half the compute
    assert equal_loss_compute_ratio(muon, adamw, COMPUTE) == pytest.approx(np.full(len(COMPUTE), 0.5), rel=1e-9)


def test_equal_loss_ratio_of_the_moonlight_fits_drifts_as_the_paper_implies():
    # Table 3 in PFLOP/s-days; PAPERS.md §1.6 solved them by hand: ≈0.46 at 1 PF-day, ≈0.51 at 10.
    muon, adamw = PowerLaw(2.506, -0.052), PowerLaw(2.608, -0.054)
    ratio = equal_loss_compute_ratio(muon, adamw, [1.0, 10.0])
    assert ratio[0] == pytest.approx(0.46, abs=0.01) and ratio[1] == pytest.approx(0.51, abs=0.01)


def test_bootstrap_interval_contains_the_truth_and_collapses_without_noise():
    rng = np.random.default_rng(1)
    adamw_mean, muon_mean = 2.6 * COMPUTE**-0.05, 2.6 * (2.0 * COMPUTE) ** -0.05  # Muon at C = AdamW at 2C
    noisy = lambda mean: [m * (1 + rng.normal(0, 2e-3, 3)) for m in mean]  # noqa: E731
    at = [1e16, 1e17]
    point, lo, hi = bootstrap_compute_ratio(COMPUTE, noisy(muon_mean), noisy(adamw_mean), at, samples=500)
    assert np.all(lo <= 0.5) and np.all(hi >= 0.5) and np.all(lo < point) and np.all(point < hi)
    assert np.all(hi - lo < 0.5)
    exact = [[m] * 3 for m in muon_mean], [[a] * 3 for a in adamw_mean]
    point, lo, hi = bootstrap_compute_ratio(COMPUTE, *exact, at, samples=50)
    assert point == pytest.approx([0.5, 0.5], rel=1e-9) and lo == pytest.approx(hi, rel=1e-9)


def test_saturating_power_law_recovers_its_parameters():
    widths = np.array([64, 128, 256, 512, 1024, 2048])
    fit = fit_saturating_power(widths, 3.0 / widths**0.31 + 1.31)
    assert fit.alpha == pytest.approx(0.31, rel=1e-2)
    assert fit.E == pytest.approx(1.31, rel=1e-2)
    assert fit.A == pytest.approx(3.0, rel=3e-2)
    assert fit.r2 > 0.9999


def test_saturating_power_law_needs_three_widths():
    with pytest.raises(ValueError, match="at least three widths"):
        fit_saturating_power([64, 128], [3.0, 2.9])


def test_ema_is_bias_corrected():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([1.0, 3.0], 0.5)[1] == pytest.approx((0.5 * 0.5 * 1 + 0.5 * 3) / (1 - 0.25))


def test_tokens_to_loss_interpolates_between_logged_points():
    tokens, loss = [0, 100, 200, 300], [5.0, 4.0, 3.0, 2.5]
    assert tokens_to_loss(tokens, loss, 3.5) == pytest.approx(150.0)
    assert tokens_to_loss(tokens, loss, 5.5) == 0.0
    assert tokens_to_loss(tokens, loss, 2.0) == math.inf


def test_token_optimal_batch_takes_the_largest_batch_within_the_margin():
    assert token_optimal_batch([1, 2, 4, 8], [100, 99, 101.5, 130], margin=0.03) == 4
    assert token_optimal_batch([1, 2, 4, 8], [100, 99, 101.5, 130], margin=0.0) == 2


@pytest.mark.parametrize("critical, m", [(4096.0, -0.4), (16384.0, -0.7), (2048.0, 0.0)])
def test_critical_batch_fit_recovers_the_knee_and_slope(critical, m):
    truth = CriticalBatchFit(critical, math.log(2e7), m, 0.0)
    batches = np.logspace(math.log10(512), math.log10(65536), 9)
    noise = np.exp(np.random.default_rng(2).normal(0, 0.01, len(batches)))
    fit = fit_critical_batch(batches, truth.steps(batches) * noise)
    assert fit.critical_batch == pytest.approx(critical, rel=0.25)
    assert fit.m == pytest.approx(m, abs=0.06)
    assert fit.rmse < 0.02


def test_token_ratio_from_two_fits_follows_the_papers_piecewise_formula():
    adamw = CriticalBatchFit(2048.0, math.log(3e7), -0.3, 0.0)
    muon = CriticalBatchFit(8192.0, math.log(2.6e7), -0.5, 0.0)
    for b in (1024.0, 4096.0, 32768.0):  # below both knees, between them, above both (App. F)
        ratio = (adamw.steps(b) * b) / (muon.steps(b) * b)
        if b <= adamw.critical_batch:
            expected = math.exp(adamw.b1 - muon.b1)
        elif b <= muon.critical_batch:
            expected = math.exp(adamw.b2 - muon.b1) * b ** (adamw.m + 1)
        else:
            expected = math.exp(adamw.b2 - muon.b2) * b ** (adamw.m - muon.m)
        assert float(ratio) == pytest.approx(expected, rel=1e-9)
