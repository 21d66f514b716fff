"""MoE in the Transformer: exact counts (hand and paper), presets, names, init, hooks, the training loop."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from muonlab.models import ModelConfig, MoE, Transformer, list_moe_presets, preset
from muonlab.optim import route_parameters
from muonlab.rundir import read_metrics
from muonlab.train.loop import train

V, D, L, H, E, S, K, FE, FD, T = 50, 32, 3, 2, 8, 2, 3, 12, 96, 20


def moe_mha(**kw):
    base = dict(vocab_size=V, d_model=D, n_layers=L, n_heads=H, n_routed_experts=E, n_shared_experts=S, top_k=K,
                expert_ffn_hidden=FE, ffn_hidden=FD, first_k_dense=1, max_seq_len=T)
    base.update(kw)
    return ModelConfig(**base)


def test_counts_match_hand_count():
    cfg = moe_mha()
    attn = 4 * D * D  # MHA: wq, wk, wv, wo
    dense_mlp = 3 * D * FD
    moe_total = E * 3 * D * FE + 3 * D * (S * FE) + E * D  # stacks + one shared SwiGLU + router
    moe_active = K * 3 * D * FE + 3 * D * (S * FE) + E * D
    norms = 2 * D
    non_emb = L * (attn + norms) + dense_mlp + (L - 1) * moe_total + D
    assert cfg.num_params(include_embedding=False) == non_emb
    assert cfg.num_params() == non_emb + 2 * V * D
    assert cfg.num_active_params(include_embedding=False) == non_emb - (L - 1) * (E - K) * 3 * D * FE
    matmul = L * attn + dense_mlp + (L - 1) * moe_active + V * D
    assert cfg.num_matmul_params() == matmul
    assert cfg.flops_per_token(T) == 6 * matmul + 12 * L * D * T
    with torch.device("meta"):
        model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    dense = dataclasses.replace(cfg, n_routed_experts=0, n_shared_experts=0, top_k=0, expert_ffn_hidden=None)
    assert dense.num_active_params() == dense.num_params() == L * (attn + norms + dense_mlp) + D + 2 * V * D


def test_moonlight_counts_match_the_paper():
    # arXiv 2502.16982 §3.3: "2.24B activated and 15.29B total parameters (3B activated and 16B total
    # when including embedding)"; PAPERS.md's hand count from the released config: 15.289B / 2.244B.
    cfg = preset("moonlight", 163840, 8192)
    assert round(cfg.num_params(include_embedding=False) / 1e9, 2) == 15.29
    assert round(cfg.num_active_params(include_embedding=False) / 1e9, 2) == 2.24
    assert round(cfg.num_params() / 1e9) == 16 and round(cfg.num_active_params() / 1e9) == 3
    assert (cfg.n_layers, cfg.first_k_dense, cfg.expert_ffn_hidden, cfg.ffn_hidden) == (27, 1, 1408, 11264)


@pytest.mark.parametrize("name", ["moe-tiny", "moe-demo"])
def test_small_presets_keep_moonlight_ratios(name):
    cfg = preset(name, 4096, 256)
    assert (cfg.n_routed_experts, cfg.n_shared_experts, cfg.top_k, cfg.first_k_dense) == (64, 2, 6, 1)
    assert cfg.attention == "mla" and cfg.q_lora_rank == 0 and cfg.kv_lora_rank == cfg.d_model // 4
    assert cfg.expert_ffn_hidden * 8 == cfg.ffn_hidden  # 1408 / 11264 = 1/8; active experts = dense width
    assert cfg.routed_scaling_factor == 2.446
    assert 0.1 < cfg.num_active_params(False) / cfg.num_params(False) < 0.35
    resized = preset(name, 4096, 256, d_model=128, n_heads=2, ffn_hidden=None)  # the ratios follow d_model
    assert resized.expert_ffn_hidden * 8 == resized.ffn_hidden and resized.kv_lora_rank == 32
    assert list_moe_presets() == ["moe-tiny", "moe-demo", "moonlight"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(top_k=0), r"top_k is 0; with n_routed_experts=8 it must lie in 1 \.\. 8"),
        (dict(top_k=9), r"top_k is 9"),
        (dict(first_k_dense=3), r"first_k_dense=3 leaves no MoE block among n_layers=3; valid values are 0 \.\. 2"),
        (dict(mlp="gelu"), r"mlp is 'gelu', but experts are SwiGLU"),
        (dict(routed_scaling_factor=0.0), r"routed_scaling_factor is 0.0; it must be a finite number > 0"),
        (dict(moe_bias_update_rate=-1e-3), r"moe_bias_update_rate is -0.001; it must be a finite number >= 0"),
        (dict(n_routed_experts=0, expert_ffn_hidden=None), r"n_shared_experts is 2, but it applies only to MoE models"),
        (dict(n_routed_experts=-1), r"n_routed_experts is -1; it must be an integer >= 0"),
    ],
)
def test_moe_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        moe_mha(**kwargs)


def test_roundtrip_and_derived_expert_width():
    cfg = moe_mha(expert_ffn_hidden=None)
    assert cfg.expert_ffn_hidden == FD // (K + S)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_names_roles_and_no_parameter_for_the_bias():
    model = Transformer(moe_mha())
    roles = {rp.name: rp.role for rp in route_parameters(model)}
    for w in ("w_gate", "w_up", "w_down"):
        assert roles[f"layers.1.mlp.{w}"] == "expert" and roles[f"layers.0.mlp.{w}.weight"] == "hidden"
        assert roles[f"layers.2.mlp.shared.{w}.weight"] == "hidden"
    assert roles["layers.1.mlp.router"] == "router"
    assert model.layers[1].mlp.w_down.shape == (E, D, FE) and model.layers[1].mlp.w_gate.shape == (E, FE, D)
    assert "layers.1.mlp.balance_bias" in model.state_dict()
    assert not any("bias" in n for n in roles)


def test_init_std_and_meta_materialisation():
    cfg = moe_mha(n_routed_experts=64, expert_ffn_hidden=64, d_model=64, ffn_hidden=128)
    torch.manual_seed(0)
    model = Transformer(cfg)
    moe = model.layers[1].mlp
    assert abs(moe.w_gate.std().item() - 0.02) < 0.001 and abs(moe.router.std().item() - 0.02) < 0.002
    assert abs(moe.w_down.std().item() - 0.02 / (2 * L) ** 0.5) < 0.001
    with torch.device("meta"):
        lazy = Transformer(cfg)
    lazy.to_empty(device="cpu")
    lazy.init_weights(seed=4)
    ref = Transformer(cfg)
    ref.init_weights(seed=4)
    assert all(torch.equal(a, b) for a, b in zip(lazy.state_dict().values(), ref.state_dict().values()))


def test_transformer_hooks_telemetry_and_bias(single_thread):
    torch.manual_seed(0)
    model = Transformer(moe_mha())
    x = torch.randint(0, V, (2, 10))
    model(x, x).backward()
    tel = model.telemetry()
    for layer in (1, 2):
        assert {f"moe/load_max_over_mean/{layer}", f"moe/router_entropy/{layer}", f"moe/bias_abs_mean/{layer}"} <= set(
            tel
        )
    assert tel["moe/load_max_over_mean"] == pytest.approx(
        (tel["moe/load_max_over_mean/1"] + tel["moe/load_max_over_mean/2"]) / 2
    )
    model.after_optimizer_step()
    bias = model.layers[1].mlp.balance_bias
    assert bias.abs().max() == pytest.approx(1e-3 * 2, rel=0.5) and bias.sum().abs() < 1e-6  # steps of u, mean-free
    dense = Transformer(
        dataclasses.replace(moe_mha(), n_routed_experts=0, n_shared_experts=0, top_k=0, expert_ffn_hidden=None)
    )
    assert dense.telemetry() == {}


def test_aux_loss_is_added_to_the_training_loss_only(single_thread):
    torch.manual_seed(0)
    model = Transformer(moe_mha(moe_aux_loss_coef=0.5))
    x = torch.randint(0, V, (2, 10))
    train_loss = model(x, x)
    aux = sum(m.aux_loss for m in model.modules() if isinstance(m, MoE))
    model.eval()
    with torch.no_grad():
        eval_loss = model(x, x)
    assert train_loss.item() == pytest.approx(eval_loss.item() + aux.item(), rel=1e-5)
    assert aux.item() > 0.5  # two layers, each ≈ 0.5 * (≥ 1 - small)


def test_train_loop_runs_moe_tiny_with_telemetry_and_spectra(tiny_config, single_thread):
    config = tiny_config(model="moe-tiny", spectra_every=10, telemetry_every=5)
    summary = train(config)
    rows = read_metrics(summary.run_dir)
    assert any("moe/load_max_over_mean/1" in r for r in rows)
    spectra = [r for r in rows if any(k.startswith("svd_entropy/") for k in r)]
    assert {r["step"] for r in spectra} == {10, 20}
    assert "svd_entropy/layers.1.mlp.w_gate/63" in spectra[0] and "svd_entropy/layers.1.mlp.router" in spectra[0]
    record = json.loads((summary.run_dir / "config.json").read_text())
    assert record["model_config"]["n_routed_experts"] == 64
    # The balance bias moved during training and is in the checkpoint.
    ckpt = next((summary.run_dir / "checkpoints").glob("step_*"))
    assert load_file(ckpt / "model.safetensors")["layers.1.mlp.balance_bias"].abs().sum() > 0
