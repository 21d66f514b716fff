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
    ],
)
def test_rules_by_hand(rule, shape, expected):
    assert update_scale(rule, shape) == pytest.approx(expected, rel=1e-12)


def test_every_rule_has_a_hand_checked_case():
    assert set(SCALE_RULES) == {"moonlight", "keller", "spectral", "none"}


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

