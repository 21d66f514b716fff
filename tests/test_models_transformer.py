"""Transformer: module names, loss at init, causality, RoPE, GQA, autocast, gradients, init."""

import math

import pytest
import torch

from muonlab.models import ModelConfig, Transformer, apply_rope, rope_cos_sin

V = 256


def cfg(**kw):
    base = dict(vocab_size=V, d_model=64, n_layers=2, n_heads=4, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def model(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(cfg(**kw))


def tokens(B=2, T=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g)


def test_module_names_are_the_routing_contract():
    names = {n for n, _ in model(n_kv_heads=2).named_parameters()}
    expected = {"embed.weight", "norm.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.{m}.weight" for m in ("attn_norm", "mlp_norm")}
        expected |= {f"layers.{i}.attn.{w}.weight" for w in ("wq", "wk", "wv", "wo")}
        expected |= {f"layers.{i}.mlp.{w}.weight" for w in ("w_gate", "w_up", "w_down")}
    assert names == expected
    m = model(mlp="gelu", tie_embeddings=True)
    names = {n for n, _ in m.named_parameters()}
    assert "layers.0.mlp.w_in.weight" in names and "layers.0.mlp.w_out.weight" in names
    assert "lm_head.weight" not in names  # shared: named_parameters yields it once, as embed.weight
    assert m.lm_head.weight is m.embed.weight
    assert isinstance(m.layers[0].attn_norm, torch.nn.RMSNorm) and m.config.tie_embeddings
    assert all(mod.bias is None for mod in m.modules() if isinstance(mod, torch.nn.Linear))


def test_logits_shape_and_loss_dtype():
    m, x = model(), tokens()
    assert m(x).shape == (2, 16, V)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(x, tokens(seed=2))
    assert loss.dtype == torch.float32 and loss.ndim == 0


@pytest.mark.parametrize("tie", [False, True])
def test_loss_at_init_is_log_vocab(tie):
    # init_std 0.02 and d_model 64: logits have std ~0.02*sqrt(64) = 0.16, so the expected excess
    # over ln(V) is ~var/2 = 0.013; a bug in init or in the loss would show up far above 0.1.
    m = model(tie_embeddings=tie)
    with torch.no_grad():
        loss = m(tokens(B=4, T=32), tokens(B=4, T=32, seed=2)).item()
    assert abs(loss - math.log(V)) < 0.1, (loss, math.log(V))


def test_ignore_index():
    m, x, y = model(), tokens(), tokens(seed=2)
    y_masked = y.clone()
    y_masked[:, :5] = -100
    with torch.no_grad():
        logits = m(x)
        expected = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, V), y[:, 5:].reshape(-1))
        assert torch.allclose(m(x, y_masked), expected, atol=1e-6)


def test_causality():
    m, x = model(n_kv_heads=2), tokens(T=20)
    x2 = x.clone()
    x2[:, 12] = (x[:, 12] + 1) % V
    with torch.no_grad():
        a, b = m(x), m(x2)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_rope_matches_complex_reference():
    B, Hh, T, hd, theta = 2, 3, 10, 16, 10000.0
    x = torch.randn(B, Hh, T, hd, dtype=torch.float64)
    cos, sin = rope_cos_sin(hd, 32, theta)
    got = apply_rope(x.float(), cos[:T], sin[:T]).double()

    # Reference: channel pair (i, i + hd/2) is the complex number z_i, rotated by
    # exp(1j * t * theta**(-2i/hd)) at position t.
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2 :])
    freqs = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None, :]
    z = z * torch.polar(torch.ones_like(angles), angles)
    want = torch.cat([z.real, z.imag], dim=-1)
    assert torch.allclose(got, want, atol=1e-5)
    # Rotations preserve norms and make q.k depend only on the position offset.
    q, k = torch.randn(1, 1, 1, hd).expand(1, 1, T, hd), torch.randn(1, 1, 1, hd).expand(1, 1, T, hd)
    rq, rk = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
    assert torch.allclose((rq[0, 0, 3] * rk[0, 0, 1]).sum(), (rq[0, 0, 7] * rk[0, 0, 5]).sum(), atol=1e-5)


def test_rope_tables_stay_fp32():
    m = model().to(torch.bfloat16)
    assert m.rope_cos.dtype == torch.float32 and m.embed.weight.dtype == torch.bfloat16
    fresh_cos, _ = rope_cos_sin(m.config.head_dim, m.config.max_seq_len, m.config.rope_theta)
    assert torch.equal(m.rope_cos, fresh_cos)
    assert "rope_cos" not in m.state_dict()  # non-persistent: rebuilt, never checkpointed
    assert m(tokens()).dtype == torch.bfloat16


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = model(n_kv_heads=2)  # 4 query heads, 2 K/V heads of head_dim 16
    mha = Transformer(cfg())
    sd = gqa.state_dict()
    hd, rep = 16, 2
    for i in range(2):
        for w in ("wk", "wv"):
            key = f"layers.{i}.attn.{w}.weight"
            heads = sd[key].view(2, hd, 64)  # [kv_head, hd, d_model]
            sd[key] = heads.repeat_interleave(rep, dim=0).reshape(4 * hd, 64)  # query head h reads kv head h // 2
    mha.load_state_dict(sd)
    x = tokens()
    with torch.no_grad():
        assert torch.allclose(gqa(x), mha(x), atol=1e-5)


def test_bf16_autocast_close_to_fp32():
    m, x, y = model(n_kv_heads=2), tokens(), tokens(seed=2)
    with torch.no_grad():
        ref_logits, ref_loss = m(x), m(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = m(x), m(x, y)
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - ref_logits).abs().max() < 0.05 * ref_logits.abs().max()
    assert abs(loss.item() - ref_loss.item()) < 0.02


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=True, mlp="gelu", n_kv_heads=1)])
def test_backward_reaches_every_parameter(kw):
    m = model(**kw)
    m(tokens(), tokens(seed=2)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_init_statistics_and_determinism():
    m = model(n_layers=8, d_model=128, n_heads=2)
    std, out_std = 0.02, 0.02 / math.sqrt(16)
    assert abs(m.embed.weight.std().item() - std) < 0.002
    assert abs(m.lm_head.weight.std().item() - std) < 0.002
    assert abs(m.layers[3].attn.wq.weight.std().item() - std) < 0.002
    assert abs(m.layers[3].attn.wo.weight.std().item() - out_std) < 0.001
    assert abs(m.layers[3].mlp.w_down.weight.std().item() - out_std) < 0.001
    assert torch.equal(m.layers[0].attn_norm.weight, torch.ones(128))
    # Same global seed -> same weights; init_weights(seed) is reproducible and leaves the global RNG alone.
    assert torch.equal(model(seed=5).layers[1].mlp.w_up.weight, model(seed=5).layers[1].mlp.w_up.weight)
    a, b = model(seed=1), model(seed=2)
    state = torch.get_rng_state()
    a.init_weights(seed=7)
    b.init_weights(seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("tie", [False, True])
def test_meta_init_then_materialize(tie):
    with torch.device("meta"):
        m = Transformer(cfg(tie_embeddings=tie))
    m.to_empty(device="cpu")
    m.init_weights(seed=0)
    assert (m.lm_head.weight is m.embed.weight) == tie  # to_empty() would untie it; the model re-ties
    ref = Transformer(cfg(tie_embeddings=tie))
    ref.init_weights(seed=0)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))


def test_too_long_input_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds ModelConfig.max_seq_len=32"):
        model()(torch.zeros(1, 33, dtype=torch.long))
