"""Checkpointing (state_dict → torch.save → torch.load(weights_only=True) → resume) and lr schedulers."""

import io

import pytest
import torch
from torch import nn

from muonlab.models import Transformer, preset
from muonlab.optim import Muon, param_groups

V, T = 64, 16


def make_model():
    torch.manual_seed(0)
    return Transformer(preset("tiny", vocab_size=V, max_seq_len=T))


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(0, V, (2, T), generator=g)
    return x, torch.roll(x, -1, dims=1)


def make_optimizer(model):
    return Muon(param_groups(model), lr=1e-2, weight_decay=0.1, nonfinite="skip")


def train(model, opt, steps, poison=()):
    for step in steps:
        opt.zero_grad(set_to_none=True)
        x, y = batch(step)
        model(x, y).backward()
        if step in poison:  # a NaN gradient: the step must be skipped and counted
            next(model.parameters()).grad[0, 0] = float("nan")
        opt.step()


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_same_state(opt_a, opt_b, model_a, model_b):
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), f"parameter {name} differs after resume"
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, key
            assert torch.equal(sa[key], sb[key]), key
    assert opt_a.skipped_steps == opt_b.skipped_steps


def test_resume_is_bit_identical_on_the_tiny_transformer():
    # Uninterrupted: 6 steps (step 2 poisoned, so skipped), then 3 more with one more skip.
    model_a = make_model()
    opt_a = make_optimizer(model_a)
    train(model_a, opt_a, range(0, 6), poison={2})
    assert opt_a.skipped_steps == 1
    saved_model = roundtrip(model_a.state_dict())
    saved_opt = roundtrip(opt_a.state_dict())
    train(model_a, opt_a, range(6, 9), poison={7})
    assert opt_a.skipped_steps == 2

    # Resumed: a fresh model and optimizer, loaded from the round-tripped state dicts.
    model_b = make_model()
    model_b.init_weights(seed=123)  # make sure the loaded weights, not the init, are used
    opt_b = make_optimizer(model_b)
    model_b.load_state_dict(saved_model)
    opt_b.load_state_dict(saved_opt)
    assert opt_b.skipped_steps == 1
    assert all(g["ns_dtype"] == torch.bfloat16 for g in opt_b.param_groups if g["algorithm"] == "muon")
    train(model_b, opt_b, range(6, 9), poison={7})
    assert_same_state(opt_a, opt_b, model_a, model_b)


def test_state_dict_contents_are_plain_and_complete():
    model = make_model()
    opt = make_optimizer(model)
    train(model, opt, range(2))
    sd = roundtrip(opt.state_dict())
    assert sd["skipped_steps"] == 0
    algos = {g["algorithm"] for g in sd["param_groups"]}
    assert algos == {"muon", "adamw"}
    n_params = len({id(p) for p in model.parameters()})
    assert len(sd["state"]) == n_params
    kinds = {frozenset(s) for s in sd["state"].values()}
    assert kinds == {frozenset({"momentum_buffer"}), frozenset({"step", "exp_avg", "exp_avg_sq"})}


def test_bf16_parameters_keep_fp32_momentum_across_resume():
    # DESIGN: "Momentum in fp32". torch.optim.Optimizer.load_state_dict casts every floating state
    # tensor to the parameter's dtype; for a bf16 parameter the fp32 momentum must survive that,
    # or the resumed run diverges from the uninterrupted one.
    def fresh():
        return nn.Parameter(torch.randn(16, 24, generator=torch.Generator().manual_seed(0)).bfloat16())

    def grads(t):
        return torch.randn(16, 24, generator=torch.Generator().manual_seed(10 + t)).bfloat16()

    a = fresh()
    opt_a = Muon([a], algorithm="muon", lr=1e-2)
    for t in range(3):
        a.grad = grads(t)
        opt_a.step()
    saved = roundtrip(opt_a.state_dict())
    b = nn.Parameter(a.detach().clone())
    opt_b = Muon([b], algorithm="muon", lr=1e-2)
    opt_b.load_state_dict(saved)
    assert opt_b.state[b]["momentum_buffer"].dtype == torch.float32
    for t in range(3, 6):
        a.grad, b.grad = grads(t), grads(t)
        opt_a.step()
        opt_b.step()
    assert torch.equal(opt_a.state[a]["momentum_buffer"], opt_b.state[b]["momentum_buffer"])
    assert torch.equal(a, b)


# ---- lr schedulers ------------------------------------------------------------------------------


def test_lambda_lr_scales_every_group_and_the_update():
    # Two identical models; A is scheduled to 0.25× base lr from its second step, B is not. With
    # wd = 0, the optimizer states do not depend on lr, so A's second update must be exactly 0.25
    # times B's, in every group (Muon: lr·s·O; AdamW: lr·m̂/(√v̂+ε)).
    models = [make_model(), make_model()]
    overrides = {"norm": {"lr": 3e-3}}  # a group with its own lr, scaled by its own factor
    opts = [Muon(param_groups(m, role_overrides=overrides), lr=1e-2, weight_decay=0.0) for m in models]
    sched = torch.optim.lr_scheduler.LambdaLR(opts[0], lambda epoch: 1.0 if epoch == 0 else 0.25)
    base = [g["lr"] for g in opts[1].param_groups]
    for m, o in zip(models, opts):
        train(m, o, [0])
    sched.step()
    for g, lr in zip(opts[0].param_groups, base):
        assert g["lr"] == pytest.approx(0.25 * lr, rel=1e-15)
    assert {g["role"]: g["lr"] for g in opts[0].param_groups}["norm"] == pytest.approx(0.25 * 3e-3)
    before = [[p.detach().clone() for p in m.parameters()] for m in models]
    for m, o in zip(models, opts):
        train(m, o, [1])
    for (name, pa), pb, a0, b0 in zip(models[0].named_parameters(), models[1].parameters(), *before):
        da, db = a0 - pa.detach(), b0 - pb.detach()
        assert db.abs().max() > 0, name
        # Reading the update back as W_before − W_after costs up to an fp32 ulp of W per element.
        ulp = 2 * torch.finfo(torch.float32).eps * float(a0.abs().max())
        torch.testing.assert_close(da, 0.25 * db, rtol=1e-4, atol=ulp, msg=name)


def test_scheduler_state_survives_resume():
    model = make_model()
    opt = make_optimizer(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)
    train(model, opt, [0])
    sched.step()
    saved = roundtrip(opt.state_dict())
    opt2 = make_optimizer(make_model())
    opt2.load_state_dict(saved)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert all(g["initial_lr"] == 1e-2 for g in opt2.param_groups)
