"""The compiled cautious-decay update and NorMuon row normalization (``muonlab.optim.fused``) against
float64 references and the eager path: zeros in the update and the weight (which decay), bf16 and fp32
updates, the pieces the sharded engines pass (row shards of an expert stack, flat ZeRO-1 ranges), one
compilation for many shapes and learning rates, the optimizer end to end, the switch that turns it
off, and the eager fallback where compiling fails."""

import warnings

import pytest
import torch
from torch import nn

from muonlab.optim import Muon, fused
from muonlab.optim.engines import base
from muonlab.optim.reference import reference_decoupled_update, reference_variant_step
from muonlab.optim.update_rule import cautious_mask, decoupled_update_, normuon_

LR, WD, SCALE = 0.05, 0.1, 2.5
SHAPE = (192, 128)  # 24576 elements: over fused.MIN_NUMEL


def weights_and_update(shape, dtype, seed=0):
    """``W`` fp32 and ``Õ`` in ``dtype``, each with a block of exact zeros, one overlapping the other."""
    g = torch.Generator().manual_seed(seed)
    W, O = torch.randn(shape, generator=g), torch.randn(shape, generator=g).to(dtype)
    W.view(-1)[:3000] = 0.0
    O.view(-1)[2000:5000] = 0.0
    return W, O


def eager(W, O, lr=LR):
    out = W.clone()
    decoupled_update_(out, O, lr, WD, SCALE, cautious_mask(O, out))
    return out


def fused_(W, O, lr=LR):
    out = W.clone()
    assert fused.fused_cautious_update_(out, O, lr, WD, SCALE)
    return out


def assert_within_rounding(got, want, W, O, lr=LR):
    """``|got − want| ≤ 4 fp32 ulps of the operands' magnitude |W| + lr·s·|Õ|`` element-wise: what the
    rounding of four fp32 operations allows. A wrong mask is off by lr·λ·|W|, 12 000 ulps here."""
    bound = 2.0**-21 * (W.double().abs() + lr * SCALE * O.double().abs())
    excess = (got.double() - want.double()).abs() - bound
    assert float(excess.max()) <= 0.0, f"{int((excess > 0).sum())} elements beyond rounding"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_equals_float64_reference_and_eager(dtype):
    W, O = weights_and_update(SHAPE, dtype)
    got = fused_(W, O)
    assert_within_rounding(got, reference_decoupled_update(W, SCALE * O.double(), lr=LR, weight_decay=WD,
                                                           cautious=True), W, O)
    assert_within_rounding(got, eager(W, O), W, O)  # eager's last addition is a fused multiply-add
    zero_u, zero_w = slice(3000, 5000), slice(0, 2000)  # Õ = 0 with W ≠ 0 (decays), W = 0 with Õ ≠ 0
    flat_w, flat_got = W.reshape(-1), got.reshape(-1)
    torch.testing.assert_close(flat_got[zero_u].double(), flat_w[zero_u].double() * (1 - LR * WD), rtol=2**-22, atol=0)
    torch.testing.assert_close(flat_got[zero_w], -LR * SCALE * O.reshape(-1)[zero_w].float(), rtol=2**-23, atol=0)


def test_a_shard_of_the_piece_equals_the_piece():
    # The engines apply the update to whatever part of a parameter a rank holds: a DTensor's local row
    # shard (FSDP2), experts [first, first + n) of a stack, a flat ZeRO-1 range. Element-wise, so each
    # part must give the whole tensor's bits.
    W, O = weights_and_update((4, 96, 128), torch.bfloat16, seed=1)
    whole = fused_(W, O)
    experts = torch.cat([fused_(W[:2], O[:2]), fused_(W[2:], O[2:])])
    matrix, rows = W.view(384, 128), O.view(384, 128)
    row_shards = torch.cat([fused_(matrix[:160], rows[:160]), fused_(matrix[160:], rows[160:])])
    flat = W.clone().view(-1)
    for lo, hi in ((0, 20000), (20000, flat.numel())):
        assert fused.fused_cautious_update_(flat[lo:hi], O.view(-1)[lo:hi], LR, WD, SCALE)
    for part in (experts, row_shards.view(W.shape), flat.view(W.shape)):
        assert torch.equal(part, whole)


def test_one_compilation_serves_every_shape_and_learning_rate():
    fused_(*weights_and_update(SHAPE, torch.bfloat16))  # compiled here (or before) for these dtypes
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step, shape in enumerate([(2304, 64), (64, 768), (3072, 48), (48, 3072), (3, 100, 70)]):
            W, O = weights_and_update(shape, torch.bfloat16, seed=step)
            lr = LR * (1 + step) / 7
            assert_within_rounding(fused_(W, O, lr), eager(W, O, lr), W, O, lr)


def test_small_or_strided_pieces_stay_eager():
    W, O = weights_and_update((64, 64), torch.float32)
    assert not fused.fused_cautious_update_(W, O, LR, WD, SCALE)  # under MIN_NUMEL
    W, O = weights_and_update((256, 256), torch.float32)
    assert not fused.fused_cautious_update_(W.T, O.T, LR, WD, SCALE)  # not contiguous
    assert torch.equal(W, weights_and_update((256, 256), torch.float32)[0])  # nothing done


def run(compile, steps=4, measure_last=False):
    """Muon (fp32 Newton–Schulz, cautious decay) and the float64 reference on one SHAPE matrix."""
    W0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    p = nn.Parameter(W0.clone())
    opt = Muon([p], algorithm="muon", lr=LR, weight_decay=WD, ns_dtype=torch.float32, ns_method="standard",
               cautious_wd=True, compile=compile)
    W, M = W0.double(), torch.zeros(SHAPE, dtype=torch.float64)
    for t in range(steps):
        g = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + t))
        p.grad = g.clone()
        if measure_last and t == steps - 1:
            opt.measure_next_step()
        opt.step()
        W, M, _ = reference_variant_step(W, g, M, lr=LR, weight_decay=WD, cautious=True)
    delta, delta_ref = p.detach().double() - W0.double(), W - W0.double()
    return float((delta - delta_ref).norm() / delta_ref.norm()), p.detach(), opt


def test_muon_with_the_fused_update_equals_float64_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(base, "fused_cautious_update_",
                        lambda *a: calls.append(a[0].shape) or fused.fused_cautious_update_(*a))
    err, _, opt = run(compile=True, measure_last=True)
    assert err < 1e-5, err
    assert len(calls) == 3  # every step but the measured one, which counts its eager mask
    assert 0.2 < opt.last_telemetry["cautious/decayed_fraction/muon"] < 0.8


def test_compile_false_keeps_the_eager_update(monkeypatch):
    monkeypatch.setattr(base, "fused_cautious_update_", lambda *a: pytest.fail("fused path used"))
    err, _, _ = run(compile=False)
    assert err < 1e-5, err
    with pytest.raises(ValueError, match="compile must be True or False"):
        Muon([nn.Parameter(torch.zeros(2, 2))], algorithm="muon", compile="no")


def test_a_compiler_failure_warns_once_and_stays_eager(monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused, "_compiled", lambda fn: broken)
    monkeypatch.setattr(fused, "_compiled_keys", set())
    monkeypatch.setattr(fused, "_failed_devices", set())
    W, O = weights_and_update(SHAPE, torch.float32)
    out = W.clone()
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        assert not fused.fused_cautious_update_(out, O, LR, WD, SCALE)
    assert torch.equal(out, W)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fused.fused_cautious_update_(out, O, LR, WD, SCALE)
    err, _, _ = run(compile=True)  # the optimizer falls back to the eager update
    assert err < 1e-5, err


# ---- NorMuon


def normuon_formula(O: torch.Tensor, v: torch.Tensor, beta2=0.95, eps=1e-8):
    """Li et al., arXiv 2510.05491, Algorithm 1 in float64, per matrix of the batch: ``v ← β₂v + (1 − β₂)
    mean_cols(O²)``, ``Ô = O / (sqrt(v) + ε)``, rescaled to ``sqrt(min(m, n))`` in Frobenius norm."""
    O, v = O.double(), v.double() * beta2 + (1 - beta2) * O.double().pow(2).mean(dim=-1)
    O_hat = O / (v.sqrt()[..., None] + eps)
    return O_hat * min(O.shape[-2:]) ** 0.5 / O_hat.norm(dim=(-2, -1), keepdim=True), v


def blocks_and_state(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    O = torch.randn(shape, generator=g) / shape[-1] ** 0.5
    return O.to(dtype), torch.rand(shape[:-1], generator=g) / shape[-1]


@pytest.mark.parametrize("dtype, rounding", [(torch.float32, 2.0**-20), (torch.bfloat16, 2.0**-8)],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(2, 192, 128), (1, 96, 400)], ids=["tall", "wide"])
def test_fused_normuon_equals_the_float64_formula_and_eager(dtype, rounding, shape):
    O, v = blocks_and_state(shape, dtype)
    want, want_v = normuon_formula(O, v)
    got, got_v = O.clone(), v.clone()
    assert fused.fused_normuon_(got, got_v, 0.95, 1e-8)
    # one rounding of the result to O's dtype (half an ulp, 2^-9 in bf16), the fp32 statistics far below it
    assert float(((got.double() - want).abs() - rounding * want.abs()).max()) <= 0.0
    torch.testing.assert_close(got_v.double(), want_v, rtol=2**-20, atol=0)
    eager_O, eager_v = O.clone(), v.clone()
    normuon_(eager_O, eager_v, 0.95, 1e-8)
    assert float(((got.double() - eager_O.double()).abs() - rounding * eager_O.double().abs()).max()) <= 0.0
    # a wrong row statistic (the old v, not the updated one) is far outside that bound
    stale = O.double() / (v.double().sqrt()[..., None] + 1e-8)
    stale = stale * min(shape[-2:]) ** 0.5 / stale.norm(dim=(-2, -1), keepdim=True)
    assert float(((stale - want).abs() - rounding * want.abs()).max()) > 0.0


def test_one_normuon_compilation_serves_every_batch_shape():
    fused.fused_normuon_(*blocks_and_state((2, 192, 128), torch.bfloat16), 0.95, 1e-8)  # compiled here (or before)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed, shape in enumerate([(1, 2304, 64), (3, 64, 768), (12, 64, 48), (1, 48, 3072)]):
            O, v = blocks_and_state((shape[0] + 1, *shape[1:]), torch.bfloat16, seed)  # a slice, as the engines pass
            O, v = O[: shape[0]], v[: shape[0]]
            got, want = O.clone(), O.clone()
            assert fused.fused_normuon_(got, v.clone(), 0.9 + seed / 100, 1e-8)
            normuon_(want, v.clone(), 0.9 + seed / 100, 1e-8)
            assert float(((got.double() - want.double()).abs() - 2**-8 * want.double().abs()).max()) <= 0.0


def test_small_normuon_batches_stay_eager():
    O, v = blocks_and_state((1, 64, 64), torch.float32)
    before = O.clone(), v.clone()
    assert not fused.fused_normuon_(O, v, 0.95, 1e-8)  # under MIN_NUMEL
    assert torch.equal(O, before[0]) and torch.equal(v, before[1])  # nothing done


@pytest.mark.parametrize("compile", [True, False], ids=["compiled", "eager"])
def test_muon_with_normuon_equals_float64_reference(monkeypatch, compile):
    calls = []
    monkeypatch.setattr(base, "fused_normuon_", lambda *a: calls.append(a[0].shape) or fused.fused_normuon_(*a))
    W0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    p = nn.Parameter(W0.clone())
    opt = Muon([p], algorithm="muon", lr=LR, weight_decay=WD, ns_dtype=torch.float32, ns_method="standard",
               normuon=True, compile=compile)
    W, M, v = W0.double(), torch.zeros(SHAPE, dtype=torch.float64), None
    for t in range(4):
        g = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + t))
        p.grad = g.clone()
        opt.step()
        W, M, v = reference_variant_step(W, g, M, v, lr=LR, weight_decay=WD, normuon=True)
    delta, delta_ref = p.detach().double() - W0.double(), W - W0.double()
    assert float((delta - delta_ref).norm() / delta_ref.norm()) < 1e-5
    assert len(calls) == (4 if compile else 0)
