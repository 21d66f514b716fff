"""The muP coordinate check (``muonlab.experiments.coord_check``): after 3 Muon steps at one learning rate,
no activation's RMS grows with the width under muP, and the logits' RMS is flat; under SP the same check
fails (the hidden blocks' outputs grow like width^1–1.6 and the logits like width^0.3–0.7).

"Flat" is judged by the least-squares slope of log RMS against log width over d ∈ {64, 128, 256, 512}
(dense) and {64, 128, 256} (the MLA + MoE model). Under muP the hidden blocks' outputs may *decline*
slowly with width (slopes ≈ −0.1 … −0.3 after 3 steps): the table's hidden lr factor 1/m on top of
Muon's 0.2·sqrt(max(A, B)) makes hidden feature updates shrink like 1/√m (``muonlab.models.mup``).
What muP must prevent, and SP shows, is growth.
"""

from __future__ import annotations

import pytest

from muonlab.experiments.coord_check import coordinate_check, loglog_slope

DENSE_WIDTHS = (64, 128, 256, 512)
MOE_WIDTHS = (64, 128, 256)
MOE = dict(attention="mla", n_routed_experts=4, top_k=2, n_shared_experts=1, first_k_dense=1)
STEPS, LR = 3, 0.01


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here runs on one torch thread (see conftest.single_thread)."""


def _final_slopes(results: dict[int, list[dict[str, float]]]) -> dict[str, float]:
    widths = sorted(results)
    names = results[widths[0]][-1]
    return {name: loglog_slope(widths, [results[w][-1][name] for w in widths]) for name in names}


def assert_width_stable(results: dict[int, list[dict[str, float]]]) -> None:
    """The coordinate check: logits flat (|slope| < 0.2) and no activation growing (every slope < 0.2)."""
    slopes = _final_slopes(results)
    assert abs(slopes["logits"]) < 0.2, f"logits RMS scales like width^{slopes['logits']:.2f}"
    growing = {name: round(s, 2) for name, s in slopes.items() if s >= 0.2}
    assert not growing, f"activations whose RMS grows with width (log-log slopes): {growing}"


@pytest.mark.slow
@pytest.mark.parametrize("widths, fields", [(DENSE_WIDTHS, {}), (MOE_WIDTHS, MOE)], ids=["dense", "mla-moe"])
def test_coordinate_check_passes_under_mup_and_fails_under_sp(widths, fields):
    mup = coordinate_check("mup", widths, steps=STEPS, lr=LR, batch=4, **fields)
    sp = coordinate_check("sp", widths, steps=STEPS, lr=LR, batch=4, **fields)
    assert len(mup[widths[0]]) == STEPS + 1 and set(mup[widths[0]][-1]) == {
        "embedding", "attn/0", "mlp/0", "attn/1", "mlp/1", "logits"}

    assert_width_stable(mup)
    with pytest.raises(AssertionError, match="width"):
        assert_width_stable(sp)
    sp_slopes = _final_slopes(sp)
    assert min(sp_slopes[f"{kind}/{i}"] for kind in ("attn", "mlp") for i in (0, 1)) > 0.8
    if not fields:
        assert sp_slopes["logits"] > 0.3


def test_loglog_slope_recovers_known_powers():
    widths = [64, 128, 256, 512]
    assert loglog_slope(widths, [3.0 * w**0.5 for w in widths]) == pytest.approx(0.5, abs=1e-12)
    assert loglog_slope(widths, [2.0] * 4) == pytest.approx(0.0, abs=1e-12)
    assert loglog_slope(widths, [1.0 / w for w in widths]) == pytest.approx(-1.0, abs=1e-12)
