"""muP as a model option (``muonlab.models.mup``): the table, checked against its definition.

- at the base width muP is SP bit for bit (init and forward), dense and MoE/MLA;
- init stds follow σ/√m (the residual projections σ/√(2Lm)), measured on the drawn weights;
- the forward multipliers sit where the table puts them: a muP model computes what an SP model
  computes once √m is folded into the embedding, 1/√m into the LM head and the router, and the
  attention scale √h₀/h into the query projections (float64, an independent linear identity);
- each role's group lr is the base lr times its factor, the LR scheduler keeps the factor at every
  step, a resumed muP run is identical to an uninterrupted one, and the logged lr is the schedule's;
- config errors name the bad value and what is valid.
"""

from __future__ import annotations

import math

import pytest
import torch

from muonlab.models import ModelConfig, Transformer
from muonlab.rundir import read_metrics
from muonlab.rundir.checkpoint import latest_checkpoint
from muonlab.train import loop
from muonlab.train.config import ConfigError, TrainConfig
from muonlab.train.loop import build_model_config, build_optimizer, train

from conftest import interrupt_after_checkpoint

SIGMA = 0.02


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here runs on one torch thread (see conftest.single_thread)."""
MOE = dict(attention="mla", n_routed_experts=4, top_k=2, n_shared_experts=1, first_k_dense=1)


def _config(width: int, parametrization: str = "mup", base: int = 64, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=96, d_model=width, n_layers=2, n_heads=width // 32, max_seq_len=16,
                       parametrization=parametrization, mup_base_width=base, **kw)


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, MOE], ids=["dense", "tied", "mla-moe"])
def test_mup_at_the_base_width_is_sp_bit_for_bit(kw):
    torch.manual_seed(0)
    sp = Transformer(_config(128, "sp", **kw))
    torch.manual_seed(0)
    mup = Transformer(_config(128, "mup", base=128, **kw))
    sp_state, mup_state = sp.state_dict(), mup.state_dict()
    assert sp_state.keys() == mup_state.keys()
    assert all(torch.equal(sp_state[k], mup_state[k]) for k in sp_state)
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(sp(x), mup(x))


def test_init_stds_follow_sigma_over_sqrt_m():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=2048, d_model=512, n_layers=2, n_heads=16, max_seq_len=16,
                                    parametrization="mup", mup_base_width=128, **MOE))
    # m = 4: every std is σ/2; wo, w_down (written into the residual stream) also / sqrt(2L) = 2.
    expected = {"embed.weight": SIGMA / 2, "lm_head.weight": SIGMA / 2,
                "layers.0.attn.wq_nope.weight": SIGMA / 2, "layers.0.attn.wo.weight": SIGMA / 4,
                "layers.0.mlp.w_up.weight": SIGMA / 2, "layers.0.mlp.w_down.weight": SIGMA / 4,
                "layers.1.mlp.router": SIGMA / 2, "layers.1.mlp.w_gate": SIGMA / 2, "layers.1.mlp.w_down": SIGMA / 4,
                "layers.1.mlp.shared.w_up.weight": SIGMA / 2, "layers.1.mlp.shared.w_down.weight": SIGMA / 4}
    params = dict(model.named_parameters())
    for name, std in expected.items():
        w = params[name].detach().double()
        assert float(w.std()) == pytest.approx(std, rel=0.05), name  # ≥ 2048 draws each: ~2% sampling error
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in params.items() if "norm" in n)


def _fold_into_sp(mup_model: Transformer, sp_model: Transformer, m: float, q_factor: float) -> None:
    """Load ``mup_model``'s weights into ``sp_model`` with the muP multipliers folded into the weights."""
    state = {k: v.clone() for k, v in mup_model.state_dict().items()}
    state["embed.weight"] *= math.sqrt(m)
    state["lm_head.weight"] /= math.sqrt(m)
    for key in state:
        if key.endswith("mlp.router"):
            state[key] /= math.sqrt(m)
        if key.endswith(("attn.wq.weight", "attn.wq_nope.weight", "attn.wq_rope.weight")):
            state[key] *= q_factor
    sp_model.load_state_dict(state)


# MLA runs its latent norm in fp32 (mla.py), so the MoE/MLA model is compared in fp32.
@pytest.mark.parametrize("kw, dtype, rtol", [({}, torch.float64, 1e-12), (MOE, torch.float32, 1e-5)],
                         ids=["dense", "mla-moe"])
@torch.no_grad()
def test_mup_forward_equals_sp_with_the_multipliers_folded_into_the_weights(kw, dtype, rtol):
    # m = 4, and heads that widen: h₀ = 8 at the base, so logits scale by sqrt(8)/h instead of 1/sqrt(h).
    mup_config = _config(128, base=32, mup_base_head_dim=8, **kw)
    sp_config = _config(128, "sp", **kw)
    h = 32 if not kw else mup_config.qk_nope_head_dim + mup_config.qk_rope_head_dim
    torch.manual_seed(0)
    mup = Transformer(mup_config).to(dtype)
    sp = Transformer(sp_config).to(dtype)
    unfolded = sp(x := torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1)))
    _fold_into_sp(mup, sp, 4.0, q_factor=math.sqrt(8) / h * math.sqrt(h))
    expected, got = sp(x), mup(x)
    assert float((got - expected).abs().max()) <= rtol * float(expected.abs().max())
    assert float((got - unfolded).abs().max()) > 100 * rtol * float(expected.abs().max())  # the fold mattered


PEAK, WARMUP = 0.02, 4
FACTORS = {"embedding": 0.5, "head": 0.5, "hidden": 0.25, "norm": 1.0}  # m = 4: 1/sqrt(m), 1/m, 1


def test_group_lrs_carry_the_factor_through_the_scheduler(tiny_config):
    config = tiny_config(parametrization="mup", d_model=256, n_heads=8, mup_base_width=64, lr=PEAK,
                         schedule="constant", warmup_steps=WARMUP)
    torch.manual_seed(0)
    model = Transformer(build_model_config(config, vocab_size=257))
    optimizer = build_optimizer(model, config)
    assert {g["role"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {role: PEAK * f for role, f in FACTORS.items()}, rel=1e-15)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, loop._lr_lambda(config, 10))
    for t in range(7):
        ramp = (t + 1) / WARMUP if t < WARMUP else 1.0
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(PEAK * FACTORS[group["role"]] * ramp, rel=1e-12), (t, group["role"])
        optimizer.step()
        scheduler.step()


def test_sp_groups_have_no_factor(tiny_config):
    config = tiny_config(lr=PEAK)
    optimizer = build_optimizer(Transformer(build_model_config(config, vocab_size=257)), config)
    assert all(g["lr"] == PEAK and "lr_factor" not in g for g in optimizer.param_groups)


def test_a_mup_group_steps_by_its_factor():
    # One step of the same gradients from the same weights: every AdamW update and every Muon update
    # (orthogonalized, then 0.2·sqrt(max) scaled) of the muP groups is the SP one times the role's factor.
    from muonlab.models import mup as mup_table
    from muonlab.optim import Muon, param_groups

    config = _config(128, base=32)
    torch.manual_seed(0)
    model = Transformer(config).double()
    x = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    model(x[:, :-1], x[:, 1:]).backward()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = {}
    for name, overrides in (("sp", {}), ("mup", mup_table.lr_overrides(config, PEAK))):
        for n, p in model.named_parameters():
            p.data.copy_(start[n])
        Muon(param_groups(model, role_overrides=overrides), lr=PEAK, weight_decay=0.0, ns_dtype="float64").step()
        steps[name] = {n: p.detach() - start[n] for n, p in model.named_parameters()}
    factor = {"embed.weight": 0.5, "lm_head.weight": 0.5, "layers.0.attn.wq.weight": 0.25,
              "layers.1.mlp.w_down.weight": 0.25, "layers.1.attn_norm.weight": 1.0}
    for n, f in factor.items():
        scale = float(steps["sp"][n].abs().max())
        assert scale > 0 and float((steps["mup"][n] - f * steps["sp"][n]).abs().max()) <= 1e-12 * scale, n


N = 8
RESUME = dict(parametrization="mup", d_model=128, n_heads=2, mup_base_width=64, lr=PEAK, schedule="constant",
              warmup_steps=6, train_tokens=32 * 4 * N, checkpoint_every=N // 2, keep_checkpoints=4, log_every=1,
              eval_every=N, telemetry_every=0)


def test_mup_run_resumes_exactly_and_logs_the_schedules_lr(tiny_config, monkeypatch):
    full, split = tiny_config("full", **RESUME), tiny_config("split", **RESUME)
    train(full)
    real_save = interrupt_after_checkpoint(monkeypatch, N // 2)
    with pytest.raises(KeyboardInterrupt):
        train(split)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    train(split)

    timing = {"tokens_per_s", "wall_s", "optim_step_ms"}
    rows = [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(split.run_dir)]
    assert rows == [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(full.run_dir)]
    logged = [r["lr"] for r in rows if "lr" in r]
    assert logged == pytest.approx([PEAK * min(1.0, s / 6) for s in range(1, N + 1)], rel=1e-12)
    saved = [torch.load(latest_checkpoint(c.run_dir) / "optimizer.pt", weights_only=True)["param_groups"]
             for c in (split, full)]
    assert [(g["role"], g["lr"], g["lr_factor"]) for g in saved[0]] == [(g["role"], g["lr"], g["lr_factor"])
                                                                      for g in saved[1]]
    assert {g["role"]: g["lr"] / g["initial_lr"] for g in saved[0]} == pytest.approx(
        {g["role"]: 1.0 for g in saved[0]})  # the warmup is over: every group is back at base × factor
    assert {g["role"]: g["initial_lr"] for g in saved[0]} == pytest.approx({"embedding": PEAK / math.sqrt(2),
        "head": PEAK / math.sqrt(2), "hidden": PEAK / 2, "norm": PEAK})  # fmt: skip


def test_hf_export_refuses_mup_away_from_its_base_width():
    from muonlab.integrations.hf_convert import HFFormatError, check_exportable

    check_exportable(_config(128, "sp"))
    check_exportable(_config(128, base=128))  # at the base width muP is SP
    with pytest.raises(HFFormatError, match=r"parametrization is 'mup' at d_model=128 \(mup_base_width=64\).*no muP"):
        check_exportable(_config(128))


def test_config_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"parametrization is 'mupp'.*'sp', 'mup'"):
        _config(64, "mupp")
    with pytest.raises(ValueError, match=r"mup_base_head_dim is 8.*only to parametrization='mup'"):
        _config(64, "sp", mup_base_head_dim=8)
    with pytest.raises(ValueError, match=r"mup_base_width is 0.*positive integer"):
        _config(64, base=0)
    with pytest.raises(ConfigError, match=r"parametrization='SP'.*\['sp', 'mup'\]"):
        TrainConfig(parametrization="SP")
