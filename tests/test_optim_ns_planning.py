"""Newton–Schulz planning: Gram restart segments, FLOP counts, the form ``auto`` picks, and the
Polar Express coefficients.

Every expected value is worked out by hand in the comments (or copied from the paper), never
computed by the functions under test. ``ns_flops`` is also checked against the matmul FLOPs that
``torch.utils.flop_counter`` counts while ``orthogonalize`` runs, so the model of the cost that
``auto`` and the distributed work split rely on is the cost actually paid.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from muonlab.optim import get_coefficient_set, ns_flops, orthogonalize
from muonlab.optim.newton_schulz import GRAM_MIN_ROWS_HALF, choose_method

# ---- Gram restart segments -----------------------------------------------------------------------

# A segment ends before the product of its a_k would exceed 16.
# jordan, a = 3.4445: 3.4445² = 11.86 ≤ 16 but 3.4445³ = 40.9 > 16, so segments of 2 steps.
# polar_express, a_k = raw a_k / 1.01 = 8.2052, 4.0664, 3.9096, 3.2856, 2.2779, 1.8726, 1.8564,
# then 1.875: 8.21 · 4.07 = 33.4 > 16 | 4.0664 · 3.9096 = 15.90 ≤ 16, · 3.29 > 16 |
# 3.2856 · 2.2779 · 1.8726 = 14.01, · 1.8564 > 16 | 1.8564 · 1.875³ = 12.24, · 1.875 > 16 | ...
SEGMENTS = [
    ("jordan", 1, [1]),
    ("jordan", 2, [2]),
    ("jordan", 3, [2, 1]),
    ("jordan", 5, [2, 2, 1]),
    ("jordan", 6, [2, 2, 2]),
    ("polar_express", 1, [1]),
    ("polar_express", 3, [1, 2]),
    ("polar_express", 5, [1, 2, 2]),
    ("polar_express", 6, [1, 2, 3]),
    ("polar_express", 10, [1, 2, 3, 4]),
    ("polar_express", 12, [1, 2, 3, 4, 2]),
]


@pytest.mark.parametrize("cset, steps, expected", SEGMENTS)
def test_gram_segments(cset, steps, expected):
    assert get_coefficient_set(cset).gram_segments(steps) == expected


def test_gram_segments_refuse_nonpositive_steps():
    with pytest.raises(ValueError, match="ns_steps must be a positive integer"):
        get_coefficient_set("jordan").gram_segments(0)


# ---- FLOP counts -----------------------------------------------------------------------------------

# Standard form, wide m × n, per step: XXᵀ 2m²n + A² 2m³ + BX 2m²n.
# m = 64, n = 256: 4·64²·256 + 2·64³ = 4 194 304 + 524 288 = 4 718 592 per step.
# Gram form: per segment of L steps, A = XXᵀ (2m²n) and Q·X (2m²n), plus 2m³ for each of the
# L products A², the L − 1 products Q ← PQ and the 2(L − 1) of A ← P(PA): 4m²n + 2m³(4L − 3).
# jordan 5 = [2, 2, 1] and polar_express 5 = [1, 2, 2] both give 12m²n + 22m³
#   = 12·1 048 576 + 22·262 144 = 12 582 912 + 5 767 168 = 18 350 080 at 64 × 256;
# jordan 3 = [2, 1]: 8m²n + 12m³ = 8 388 608 + 3 145 728 = 11 534 336;
# jordan 1 = [1]: 4m²n + 2m³ = the standard form's one step.
FLOPS = [
    (64, 256, 5, "standard", "jordan", 5 * 4_718_592),
    (256, 64, 5, "standard", "jordan", 5 * 4_718_592),  # tall: the small side is what counts
    (64, 256, 1, "standard", "polar_express", 4_718_592),
    (64, 256, 5, "gram", "jordan", 18_350_080),
    (256, 64, 5, "gram", "polar_express", 18_350_080),
    (64, 256, 3, "gram", "jordan", 11_534_336),
    (64, 256, 1, "gram", "jordan", 4_718_592),
    # 64 × 64, 5 steps: standard 5·(4 + 2)·64³ = 7 864 320; gram (12 + 22)·64³ = 8 912 896.
    (64, 64, 5, "standard", "jordan", 7_864_320),
    (64, 64, 5, "gram", "jordan", 8_912_896),
]


@pytest.mark.parametrize("m, n, steps, method, cset, expected", FLOPS)
def test_ns_flops_by_hand(m, n, steps, method, cset, expected):
    assert ns_flops(m, n, steps, method, cset) == expected


def test_ns_flops_names_an_unknown_method():
    with pytest.raises(ValueError, match=r"ns_flops knows methods 'standard' and 'gram', got 'svd'"):
        ns_flops(4, 8, 5, "svd")


@pytest.mark.parametrize("cset, steps", [("jordan", 5), ("polar_express", 5), ("polar_express", 6)])
@pytest.mark.parametrize("method", ["standard", "gram"])
@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (64, 64), (3, 64, 200)])
def test_ns_flops_equal_the_matmul_flops_orthogonalize_performs(shape, method, cset, steps):
    batch = shape[0] if len(shape) == 3 else 1
    m, n = min(shape[-2:]), max(shape[-2:])
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        orthogonalize(G, cset, steps, torch.bfloat16, method=method)
    assert counter.get_total_flops() == batch * ns_flops(m, n, steps, method, cset)


# ---- which form runs -------------------------------------------------------------------------------

# auto, 5 steps (either set): gram 12m²n + 22m³ < standard 20m²n + 10m³  ⇔  12m³ < 8m²n  ⇔  n > 1.5m.
# At m = 64 the break-even is n = 96 (equal cost: standard is kept), so 97 is the first Gram width.
CHOICES = [
    # (method, m, n, dtype, expected)
    ("standard", 256, 1024, torch.bfloat16, "standard"),
    ("svd", 256, 1024, torch.bfloat16, "svd"),
    ("gram", 64, 64, torch.float32, "gram"),  # asked for: always honoured where safe
    ("gram", 4, 8, torch.float32, "gram"),
    ("gram", 4, 8, torch.float64, "gram"),
    ("gram", 63, 1024, torch.bfloat16, "standard"),  # below GRAM_MIN_ROWS_HALF in half precision
    ("gram", 63, 1024, torch.float16, "standard"),
    ("gram", 64, 1024, torch.bfloat16, "gram"),
    ("auto", 63, 1024, torch.bfloat16, "standard"),
    ("auto", 64, 1024, torch.bfloat16, "gram"),
    ("auto", 64, 96, torch.bfloat16, "standard"),
    ("auto", 64, 97, torch.bfloat16, "gram"),
    ("auto", 64, 64, torch.bfloat16, "standard"),
    ("auto", 768, 3072, torch.bfloat16, "gram"),
    ("auto", 4, 6, torch.float32, "standard"),  # fp32: no row minimum, only cost (n > 1.5m)
    ("auto", 4, 7, torch.float32, "gram"),
]


@pytest.mark.parametrize("method, m, n, dtype, expected", CHOICES)
@pytest.mark.parametrize("cset", ["jordan", "polar_express"])
def test_choose_method(method, m, n, dtype, expected, cset):
    assert choose_method(method, m, n, 5, dtype, cset) == expected


def test_the_half_precision_gram_minimum_is_64_rows():
    assert GRAM_MIN_ROWS_HALF == 64


# ---- coefficient sets --------------------------------------------------------------------------------

# Amsel, Persson, Musco, Gower, "The Polar Express" (arXiv 2505.16932), Algorithm 1: the degree-5
# coefficients, of which all but the last are divided by the safety factor 1.01 as (a/1.01,
# b/1.01³, c/1.01⁵), and X₀ = G / (1.01·‖G‖_F + 1e-7). Values copied from the paper's listing.
PAPER_POLAR_EXPRESS = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),  # "subsequent coeffs equal this numerically"
]


def test_polar_express_coefficients_are_the_papers():
    safe = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in PAPER_POLAR_EXPRESS[:-1]] + PAPER_POLAR_EXPRESS[-1:]
    cset = get_coefficient_set("polar_express")
    assert cset.norm_margin == 1.01
    schedule = cset.schedule(10)
    assert len(cset.polynomials) == 8
    for k, (got, expected) in enumerate(zip(schedule, safe + [safe[-1]] * 2)):
        assert got == pytest.approx(expected, rel=1e-15, abs=0), f"step {k}"
    # The last is the classical degree-5 Newton–Schulz polynomial (15x − 10x³ + 3x⁵)/8, exactly.
    assert schedule[-1] == (15 / 8, -10 / 8, 3 / 8)


def test_jordan_coefficients_and_margin():
    cset = get_coefficient_set("jordan")
    assert cset.polynomials == ((3.4445, -4.7750, 2.0315),) and cset.norm_margin == 1.0
