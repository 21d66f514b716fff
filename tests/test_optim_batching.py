"""Batching: expert stacks, same-shape buckets and mixed tall/wide buckets equal the per-matrix path."""

import pytest
import torch
from torch import nn

from muonlab.optim import Muon
from muonlab.optim.reference import reference_muon_step

DTYPES = [torch.float32, torch.bfloat16]


def randn(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def tol(dtype):
    # Batched and per-matrix runs do the same arithmetic; allow only rounding-order noise.
    return dict(rtol=0, atol=1e-6) if dtype == torch.float32 else dict(rtol=0, atol=1e-3)


@pytest.mark.parametrize("ns_method", ["standard", "gram", "auto"])
@pytest.mark.parametrize("ns_dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("orientation", ["wide", "tall"])
def test_expert_stack_equals_looping_2d_muon_over_experts(orientation, ns_dtype, ns_method):
    E, (A, B) = 4, ((12, 40) if orientation == "wide" else (40, 12))
    W0 = randn(E, A, B, seed=0)
    stack = nn.Parameter(W0.clone())
    experts = [nn.Parameter(W0[e].clone()) for e in range(E)]
    kw = dict(lr=0.05, weight_decay=0.1, ns_dtype=ns_dtype, ns_method=ns_method)
    o_stack = Muon([stack], algorithm="muon", **kw)
    # One optimizer per expert: each NS call is unbatched.
    o_loop = [Muon([p], algorithm="muon", **kw) for p in experts]
    for t in range(4):
        G = randn(E, A, B, seed=10 + t)
        stack.grad = G.clone()
        for e, p in enumerate(experts):
            p.grad = G[e].clone()
        o_stack.step()
        for o in o_loop:
            o.step()
    torch.testing.assert_close(stack.detach(), torch.stack([p.detach() for p in experts]), **tol(ns_dtype))


def test_expert_stack_matches_float64_reference():
    # Each expert is orthogonalized on its own and scaled with its own [A, B] (not [E·A, B]).
    E, A, B = 3, 16, 24
    W0 = randn(E, A, B, seed=1)
    p = nn.Parameter(W0.clone())
    opt = Muon([p], algorithm="muon", lr=0.1, weight_decay=0.0, ns_dtype=torch.float32, ns_method="svd")
    G = randn(E, A, B, seed=2)
    p.grad = G.clone()
    opt.step()
    W_ref, _ = reference_muon_step(
        W0, G, torch.zeros_like(G, dtype=torch.float64), lr=0.1, weight_decay=0.0, exact=True
    )
    torch.testing.assert_close(p.detach().double(), W_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("ns_dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_same_shape_bucket_equals_separate_optimizers(ns_dtype):
    # Five same-shape matrices in two groups with different lr / decay / scale share one NS call.
    init = [randn(16, 32, seed=i) for i in range(5)]
    batched = [nn.Parameter(w.clone()) for w in init]
    single = [nn.Parameter(w.clone()) for w in init]
    settings = [dict(lr=0.05, weight_decay=0.1, scale="moonlight"), dict(lr=0.01, weight_decay=0.0, scale="keller")]
    opt = Muon([{"params": batched[:3], **settings[0]}, {"params": batched[3:], **settings[1]}],
               algorithm="muon", ns_dtype=ns_dtype)
    singles = [
        Muon([p], algorithm="muon", ns_dtype=ns_dtype, **settings[0 if i < 3 else 1]) for i, p in enumerate(single)
    ]
    for t in range(3):
        for i, (a, b) in enumerate(zip(batched, single)):
            a.grad = randn(16, 32, seed=100 * t + i)
            b.grad = a.grad.clone()
        opt.step()
        for o in singles:
            o.step()
    for a, b in zip(batched, single):
        torch.testing.assert_close(a.detach(), b.detach(), **tol(ns_dtype))


@pytest.mark.parametrize("ns_method", ["standard", "gram", "svd"])
@pytest.mark.parametrize("ns_dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_tall_and_wide_in_one_bucket_equal_separate(ns_dtype, ns_method):
    # [24, 56] and [56, 24] fall into one bucket (both are 24×56 once oriented wide) together
    # with a [2, 56, 24] expert stack; each must come out as if optimized alone.
    shapes = [(24, 56), (56, 24), (2, 56, 24)]
    init = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    together = [nn.Parameter(w.clone()) for w in init]
    apart = [nn.Parameter(w.clone()) for w in init]
    kw = dict(algorithm="muon", lr=0.03, weight_decay=0.05, ns_dtype=ns_dtype, ns_method=ns_method)
    opt = Muon(together, **kw)
    opts = [Muon([p], **kw) for p in apart]
    for t in range(3):
        for i, (a, b) in enumerate(zip(together, apart)):
            a.grad = randn(*a.shape, seed=200 + 10 * t + i)
            b.grad = a.grad.clone()
        opt.step()
        for o in opts:
            o.step()
    for a, b in zip(together, apart):
        torch.testing.assert_close(a.detach(), b.detach(), **tol(ns_dtype))
