"""The full Muon step against `reference_muon_step` (float64), weight decay, update RMS, conv weights."""

import math

import pytest
import torch
from torch import nn

from muonlab.optim import Muon, param_groups
from muonlab.optim.reference import reference_muon_step, reference_newton_schulz, reference_polar


def randn(*shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def run_against_reference(shape, *, dtype, ns_dtype, ns_method, nesterov, scale, coefficients="jordan",
                          steps=5, lr=0.05, wd=0.1, exact=False):
    """Run Muon and the float64 reference side by side; return (param, ref_param, momentum, ref_momentum)."""
    W0 = randn(*shape, seed=0, dtype=dtype)
    p = nn.Parameter(W0.clone())
    opt = Muon([p], algorithm="muon", lr=lr, weight_decay=wd, nesterov=nesterov, scale=scale,
               ns_dtype=ns_dtype, ns_method=ns_method, ns_coefficients=coefficients)
    W_ref, M_ref = W0.double(), torch.zeros(shape, dtype=torch.float64)
    for t in range(steps):
        g = randn(*shape, seed=100 + t, dtype=dtype)
        p.grad = g.clone()
        opt.step()
        W_ref, M_ref = reference_muon_step(W_ref, g, M_ref, lr=lr, weight_decay=wd, nesterov=nesterov,
                                           scale=scale, coefficients=coefficients, exact=exact)
    return p.detach(), W_ref, opt.state[p]["momentum_buffer"], M_ref


SHAPES = [(24, 40), (40, 24), (3, 16, 24), (12, 4, 3, 3)]
SHAPE_IDS = ["wide", "tall", "experts", "conv"]


@pytest.mark.parametrize("scale", ["moonlight", "keller", "spectral"])
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
@pytest.mark.parametrize("ns_method", ["standard", "gram"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_fp64_step_equals_reference(shape, ns_method, nesterov, scale):
    # float64 params and ns_dtype=float64: the fast path computes the reference's arithmetic,
    # so five steps (momentum, Nesterov, NS, scale, decay) must agree to rounding.
    W, W_ref, M, M_ref = run_against_reference(shape, dtype=torch.float64, ns_dtype=torch.float64,
                                               ns_method=ns_method, nesterov=nesterov, scale=scale)
    torch.testing.assert_close(M.double(), M_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(W, W_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("scale", ["moonlight", "keller", "spectral", "none"])
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_fp32_step_matches_reference(shape, nesterov, scale):
    # The wiring (momentum form, Nesterov input, orientation, scale, decay) at fp32 precision.
    lr = 0.05
    W, W_ref, M, M_ref = run_against_reference(shape, dtype=torch.float32, ns_dtype=torch.float32,
                                               ns_method="standard", nesterov=nesterov, scale=scale, lr=lr)
    assert M.dtype == torch.float32
    torch.testing.assert_close(M.double(), M_ref, rtol=1e-5, atol=1e-5)
    # Compare the accumulated change, not the weights, so the tolerance means something.
    W0 = randn(*shape, seed=0).double()
    delta, delta_ref = W.double() - W0, W_ref - W0
    err = float((delta - delta_ref).norm() / delta_ref.norm())
    assert err < 1e-4, err


@pytest.mark.parametrize("coefficients", ["jordan", "polar_express"])
def test_bf16_default_step_is_close_to_reference(coefficients):
    W, W_ref, _, _ = run_against_reference((32, 48), dtype=torch.float32, ns_dtype=torch.bfloat16,
                                           ns_method="auto", nesterov=True, scale="moonlight",
                                           coefficients=coefficients)
    W0 = randn(32, 48, seed=0).double()
    err = float(((W.double() - W0) - (W_ref - W0)).norm() / (W_ref - W0).norm())
    assert err < 3e-2, err


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_svd_step_equals_exact_reference(shape):
    W, W_ref, _, _ = run_against_reference(shape, dtype=torch.float32, ns_dtype=torch.float32,
                                           ns_method="svd", nesterov=True, scale="moonlight", exact=True)
    W0 = randn(*shape, seed=0).double()
    err = float(((W.double() - W0) - (W_ref - W0)).norm() / (W_ref - W0).norm())
    assert err < 1e-5, err


# ---- weight decay --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["moonlight", "keller"])
def test_zero_gradient_only_decays_with_the_unscaled_lr(scale):
    # A zero gradient gives zero momentum and NS(0) = 0, so only the decay acts:
    # p ← p·(1 − lr·λ) with the *unscaled* lr (Moonlight Eq. 4; PAPERS §5.3 pitfall 4),
    # though s(A, B) = 0.2·sqrt(64) = 1.6 (moonlight) or 2 (keller) here.
    lr, wd = 0.1, 0.3
    W0 = randn(64, 16, seed=1)
    muon_p, adam_p = nn.Parameter(W0.clone()), nn.Parameter(randn(16, seed=2))
    adam_W0 = adam_p.detach().clone()
    opt = Muon([{"params": [muon_p], "algorithm": "muon"}, {"params": [adam_p], "algorithm": "adamw"}],
               lr=lr, weight_decay=wd, scale=scale)
    for step in range(1, 4):
        muon_p.grad, adam_p.grad = torch.zeros_like(muon_p), torch.zeros_like(adam_p)
        opt.step()
        factor = (1 - lr * wd) ** step  # 0.97^step
        torch.testing.assert_close(muon_p.detach(), W0 * factor, rtol=1e-6, atol=0)
        torch.testing.assert_close(adam_p.detach(), adam_W0 * factor, rtol=1e-6, atol=0)


def test_decay_is_decoupled_from_the_update():
    # With the same gradient, the runs with and without decay differ by exactly lr·λ·W0 after one
    # step (decoupled decay: the orthogonalized update does not see λ).
    lr, wd = 0.02, 0.5
    W0, G = randn(32, 48, seed=3), randn(32, 48, seed=4)
    after = {}
    for decay in (0.0, wd):
        p = nn.Parameter(W0.clone())
        p.grad = G.clone()
        Muon([p], algorithm="muon", lr=lr, weight_decay=decay, ns_dtype=torch.float32).step()
        after[decay] = p.detach()
    torch.testing.assert_close(after[0.0] - after[wd], lr * wd * W0, rtol=1e-4, atol=1e-7)


def test_params_without_grad_are_untouched():
    a, b = nn.Parameter(randn(8, 8, seed=5)), nn.Parameter(randn(8, 8, seed=6))
    b0 = b.detach().clone()
    opt = Muon([a, b], algorithm="muon", lr=0.1, weight_decay=0.1)
    a.grad = randn(8, 8, seed=7)
    opt.step()
    assert torch.equal(b.detach(), b0) and b not in opt.state


# ---- update RMS (Moonlight Lemma 1 and the 0.2 matching) -----------------------------------------

RMS_SHAPES = [(64, 64), (64, 256), (256, 64), (128, 512), (4, 32, 96), (32, 8, 3, 3)]


def one_step_update_rms(shape, seed, **kw):
    W0 = randn(*shape, seed=seed)
    p = nn.Parameter(W0.clone())
    p.grad = randn(*shape, seed=seed + 1)
    lr = 1.0
    Muon([p], algorithm="muon", lr=lr, weight_decay=0.0, **kw).step()
    return float(((W0 - p.detach()) / lr).double().pow(2).mean().sqrt())


@pytest.mark.parametrize("shape", RMS_SHAPES, ids=str)
def test_moonlight_update_rms_is_about_0p2_with_newton_schulz(shape):
    # Default settings (bf16, jordan, 5 steps): NS leaves singular values in ≈[0.7, 1.2], so the RMS
    # is 0.2 times RMS(NS)/RMS(U Vᵀ), measured 0.78–0.90 on Gaussians (lowest for aspect ratio 3,
    # e.g. 32×96: 0.80 in fp32, 0.78 in bf16 gram), i.e. 0.156–0.18; never above 0.2·1.05.
    rms = one_step_update_rms(shape, seed=10)
    assert 0.15 <= rms <= 0.21, rms


@pytest.mark.parametrize("shape", RMS_SHAPES, ids=str)
def test_moonlight_update_rms_is_exactly_0p2_with_svd(shape):
    rms = one_step_update_rms(shape, seed=20, ns_method="svd")
    assert rms == pytest.approx(0.2, abs=1e-6)


def test_keller_update_rms_follows_lemma1():
    # keller: s = 1 for a wide matrix, so RMS = RMS(U Vᵀ) = sqrt(1/max(A, B)).
    rms = one_step_update_rms((64, 256), seed=30, ns_method="svd", scale="keller")
    assert rms == pytest.approx(math.sqrt(1 / 256), rel=1e-5)


# ---- conv weights: one (out, in·k…) matrix -------------------------------------------------------


@pytest.mark.parametrize(
    "conv", [nn.Conv2d(6, 16, 3), nn.Conv1d(4, 8, 3), nn.Conv3d(2, 8, 2)],
    ids=["conv2d", "conv1d", "conv3d"],
)
def test_conv_weight_is_one_matrix_out_by_fan_in(conv):
    # DESIGN: "A conv weight is viewed as (out, -1). The scale always uses the logical matrix
    # shape." Whatever the number of kernel dims, the update is the polar factor of
    # grad.reshape(out, -1) times 0.2·sqrt(max(out, in·prod(kernel))).
    torch.manual_seed(0)
    model = nn.Sequential(conv)
    w = conv.weight
    out, fan_in = w.shape[0], math.prod(w.shape[1:])
    W0 = w.detach().clone()
    w.grad = randn(*w.shape, seed=40)
    conv.bias.grad = torch.zeros_like(conv.bias)
    Muon(param_groups(model), lr=1.0, weight_decay=0.0, ns_method="svd", ns_dtype=torch.float32,
         momentum=0.0).step()
    update = (W0 - w.detach()).reshape(out, fan_in).double()
    expected = 0.2 * math.sqrt(max(out, fan_in)) * reference_polar(w.grad.reshape(out, fan_in))
    torch.testing.assert_close(update, expected, rtol=0, atol=1e-5)


def test_conv_weight_with_newton_schulz_matches_reference_on_the_flattened_matrix():
    w = nn.Parameter(randn(16, 6, 3, 3, seed=41))
    W0 = w.detach().clone()
    w.grad = randn(16, 6, 3, 3, seed=42)
    Muon([w], algorithm="muon", lr=1.0, weight_decay=0.0, momentum=0.0, ns_dtype=torch.float32,
         ns_method="standard").step()
    expected = 0.2 * math.sqrt(54) * reference_newton_schulz(w.grad.reshape(16, 54), "jordan", 5)
    torch.testing.assert_close((W0 - w.detach()).reshape(16, 54).double(), expected, rtol=0, atol=1e-5)


def test_svd_method_in_muon_is_the_exact_polar_factor_of_the_momentum():
    # ns_method="svd" promises the exact polar factor (computed in fp32 unless ns_dtype is fp64),
    # whatever ns_dtype is left at: with the default bf16 ns_dtype the direction must still be
    # U Vᵀ of the fp32 momentum, not of a bf16-rounded copy (which is off by ~1e-3).
    G = randn(16, 54, seed=43)
    p = nn.Parameter(torch.zeros(16, 54))
    p.grad = G.clone()
    Muon([p], algorithm="muon", lr=1.0, weight_decay=0.0, momentum=0.0, ns_method="svd").step()
    expected = -0.2 * math.sqrt(54) * reference_polar(G)
    torch.testing.assert_close(p.detach().double(), expected, rtol=0, atol=1e-5)


def test_momentum_of_a_float64_parameter_keeps_float64_precision():
    # "Momentum in fp32" is a floor for low-precision params, not a cap: a float64 parameter's
    # buffer must not round its gradients to fp32 (else the fp64 path cannot match the reference
    # beyond ~1e-8). After one step from zero, M = G exactly.
    G = randn(8, 12, seed=44, dtype=torch.float64)
    p = nn.Parameter(torch.zeros(8, 12, dtype=torch.float64))
    p.grad = G.clone()
    opt = Muon([p], algorithm="muon", lr=0.1, ns_method="svd", ns_dtype=torch.float64)
    opt.step()
    M = opt.state[p]["momentum_buffer"]
    assert M.dtype == torch.float64, M.dtype
    assert torch.equal(M, G)
