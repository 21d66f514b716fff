"""MLA: output against a loop over the DeepSeek-V2 equations; the KV-latent cache; config rules."""

import math

import pytest
import torch

from muonlab.models import MLA, ModelConfig, Transformer, preset, rope_cos_sin
from muonlab.models.mla import causal_attention

D, H, T = 32, 2, 6


def mla_config(**kw):
    base = dict(vocab_size=40, d_model=D, n_layers=2, n_heads=H, attention="mla", kv_lora_rank=12,
                qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=10, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


def rms_norm(x, gain, eps):
    return x / torch.sqrt(x.square().mean() + eps) * gain


def rope_complex(vec, position, theta):
    """Rotate pairs (i, i + r/2) as complex numbers by position * theta^(-2i/r)."""
    half = vec.shape[0] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / vec.shape[0])
    z = torch.complex(vec[:half].double(), vec[half:].double()) * torch.exp(1j * position * freqs)
    return torch.cat([z.real, z.imag]).float()


def reference_mla(m: MLA, cfg: ModelConfig, x):
    """DeepSeek-V2 §2.1 token by token and head by head, with an explicit causal softmax."""
    n, r, v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        c_kv = [rms_norm(m.wkv_down.weight @ h, m.kv_norm.weight, 1e-6) for h in x[b]]  # DeepSeek's latent eps
        k_rope = [rope_complex(m.wk_rope.weight @ h, s, cfg.rope_theta) for s, h in enumerate(x[b])]
        for t in range(x.shape[1]):
            h = x[b, t]
            c_q = rms_norm(m.wq_down.weight @ h, m.q_norm.weight, 1e-6) if cfg.q_lora_rank else h
            heads = []
            for i in range(H):
                q = torch.cat([(m.wq_nope.weight @ c_q)[i * n:(i + 1) * n],
                               rope_complex((m.wq_rope.weight @ c_q)[i * r:(i + 1) * r], t, cfg.rope_theta)])
                keys = [torch.cat([(m.wk_up.weight @ c_kv[s])[i * n:(i + 1) * n], k_rope[s]]) for s in range(t + 1)]
                values = [(m.wv_up.weight @ c_kv[s])[i * v:(i + 1) * v] for s in range(t + 1)]
                logits = torch.stack([q @ k for k in keys]) / math.sqrt(n + r)
                weights = torch.exp(logits - logits.max())
                weights = weights / weights.sum()
                heads.append(sum(w * val for w, val in zip(weights, values)))
            out[b, t] = m.wo.weight @ torch.cat(heads)
    return out


@pytest.mark.parametrize("q_lora_rank", [0, 10], ids=["no-q-compression", "q-compression"])
def test_mla_matches_the_equations(q_lora_rank):
    cfg = mla_config(q_lora_rank=q_lora_rank)
    torch.manual_seed(0)
    m = MLA(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)  # norm gains too, so a missing gain would show
    x = torch.randn(2, T, D)
    cos, sin = rope_cos_sin(cfg.qk_rope_head_dim, T, cfg.rope_theta)
    with torch.no_grad():
        torch.testing.assert_close(m(x, cos, sin), reference_mla(m, cfg, x), rtol=1e-4, atol=1e-5)


def test_kv_cache_shape_is_latent_plus_rope_key():
    cfg = mla_config()
    m = MLA(cfg)
    cos, sin = rope_cos_sin(cfg.qk_rope_head_dim, T, cfg.rope_theta)
    assert m.kv_cache_shape(3, T) == (3, T, 12 + 6) == tuple(m.kv_latent(torch.randn(3, T, D), cos, sin).shape)
    assert cfg.kv_cache_width() == 18
    # Moonlight: kv_lora_rank 512 + qk_rope_head_dim 64 = 576 numbers per token and layer.
    moonlight = preset("moonlight", 163840, 8192)
    with torch.device("meta"):
        assert MLA(moonlight).kv_cache_shape(1, 8192) == (1, 8192, 576)
    assert (
        moonlight.kv_cache_width() == 576
        and ModelConfig(vocab_size=8, d_model=2048, n_layers=1, n_heads=16).kv_cache_width() == 4096
    )


@pytest.mark.parametrize("d_qk, d_v", [(8, 5), (5, 8), (6, 6)])
def test_causal_attention_with_unequal_head_widths(d_qk, d_v):
    q, k = torch.randn(2, 3, 7, d_qk), torch.randn(2, 3, 7, d_qk)
    v = torch.randn(2, 3, 7, d_v)
    logits = q @ k.mT / math.sqrt(d_qk)
    logits = logits.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(causal_attention(q, k, v), logits.softmax(-1) @ v, rtol=1e-5, atol=1e-6)


def test_mla_transformer_counts_and_trains():
    cfg = mla_config(q_lora_rank=10)
    n, r, v, c, q = 8, 6, 10, 12, 10
    attn = D * q + q + q * H * (n + r) + D * (c + r) + c + c * H * (n + v) + H * v * D  # incl. both norm gains
    assert cfg.attn_params() == attn
    model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    assert model.rope_cos.shape == (16, r // 2)  # RoPE tables are for the rope channels only
    # Attention term of the FLOPs: 6 * T * H * (d_qk + d_v) per layer and token.
    assert cfg.flops_per_token(16) == 6 * cfg.num_matmul_params() + 6 * 2 * 16 * H * (n + r + v)
    model(torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attention="gqa"), r"attention is 'gqa'; valid values are 'mha', 'mla'"),
        (dict(attention="mha", kv_lora_rank=8), r"kv_lora_rank is 8, but it applies only to attention='mla'"),
        (dict(attention="mha", q_lora_rank=8), r"q_lora_rank is 8, but it applies only to attention='mla'"),
        (dict(qk_rope_head_dim=5), r"qk_rope_head_dim is 5; RoPE rotates pairs"),
        (dict(kv_lora_rank=0), r"kv_lora_rank is 0; it must be a positive integer"),
        (dict(q_lora_rank=-1), r"q_lora_rank is -1; it must be an integer >= 0"),
    ],
)
def test_mla_config_errors_name_the_field(kwargs, match):
    base = dict(vocab_size=8, d_model=D, n_layers=1, n_heads=H, attention="mla")
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**base)


def test_mla_defaults_follow_moonlight_ratios():
    cfg = ModelConfig(vocab_size=8, d_model=256, n_layers=1, n_heads=4, attention="mla")
    # Moonlight: head_dim 128 -> nope 128, rope 64, v 128; kv latent 512 = d_model / 4; no q compression.
    assert (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank, cfg.q_lora_rank) == (
        64,
        32,
        64,
        64,
        0,
    )
