"""Exact parameter and FLOP counts of ``Transformer(cfg)``, as formulas over a ``ModelConfig``.

Plain Python (no torch), so an experiment can plan a compute budget without building the model.
Tests check each formula against ``sum(p.numel())`` of the built model and against a hand count of
the matrix shapes. ``ModelConfig.num_params()``, ``num_active_params()``, ``flops_per_token()`` and
friends call these functions.

Notation: d = d_model, V = vocab_size, H = n_heads, f = ffn_hidden, f_e = expert_ffn_hidden,
E = n_routed_experts, S = n_shared_experts, k = top_k.
"""

from __future__ import annotations

__all__ = [
    "attn_matmul_params",
    "attn_params",
    "block_params",
    "flops_per_token",
    "mlp_active_params",
    "mlp_params",
    "num_active_params",
    "num_matmul_params",
    "num_params",
]


def attn_matmul_params(cfg) -> int:
    """Matrix weights of one attention layer (each takes part in a matmul for every token).

    MHA/GQA: wq, wo [d, d]; wk, wv [kv_dim, d]  ->  2*d*d + 2*d*kv_dim.

    MLA, with H heads, n = qk_nope_head_dim, r = qk_rope_head_dim, v = v_head_dim,
    c = kv_lora_rank, q = q_lora_rank (names of ``mla.MLA``)::

        queries, q = 0:  wq_nope [H*n, d], wq_rope [H*r, d]                   d*H*(n + r)
        queries, q > 0:  wq_down [q, d], wq_nope [H*n, q], wq_rope [H*r, q]   d*q + q*H*(n + r)
        keys, values:    wkv_down [c, d], wk_rope [r, d],
                         wk_up [H*n, c], wv_up [H*v, c]                       d*(c + r) + c*H*(n + v)
        output:          wo [d, H*v]                                          H*v*d
    """
    d, H = cfg.d_model, cfg.n_heads
    if cfg.attention == "mha":
        return 2 * d * d + 2 * d * cfg.kv_dim
    n, r, v, c, q = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank, cfg.q_lora_rank
    assert n is not None and r is not None and v is not None and c is not None
    queries = d * H * (n + r) if q == 0 else d * q + q * H * (n + r)
    return queries + d * (c + r) + c * H * (n + v) + H * v * d


def attn_params(cfg) -> int:
    """All parameters of one attention layer: ``attn_matmul_params``, plus for MLA the RMSNorm
    gains of its latents (kv_lora_rank, and q_lora_rank when the query is compressed)."""
    if cfg.attention == "mha":
        return attn_matmul_params(cfg)
    assert cfg.kv_lora_rank is not None
    return attn_matmul_params(cfg) + cfg.kv_lora_rank + cfg.q_lora_rank


def _expert_params(cfg) -> int:
    """Weights of one routed expert (SwiGLU of width f_e): 3 * d * f_e."""
    assert cfg.expert_ffn_hidden is not None
    return 3 * cfg.d_model * cfg.expert_ffn_hidden


def mlp_params(cfg, layer_idx: int = 0) -> int:
    """All parameters of the feed-forward module of block ``layer_idx``.

    Dense: 3*d*f (SwiGLU) or 2*d*f (GELU). MoE (E routed experts of width f_e, S shared)::

        E * 3*d*f_e        routed expert stacks w_gate, w_up [E, f_e, d], w_down [E, d, f_e]
      + 3*d*(S*f_e)        the shared experts, one SwiGLU of width S*f_e
      + E*d                the router [E, d]

    The load-balancing bias is a buffer, not a parameter.
    """
    if cfg.is_moe_layer(layer_idx):
        return (cfg.n_routed_experts + cfg.n_shared_experts) * _expert_params(cfg) + cfg.n_routed_experts * cfg.d_model
    assert cfg.ffn_hidden is not None
    n_mats = 3 if cfg.mlp == "swiglu" else 2
    return n_mats * cfg.d_model * cfg.ffn_hidden


def mlp_active_params(cfg, layer_idx: int = 0) -> int:
    """Feed-forward parameters one token uses in block ``layer_idx``: the whole dense MLP, or in an
    MoE layer its top_k routed experts, the shared experts and the router: (k + S)*3*d*f_e + E*d."""
    if cfg.is_moe_layer(layer_idx):
        return (cfg.top_k + cfg.n_shared_experts) * _expert_params(cfg) + cfg.n_routed_experts * cfg.d_model
    return mlp_params(cfg, layer_idx)


def block_params(cfg, layer_idx: int = 0) -> int:
    """All parameters of block ``layer_idx``: attention + MLP + its two RMSNorm weight vectors."""
    return attn_params(cfg) + mlp_params(cfg, layer_idx) + 2 * cfg.d_model


def num_params(cfg, include_embedding: bool = True) -> int:
    """Exact parameter count of ``Transformer(cfg)``, equal to ``sum(p.numel() for p in model.parameters())``.

    total = V*d (embed) + sum over blocks of block_params + d (final norm) + V*d (LM head, untied only).

    With ``include_embedding=False`` both vocabulary-sized matrices are left out, so the number is
    the same for tied and untied models (Kaplan et al.'s N; with a tied head it is exactly "total
    minus embedding").
    """
    non_embedding = sum(block_params(cfg, i) for i in range(cfg.n_layers)) + cfg.d_model
    if not include_embedding:
        return non_embedding
    return non_embedding + (1 if cfg.tie_embeddings else 2) * cfg.vocab_size * cfg.d_model


def num_active_params(cfg, include_embedding: bool = True) -> int:
    """Parameters a token uses (Moonlight's "activated" parameters), counted like ``num_params``
    but with each MoE block's routed experts counted top_k times instead of n_routed_experts::

        active = total - sum over MoE blocks of (E - k) * 3*d*f_e

    Equal to ``num_params`` for a dense model. Moonlight: 2.24B activated of 15.29B without
    embeddings (arXiv 2502.16982 §3.3).
    """
    inactive = sum(mlp_params(cfg, i) - mlp_active_params(cfg, i) for i in range(cfg.n_layers))
    return num_params(cfg, include_embedding) - inactive


def num_matmul_params(cfg) -> int:
    """Weights that take part in a matmul per token: every block's attention matrices and *active*
    feed-forward weights (``mlp_active_params``, the router included) plus the LM head.

    The embedding lookup is not a matmul and is excluded; the LM head (V*d) is included even when
    tied, because the head's matmul runs either way. Norm weights are excluded.
    """
    blocks = sum(attn_matmul_params(cfg) + mlp_active_params(cfg, i) for i in range(cfg.n_layers))
    return blocks + cfg.vocab_size * cfg.d_model


def flops_per_token(cfg, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward) at context length ``seq_len`` (default max_seq_len).

        flops = 6 * N_matmul + 6 * n_layers * seq_len * n_heads * (d_qk + d_v)

    6*N_matmul: each matmul weight costs 2 FLOPs (multiply + add) per token forward and 4 backward
    (grad w.r.t. input and w.r.t. weight); N_matmul is ``num_matmul_params`` (active weights
    only in MoE blocks, LM head included, embedding lookup excluded). The second term is
    attention itself: per layer and token, the scores q.k over seq_len keys (2*seq_len*H*d_qk)
    and the weighted sum of values (2*seq_len*H*d_v), times 3 for forward + backward. For MHA,
    H*d_qk = H*d_v = d_model and the term is Kaplan et al. / PaLM's 12 * n_layers * d_model *
    seq_len; for MLA, d_qk = qk_nope_head_dim + qk_rope_head_dim and d_v = v_head_dim. The causal
    mask is NOT discounted: the count is for full seq_len x seq_len score matrices, not the
    ~half a causal kernel actually needs. Norms, RoPE, softmax, activations and MoE routing
    (sigmoid, top-k, permutation) are ignored.
    """
    t = cfg.max_seq_len if seq_len is None else seq_len
    if cfg.attention == "mla":
        head_dims = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim  # type: ignore[operator]
        score_dims = cfg.n_heads * head_dims
    else:
        score_dims = 2 * cfg.d_model
    return 6 * num_matmul_params(cfg) + 6 * cfg.n_layers * t * score_dims
