"""The refinements of the Muon update — per-head blocks, NorMuon, cautious weight decay — against
float64 references written from the papers' formulas (``reference_variant_step``), with negative
controls that a wrong head count or a whole-matrix row statistic must fail; the plain step against a
composition of the pure functions (bit for bit); state save/resume; telemetry; validation."""

import math
import re

import pytest
import torch
from torch import nn

from muonlab.optim import Muon
from muonlab.optim.newton_schulz import orthogonalize
from muonlab.optim.reference import reference_adamw_step, reference_variant_step
from muonlab.optim.update_rule import decoupled_update_, momentum_, newton_schulz_input_

TOLERANCE = 1e-5  # relative error of the accumulated fp32 update against float64 (fp32 Newton–Schulz)


def randn(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _stored(shape, transposed):
    return (shape[1], shape[0]) if transposed else shape


def run_pair(shape, *, rows=None, cols=None, normuon=False, cautious=False, transposed=False, steps=5,
             ref_rows="same", ref_cols="same", lr=0.05, wd=0.1):
    """Muon (fp32 Newton–Schulz) and the float64 reference for ``steps`` steps on one logical ``shape``
    matrix; returns the relative error of the accumulated update and the final row states."""
    stored = _stored(shape, transposed)
    W0 = randn(*stored, seed=0)
    p = nn.Parameter(W0.clone())
    group = {"params": [p], "algorithm": "muon", "transposed": transposed}
    group.update({"blocks": list(rows)} if rows else {})
    group.update({"col_blocks": list(cols)} if cols else {})
    opt = Muon([group], lr=lr, weight_decay=wd, ns_dtype=torch.float32, ns_method="standard", normuon=normuon,
               cautious_wd=cautious)
    W, M, v = W0.double(), torch.zeros(stored, dtype=torch.float64), None
    for t in range(steps):
        g = randn(*stored, seed=100 + t)
        p.grad = g.clone()
        opt.step()
        W, M, v = reference_variant_step(W, g, M, v, lr=lr, weight_decay=wd, transposed=transposed,
                                         row_blocks=rows if ref_rows == "same" else ref_rows,
                                         col_blocks=cols if ref_cols == "same" else ref_cols,
                                         normuon=normuon, cautious=cautious)
    delta, delta_ref = p.detach().double() - W0.double(), W - W0.double()
    return float((delta - delta_ref).norm() / delta_ref.norm()), opt.state[p].get("normuon_v"), v


CASES = {
    # name: (logical shape, row block sizes, column block sizes)
    "heads-8x16": ((128, 96), (16,) * 8, None),
    "uneven-heads-5x16-nonsquare": ((80, 64), (16,) * 5, None),
    "gqa-fused-qkv": ((128, 64), (64, 32, 32), None),
    "gqa-fused-qkv-per-head": ((128, 64), (16,) * 8, None),
    "out-proj-columns": ((64, 96), None, (24,) * 4),
    "grid": ((96, 128), (48, 48), (64, 32, 32)),
    "whole-tall": ((160, 64), None, None),
}


@pytest.mark.parametrize("cautious", [False, True], ids=["wd", "cautious"])
@pytest.mark.parametrize("normuon", [False, True], ids=["muon", "normuon"])
@pytest.mark.parametrize("case", list(CASES))
def test_variant_equals_float64_reference(case, normuon, cautious):
    shape, rows, cols = CASES[case]
    err, v, v_ref = run_pair(shape, rows=rows, cols=cols, normuon=normuon, cautious=cautious)
    assert err < TOLERANCE, err
    if normuon:
        n_cols = len(cols) if cols else 1
        assert v.shape == (1, n_cols * shape[0])
        torch.testing.assert_close(v[0].double(), v_ref, rtol=1e-4, atol=1e-9)


def test_transposed_per_head_equals_reference():
    err, _, _ = run_pair((96, 64), rows=(32,) * 3, normuon=True, cautious=True, transposed=True)
    assert err < TOLERANCE, err


@pytest.mark.parametrize(("case", "wrong_rows", "wrong_cols"), [
    ("heads-8x16", (32,) * 4, None),                 # a wrong head count
    ("gqa-fused-qkv", (64, 64), None),               # the k|v boundary in the wrong place
    ("out-proj-columns", None, None),                # column blocks ignored
])
def test_wrong_blocks_fail(case, wrong_rows, wrong_cols):
    shape, rows, cols = CASES[case]
    err, _, _ = run_pair(shape, rows=rows, cols=cols, normuon=True, ref_rows=wrong_rows, ref_cols=wrong_cols)
    assert err > 100 * TOLERANCE, err


def test_normuon_is_not_plain_muon_and_cautious_is_not_plain_decay():
    # Negative controls of the reference comparison itself: dropping either refinement from the
    # reference must break the equality by far more than the tolerance.
    shape, rows, _ = CASES["uneven-heads-5x16-nonsquare"]
    W0 = randn(*shape, seed=0)
    for flags, ref_flags in (({"normuon": True}, {"normuon": False}), ({"cautious": True}, {"cautious": False})):
        p = nn.Parameter(W0.clone())
        opt = Muon([{"params": [p], "algorithm": "muon", "blocks": list(rows)}], lr=0.05, weight_decay=0.5,
                   ns_dtype=torch.float32, normuon=flags.get("normuon", False),
                   cautious_wd=flags.get("cautious", False))
        W, M, v = W0.double(), torch.zeros(shape, dtype=torch.float64), None
        for t in range(3):
            g = randn(*shape, seed=100 + t)
            p.grad = g.clone()
            opt.step()
            W, M, v = reference_variant_step(W, g, M, v, lr=0.05, weight_decay=0.5, row_blocks=rows, **ref_flags)
        err = float(((p.detach().double() - W0) - (W - W0)).norm() / (W - W0).norm())
        assert err > 100 * TOLERANCE, (flags, err)


def test_normuon_update_rms_is_the_target():
    # NorMuon's rescale makes every block's update RMS exactly 0.2 (the paper's η̂), whatever its shape.
    p = nn.Parameter(torch.zeros(128, 96))
    opt = Muon([{"params": [p], "algorithm": "muon", "blocks": [64, 32, 32]}], lr=1.0, weight_decay=0.0,
               ns_dtype=torch.float32, normuon=True)
    p.grad = randn(128, 96, seed=1)
    opt.measure_next_step()
    opt.step()
    for r0, r1 in ((0, 64), (64, 96), (96, 128)):
        assert math.isclose(float(p.detach()[r0:r1].pow(2).mean().sqrt()), 0.2, rel_tol=1e-5)
    t = opt.last_telemetry
    assert math.isclose(t["update_rms_block/min"], 0.2, rel_tol=1e-5)
    assert math.isclose(t["update_rms_block/max"], 0.2, rel_tol=1e-5)
    assert t["normuon/row_norm_cv/after"] < t["normuon/row_norm_cv/before"]


def test_plain_step_is_the_composition_of_the_pure_functions_bit_for_bit():
    # The refactored step, no refinement: M ← μM + G, X = G + μM, O = NS(X) (bf16), W ← W(1 − lrλ) − lr·s·O.
    shapes = [(64, 96), (96, 64), (64, 96)]
    params = [nn.Parameter(randn(*s, seed=i)) for i, s in enumerate(shapes)]
    opt = Muon(params, algorithm="muon", lr=0.02, weight_decay=0.1)
    Ws = [p.detach().clone() for p in params]
    Ms = [torch.zeros(s) for s in shapes]
    for t in range(3):
        grads = [randn(*s, seed=1000 * t + i) for i, s in enumerate(shapes)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for shape in {(64, 96), (96, 64)}:  # same-shape matrices are one batched call, as in the optimizer
            idx = [i for i, s in enumerate(shapes) if s == shape]
            X = torch.empty(len(idx), *shape, dtype=torch.bfloat16)
            for n, i in enumerate(idx):
                momentum_(Ms[i], grads[i], 0.95)
                newton_schulz_input_(X[n], grads[i], Ms[i], 0.95, True)
            O = orthogonalize(X, "jordan", 5, torch.bfloat16, 1e-7, "auto")
            for n, i in enumerate(idx):
                decoupled_update_(Ws[i], O[n], 0.02, 0.1, 0.2 * math.sqrt(max(shape)))
    for p, W in zip(params, Ws):
        assert torch.equal(p.detach(), W)


@pytest.mark.parametrize("cautious", [False, True])
def test_adamw_group_against_reference(cautious):
    W0 = randn(64, 80, seed=3)
    p = nn.Parameter(W0.clone())
    opt = Muon([{"params": [p], "algorithm": "adamw"}], lr=0.01, weight_decay=0.5, cautious_wd=cautious)
    W, m, v = W0.double(), torch.zeros(64, 80, dtype=torch.float64), torch.zeros(64, 80, dtype=torch.float64)
    for t in range(4):
        g = randn(64, 80, seed=200 + t)
        p.grad = g.clone()
        opt.step()
        W, m, v = reference_adamw_step(W, g, m, v, t + 1, lr=0.01, weight_decay=0.5, cautious=cautious)
    torch.testing.assert_close(p.detach().double(), W, rtol=0, atol=1e-6)
    if cautious:  # the control: plain decay is measurably different at this λ
        Wp = W0.double()
        mp, vp = torch.zeros_like(Wp), torch.zeros_like(Wp)
        for t in range(4):
            Wp, mp, vp = reference_adamw_step(Wp, randn(64, 80, seed=200 + t), mp, vp, t + 1, lr=0.01,
                                              weight_decay=0.5)
        assert float((Wp - W).abs().max()) > 1e-4


def test_cautious_telemetry_counts_decayed_coordinates():
    ps = [nn.Parameter(randn(64, 64, seed=0)), nn.Parameter(randn(64, seed=1))]
    opt = Muon([{"params": [ps[0]], "algorithm": "muon"}, {"params": [ps[1]], "algorithm": "adamw"}],
               lr=0.01, cautious_wd=True)
    for t in range(2):
        for i, p in enumerate(ps):
            p.grad = randn(*p.shape, seed=10 * t + i)
        opt.measure_next_step()
        opt.step()
    t = opt.last_telemetry
    assert 0.2 < t["cautious/decayed_fraction/muon"] < 0.8
    assert 0.2 < t["cautious/decayed_fraction/adamw"] < 0.8


def _variant_opt(params, **kw):
    return Muon([{"params": params[:2], "algorithm": "muon", "blocks": 4},
                 {"params": params[2:], "algorithm": "adamw"}], lr=0.02, normuon=True, cautious_wd=True, **kw)


def test_state_dict_resume_is_exact():
    shapes = [(64, 48), (64, 48), (48,)]

    def fresh():
        return [nn.Parameter(randn(*s, seed=i)) for i, s in enumerate(shapes)]

    def run(params, opt, steps):
        for t in steps:
            for i, p in enumerate(params):
                p.grad = randn(*p.shape, seed=1000 * t + i)
            opt.step()

    straight = fresh()
    opt = _variant_opt(straight)
    run(straight, opt, range(6))
    first = fresh()
    opt1 = _variant_opt(first)
    run(first, opt1, range(3))
    saved = opt1.state_dict()
    assert saved["state"][0]["normuon_v"].shape == (1, 64)
    resumed = [nn.Parameter(p.detach().clone()) for p in first]
    opt2 = _variant_opt(resumed)
    opt2.load_state_dict(saved)
    assert opt2.state[resumed[0]]["normuon_v"].dtype == torch.float32
    run(resumed, opt2, range(3, 6))
    for a, b in zip(straight, resumed):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"normuon": 1}, "normuon must be True or False"),
    ({"normuon_beta2": 1.0}, "normuon_beta2 must be a finite number in [0, 1), got 1.0"),
    ({"normuon_eps": 0.0}, "normuon_eps must be a finite number in (0, inf), got 0.0"),
    ({"cautious_wd": "yes"}, "cautious_wd must be True or False"),
])
def test_bad_options_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Muon([nn.Parameter(torch.zeros(8, 8))], algorithm="muon", **kwargs)


@pytest.mark.parametrize(("group", "message"), [
    ({"blocks": 3}, "blocks=3 must be a positive integer dividing 64"),
    ({"blocks": [32, 16]}, r"blocks=\[32, 16\] must add up to 64"),
    ({"col_blocks": [0, 48]}, "col_blocks=.* must be a positive integer or a list of positive sizes"),
])
def test_bad_blocks_name_themselves(group, message):
    with pytest.raises(ValueError, match=message):
        Muon([{"params": [nn.Parameter(torch.zeros(64, 48))], "algorithm": "muon", **group}])
