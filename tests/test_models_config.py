"""ModelConfig: validation, serialisation, presets, and parameter/FLOP counts against hand counts."""

import json

import pytest
import torch

from muonlab.models import ModelConfig, Transformer, describe_presets, list_presets, preset

# A small GQA config whose every matrix shape is written out by hand below.
V, D, L, H, HKV, T = 100, 32, 2, 4, 2, 64
HD = D // H  # 8
KV = HKV * HD  # 16
F_SWIGLU = 128  # 8/3 * 32 = 85.3, rounded up to a multiple of 64
F_GELU = 4 * D


def small(**kw):
    return ModelConfig(vocab_size=V, d_model=D, n_layers=L, n_heads=H, n_kv_heads=HKV, max_seq_len=T, **kw)


def hand_counts(mlp: str):
    attn = D * D + KV * D + KV * D + D * D  # wq [D,D], wk [KV,D], wv [KV,D], wo [D,D]
    if mlp == "swiglu":
        ffn = F_SWIGLU * D + F_SWIGLU * D + D * F_SWIGLU  # w_gate [F,D], w_up [F,D], w_down [D,F]
    else:
        ffn = F_GELU * D + D * F_GELU  # w_in [F,D], w_out [D,F]
    norms_per_block = D + D
    blocks = L * (attn + ffn + norms_per_block)
    embed = V * D
    head = D * V
    final_norm = D
    matmul = L * (attn + ffn) + head
    return dict(embed=embed, head=head, blocks=blocks, final_norm=final_norm, matmul=matmul)


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
@pytest.mark.parametrize("tie", [False, True])
def test_param_and_flop_counts_match_hand_count(mlp, tie):
    cfg = small(mlp=mlp, tie_embeddings=tie)
    h = hand_counts(mlp)
    non_emb = h["blocks"] + h["final_norm"]
    total = h["embed"] + non_emb + (0 if tie else h["head"])
    assert cfg.ffn_hidden == (F_SWIGLU if mlp == "swiglu" else F_GELU)
    assert cfg.num_params() == total
    assert cfg.num_params(include_embedding=False) == non_emb
    assert cfg.num_non_embedding_params() == non_emb
    # The LM head matmul runs whether or not its weight is shared with the embedding.
    assert cfg.num_matmul_params() == h["matmul"]
    attention = 2 * 2 * T * D  # scores q.k and weighted sum of v: 2*T*d FLOPs each per token per layer
    assert cfg.flops_per_token(T) == 6 * h["matmul"] + 3 * L * attention
    assert cfg.flops_per_token() == cfg.flops_per_token(T)  # defaults to max_seq_len

    model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == total  # a tied head is counted once


def test_concrete_numbers():
    # Pin the arithmetic once in plain numbers, in case the shape expressions above share a mistake.
    assert small().num_params() == 3200 + 2 * (1024 + 512 + 512 + 1024 + 3 * 4096 + 64) + 32 + 3200 == 37280
    assert small(tie_embeddings=True).num_params() == 34080
    assert small().flops_per_token(64) == 6 * (2 * (3072 + 12288) + 3200) + 12 * 2 * 32 * 64 == 252672


def test_defaults_resolve():
    cfg = ModelConfig(vocab_size=10, d_model=768, n_layers=1, n_heads=12)
    assert cfg.n_kv_heads == 12 and cfg.ffn_hidden == 2048 and cfg.head_dim == 64
    assert ModelConfig(vocab_size=10, d_model=768, n_layers=1, n_heads=12, mlp="gelu").ffn_hidden == 3072
    assert ModelConfig(vocab_size=10, d_model=100, n_layers=1, n_heads=2, multiple_of=32).ffn_hidden == 288


def test_to_dict_from_dict_roundtrip():
    cfg = small(mlp="gelu", tie_embeddings=True, rope_theta=500000)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["n_kv_heads"] == HKV and d["ffn_hidden"] == F_GELU  # resolved values are written
    assert ModelConfig.from_dict(d) == cfg


def test_from_dict_rejects_unknown_keys():
    d = small().to_dict()
    d["n_head"] = 4
    d["dropout"] = 0.1
    with pytest.raises(ValueError, match=r"'dropout', 'n_head'.*valid fields are vocab_size, d_model"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=30, n_heads=4), r"d_model=30 is not divisible by n_heads=4"),
        (dict(d_model=36, n_heads=4), r"head_dim .* 9 is odd"),
        (dict(n_heads=4, n_kv_heads=3), r"n_kv_heads=3 does not divide n_heads=4"),
        (dict(n_kv_heads=0), r"n_kv_heads is 0; it must be a positive integer"),
        (dict(mlp="relu"), r"mlp is 'relu'; valid values are 'swiglu', 'gelu'"),
        (dict(vocab_size=0), r"vocab_size is 0"),
        (dict(n_layers=2.0), r"n_layers is 2.0"),
        (dict(n_layers=True), r"n_layers is True"),
        (dict(max_seq_len=-1), r"max_seq_len is -1"),
        (dict(ffn_hidden=0), r"ffn_hidden is 0"),
        (dict(norm_eps=0.0), r"norm_eps is 0.0; it must be a finite number > 0"),
        (dict(init_std=float("nan")), r"init_std is nan"),
        (dict(rope_theta="1e4"), r"rope_theta is '1e4'"),
        (dict(tie_embeddings=1), r"tie_embeddings is 1; it must be True or False"),
    ],
)
def test_validation_names_the_field(kwargs, match):
    base = dict(vocab_size=V, d_model=D, n_layers=L, n_heads=H)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**base)


def test_presets():
    names = list_presets()
    assert names[:2] == ["tiny", "demo"] and {"gpt2-small", "350m", "760m", "1b"} <= set(names)
    sizes = [preset(n, 50257, 1024).num_params() for n in names]
    assert sizes == sorted(sizes)
    gpt2 = preset("gpt2-small", 50257, 1024)
    assert (gpt2.n_layers, gpt2.d_model, gpt2.n_heads, gpt2.tie_embeddings) == (12, 768, 12, True)
    assert 123e6 < gpt2.num_params() < 125e6  # GPT-2 small's "124M"
    assert preset(12, 50257, 1024) == gpt2  # the name is a point on the depth dial
    assert 0.9e9 < preset("1b", 50257, 1024).num_params() < 1.1e9
    assert 2e6 < preset("demo", 8192, 256).num_params() < 10e6
    assert 1e5 < preset("tiny", 4096, 256).num_params() < 1e6
    big = preset(24, 50257, 1024)
    assert big.head_dim == 128 and big.d_model == 1536
    assert preset(25, 50257, 1024).d_model == 1664  # 1600 rounded up to a multiple of head_dim 128
    assert preset("demo", 4096, 128, tie_embeddings=False, mlp="gelu").mlp == "gelu"
    assert "gpt2-small" in describe_presets()


@pytest.mark.parametrize("bad", ["gpt3", 0, True, 1.5])
def test_unknown_preset(bad):
    with pytest.raises(ValueError, match="tiny, demo"):
        preset(bad, 100, 64)


def test_count_matches_model_for_every_small_preset():
    for name in ["tiny", "demo"]:
        for tie in (False, True):
            cfg = preset(name, 512, 32, tie_embeddings=tie)
            with torch.device("meta"):  # counting needs no memory
                model = Transformer(cfg)
            assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
