"""Update-scale rules and the logical matrix shape; Moonlight Lemma 1 on the exact polar factor."""

import math

import pytest
import torch

from muonlab.optim import SCALE_RULES, logical_matrix_shape, update_scale
from muonlab.optim.reference import reference_polar


@pytest.mark.parametrize(
    "rule, shape, expected",
    [
        # moonlight: 0.2·sqrt(max(A, B)) (Moonlight Eq. 4), hand-computed.
        ("moonlight", (64, 256), 0.2 * 16.0),
        ("moonlight", (256, 64), 0.2 * 16.0),
        ("moonlight", (100, 100), 2.0),
        ("moonlight", (8, 16, 36), 0.2 * 6.0),  # experts: per-expert [16, 36]
        ("moonlight", (32, 8, 3, 3), 0.2 * math.sqrt(72)),  # conv: (32, 8·3·3)
        # keller: sqrt(max(1, A/B)) (torch.optim.Muon's default).
        ("keller", (256, 64), 2.0),
        ("keller", (64, 256), 1.0),
        ("keller", (4, 36, 9), 2.0),
        # spectral: sqrt(fan_out / fan_in).
        ("spectral", (64, 256), 0.5),
        ("spectral", (256, 64), 2.0),
        ("none", (256, 64), 1.0),
        # min_side: 0.2·sqrt(min(A, B)) — Table 1's Baseline 0.2·√H on [H, H] and [H, 4H], [4H, H].
        ("min_side", (64, 64), 0.2 * 8.0),
        ("min_side", (64, 256), 0.2 * 8.0),
        ("min_side", (256, 64), 0.2 * 8.0),
        ("min_side", (8, 16, 36), 0.2 * 4.0),  # experts: per-expert [16, 36]
        # update_norm: the factor is the target RMS itself (it multiplies O / RMS(O)).
        ("update_norm", (64, 256), 0.2),
        ("update_norm", (3, 40), 0.2),
    ],
)
def test_rules_by_hand(rule, shape, expected):
    assert update_scale(rule, shape) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "rule, shape, update_rms, expected",
    [
        ("moonlight", (64, 256), 0.05, 0.05 * 16.0),
        ("moonlight", (256, 64), 0.8, 0.8 * 16.0),
        ("min_side", (64, 256), 0.4, 0.4 * 8.0),
        ("min_side", (9, 25), 0.1, 0.1 * 3.0),
        ("update_norm", (64, 256), 0.4, 0.4),
    ],
)
def test_target_rms_rules_scale_with_update_rms(rule, shape, update_rms, expected):
    assert update_scale(rule, shape, update_rms=update_rms) == pytest.approx(expected, rel=1e-12)


def test_every_rule_has_a_hand_checked_case():
    assert set(SCALE_RULES) == {"moonlight", "min_side", "update_norm", "keller", "spectral", "none"}
    assert {name for name, rule in SCALE_RULES.items() if rule.uses_update_rms} == {"moonlight", "min_side",
                                                                                     "update_norm"}
    assert {name for name, rule in SCALE_RULES.items() if rule.normalizes} == {"update_norm"}


@pytest.mark.parametrize("rule", ["keller", "spectral", "none"])
def test_rules_without_a_target_rms_refuse_another_update_rms(rule):
    assert update_scale(rule, (4, 4), update_rms=0.2) == update_scale(rule, (4, 4))
    with pytest.raises(ValueError, match=rf"update_rms=0.4 has no effect under scale rule '{rule}'.*moonlight"):
        update_scale(rule, (4, 4), update_rms=0.4)


@pytest.mark.parametrize("bad", [0.0, -0.2, float("nan"), float("inf"), True, "0.2"])
def test_update_rms_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="update_rms must be a positive number"):
        update_scale("moonlight", (4, 4), update_rms=bad)


@pytest.mark.parametrize(
    "shape, logical",
    [((5, 7), (5, 7)), ((3, 5, 7), (5, 7)), ((16, 4, 3, 3), (16, 36)), ((8, 2, 3, 3, 3), (8, 54))],
)
def test_logical_matrix_shape(shape, logical):
    assert logical_matrix_shape(shape) == logical


def test_unknown_rule_and_vector_shape_are_refused():
    with pytest.raises(ValueError, match=r"unknown scale rule 'adam'.*moonlight"):
        update_scale("adam", (4, 4))
    with pytest.raises(ValueError, match=r"at least 2 dimensions.*\(7,\)"):
        logical_matrix_shape((7,))


@pytest.mark.parametrize("shape", [(64, 64), (64, 256), (256, 64), (128, 512), (3, 40)])
def test_lemma1_rms_of_polar_factor(shape):
    # Moonlight Lemma 1: a full-rank [A, B] has RMS(U Vᵀ) = sqrt(1 / max(A, B)), so the
    # moonlight scale turns it into exactly 0.2.
    g = torch.Generator().manual_seed(sum(shape))
    O = reference_polar(torch.randn(*shape, generator=g, dtype=torch.float64))
    rms = float(O.pow(2).mean().sqrt())
    assert rms == pytest.approx(math.sqrt(1 / max(shape)), rel=1e-10)
    assert update_scale("moonlight", shape) * rms == pytest.approx(0.2, rel=1e-10)

