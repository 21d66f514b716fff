"""Parity with torch.optim.Muon and torch.optim.AdamW on the same inputs over several steps."""

import math

import pytest
import torch
from torch import nn

from muonlab.optim import Muon


def randn(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def rel(a, b):
    return float((a - b).double().norm() / b.double().norm())


# ---- Muon groups vs torch.optim.Muon -------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 48)], ids=str)
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
@pytest.mark.parametrize("scale, adjust_lr_fn", [("moonlight", "match_rms_adamw"), ("keller", None)])
def test_muon_matches_torch_muon(scale, adjust_lr_fn, nesterov, shape):
    # torch keeps the EMA buffer μB + (1 − μ)g, we keep the papers' sum μM + g; the NS input differs
    # by the constant (1 − μ), which the Frobenius normalisation removes. Both run NS in bf16 with
    # different (equally valid) rounding, so "bf16 tolerance" is measured, not guessed: the two
    # may differ by at most twice torch's own distance from the same algorithm run in float64.
    adjust = {"moonlight": lambda A, B: 0.2 * math.sqrt(max(A, B)),
              "keller": lambda A, B: math.sqrt(max(1.0, A / B))}[scale]
    W0 = randn(*shape, seed=0)
    ours, theirs = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    lr, wd = 0.02, 0.1
    o1 = Muon([ours], algorithm="muon", lr=lr, weight_decay=wd, scale=scale, nesterov=nesterov,
              ns_method="standard")
    o2 = torch.optim.Muon([theirs], lr=lr, weight_decay=wd, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    for t in range(6):
        g = randn(*shape, seed=10 + t)
        ours.grad, theirs.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    grads = [randn(*shape, seed=10 + t).double() for t in range(6)]
    exact = torch_style_muon_fp32(W0.double(), grads, lr=lr, wd=wd, mu=0.95, nesterov=nesterov, adjust=adjust)
    torch_bf16_error = rel(theirs.detach().double() - W0, exact - W0)
    err = rel(ours.detach() - W0, theirs.detach() - W0)
    assert torch_bf16_error < 5e-2, torch_bf16_error
    assert err < 2 * torch_bf16_error, (err, torch_bf16_error)


def torch_style_muon_fp32(W, grads, *, lr, wd, mu, nesterov, adjust):
    """torch.optim.Muon's algorithm (EMA buffer via lerp, NS with norm.clamp(eps)) in W's dtype."""
    a, b, c = 3.4445, -4.7750, 2.0315
    W, buf = W.clone(), torch.zeros_like(W)
    for g in grads:
        buf.lerp_(g, 1 - mu)
        u = g.lerp(buf, mu) if nesterov else buf.clone()
        X = u.T if u.shape[0] > u.shape[1] else u
        X = X / X.norm().clamp(min=1e-7)
        for _ in range(5):
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        if u.shape[0] > u.shape[1]:
            X = X.T
        W.mul_(1 - lr * wd)
        W.add_(X, alpha=-lr * adjust(*W.shape))
    return W


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)], ids=str)
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
@pytest.mark.parametrize("scale", ["moonlight", "keller"])
def test_muon_matches_torch_algorithm_in_fp32(scale, nesterov, shape):
    # With NS in fp32 the sum-vs-EMA difference must vanish to fp32 rounding.
    adjust = {"moonlight": lambda A, B: 0.2 * math.sqrt(max(A, B)),
              "keller": lambda A, B: math.sqrt(max(1.0, A / B))}[scale]
    W0 = randn(*shape, seed=1)
    grads = [randn(*shape, seed=20 + t) for t in range(6)]
    expected = torch_style_muon_fp32(W0, grads, lr=0.02, wd=0.1, mu=0.95, nesterov=nesterov, adjust=adjust)
    p = nn.Parameter(W0.clone())
    opt = Muon([p], algorithm="muon", lr=0.02, weight_decay=0.1, scale=scale, nesterov=nesterov,
               ns_dtype=torch.float32, ns_method="standard")
    for g in grads:
        p.grad = g.clone()
        opt.step()
    err = rel(p.detach() - W0, expected - W0)
    assert err < 2e-5, err  # measured ≤ 2.2e-6


# ---- AdamW groups vs torch.optim.AdamW -----------------------------------------------------------


@pytest.mark.parametrize("measure", [False, True], ids=["plain", "telemetry"])
@pytest.mark.parametrize(
    "betas, eps, wd", [((0.9, 0.95), 1e-8, 0.1), ((0.95, 0.95), 1e-6, 0.0), ((0.8, 0.999), 1e-8, 0.3)]
)
def test_adamw_groups_match_torch_adamw(betas, eps, wd, measure):
    shapes = [(16,), (8, 12), (3, 4, 5)]
    init = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    ours = [nn.Parameter(w.clone()) for w in init]
    theirs = [nn.Parameter(w.clone()) for w in init]
    lr = 3e-3
    o1 = Muon(ours, algorithm="adamw", lr=lr, weight_decay=wd, adamw_betas=betas, adamw_eps=eps)
    o2 = torch.optim.AdamW(theirs, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for t in range(8):
        for k, (a, b) in enumerate(zip(ours, theirs)):
            g = randn(*a.shape, seed=100 * t + k)
            a.grad, b.grad = g.clone(), g.clone()
        if measure:
            o1.measure_next_step()
        o1.step()
        o2.step()
        for a, b, w in zip(ours, theirs, init):
            assert rel(a.detach() - w, b.detach() - w) <= 1e-6
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-8)
    for a, b in zip(ours, theirs):
        sa, sb = o1.state[a], o2.state[b]
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-6, atol=1e-12)
        assert float(sa["step"]) == float(sb["step"]) == 8


def test_adamw_group_overrides_match_separate_torch_optimizers():
    # Two AdamW groups with their own lr, betas and decay, and a Muon group beside them.
    a0, b0, m0 = randn(10, seed=1), randn(6, 4, seed=2), randn(8, 8, seed=3)
    a, b, m = nn.Parameter(a0.clone()), nn.Parameter(b0.clone()), nn.Parameter(m0.clone())
    ta, tb = nn.Parameter(a0.clone()), nn.Parameter(b0.clone())
    opt = Muon([
        {"params": [a], "algorithm": "adamw", "lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.0},
        {"params": [b], "algorithm": "adamw"},
        {"params": [m], "algorithm": "muon"},
    ], lr=2e-3, weight_decay=0.2, adamw_betas=(0.8, 0.9), adamw_eps=1e-7)
    ref_a = torch.optim.AdamW([ta], lr=1e-2, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.0)
    ref_b = torch.optim.AdamW([tb], lr=2e-3, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.2)
    for t in range(5):
        for k, (p, q) in enumerate([(a, ta), (b, tb)]):
            p.grad = randn(*p.shape, seed=50 + 10 * t + k)
            q.grad = p.grad.clone()
        m.grad = randn(8, 8, seed=90 + t)
        opt.step()
        ref_a.step()
        ref_b.step()
    torch.testing.assert_close(a.detach(), ta.detach(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(b.detach(), tb.detach(), rtol=1e-6, atol=1e-8)
