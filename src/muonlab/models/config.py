"""Model configuration: one flat dataclass, size presets on a single depth dial, exact counts.

Everything here is plain Python (no torch): parameter and FLOP counts are formulas over the config,
so an experiment can plan a compute budget without building the model. Tests check each formula
against ``sum(p.numel())`` of the built model and against a hand count of the matrix shapes.

One dataclass describes the dense Llama-style model and Moonlight's DeepSeek-V3-style variant
(arXiv 2502.16982 §3.3, App. C): ``attention="mla"`` selects multi-head latent attention, and
``n_routed_experts > 0`` turns every block from ``first_k_dense`` on into a mixture-of-experts
layer (shared + fine-grained routed experts, sigmoid router, aux-loss-free balancing).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

MLP_KINDS = ("swiglu", "gelu")
ATTENTION_KINDS = ("mha", "mla")
_MLA_FIELDS = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def default_ffn_hidden(d_model: int, mlp: str, multiple_of: int = 64) -> int:
    """The MLP hidden width used when ``ffn_hidden`` is None.

    SwiGLU: ``8/3 * d_model`` rounded up to a multiple of ``multiple_of`` (Llama), so its three
    matrices hold about as many weights as a 4x GELU MLP's two. GELU: ``4 * d_model`` (GPT-2).
    """
    if mlp == "swiglu":
        return _round_up(8 * d_model / 3, multiple_of)
    return 4 * d_model


@dataclass
class ModelConfig:
    """A Llama-style decoder-only transformer (RMSNorm, RoPE, SwiGLU or GELU MLP, no biases),
    optionally with multi-head latent attention and mixture-of-experts blocks (Moonlight's shape).

    ``n_kv_heads``, ``ffn_hidden`` and the MLA / MoE widths given as None are resolved to numbers
    in ``__post_init__`` (MLA widths only with ``attention="mla"``, ``expert_ffn_hidden`` only with
    ``n_routed_experts > 0``), so ``to_dict()`` writes the fully resolved config. Because of that, ``dataclasses.replace(cfg,
    d_model=...)`` keeps the old resolved ``ffn_hidden``; pass ``ffn_hidden=None`` (and
    ``n_kv_heads=None``) alongside to re-derive them.
    """

    vocab_size: int
    """Number of token ids; the size of the embedding table and of the LM head's output."""
    d_model: int
    """Width of the residual stream (the hidden size H)."""
    n_layers: int
    """Number of transformer blocks (the depth)."""
    n_heads: int
    """Number of query heads; must divide d_model. head_dim = d_model // n_heads, and must be even (RoPE)."""
    n_kv_heads: int | None = None
    """Number of key/value heads (grouped-query attention); must divide n_heads. None means n_heads (MHA)."""
    ffn_hidden: int | None = None
    """MLP hidden width. None means 8/3*d_model rounded up to multiple_of (swiglu) or 4*d_model (gelu)."""
    mlp: str = "swiglu"
    """MLP kind: "swiglu" (w_down(silu(w_gate x) * w_up x)) or "gelu" (w_out(gelu(w_in x)), Moonlight Table 1)."""
    multiple_of: int = 64
    """The default SwiGLU hidden width is rounded up to a multiple of this (matmul-friendly shapes)."""
    max_seq_len: int = 1024
    """Longest sequence the model accepts; RoPE tables are precomputed for this many positions."""
    rope_theta: float = 10000.0
    """RoPE base: pair i of each head rotates by angle position * rope_theta ** (-2i / head_dim)."""
    norm_eps: float = 1e-5
    """Epsilon inside every RMSNorm."""
    tie_embeddings: bool = False
    """If True, the LM head reuses the embedding matrix (lm_head.weight is embed.weight)."""
    init_std: float = 0.02
    """Std of the normal init of every linear and embedding weight (output projections get /sqrt(2*n_layers))."""
    # ---- attention kind (Moonlight / DeepSeek-V2 §2.1: multi-head latent attention) ----------------
    attention: str = "mha"
    """Attention kind: "mha" (multi-head / grouped-query, ``n_kv_heads``) or "mla" (multi-head latent attention)."""
    q_lora_rank: int = 0
    """MLA: rank of the query compression W_DQ (with an RMSNorm on the latent); 0 = no compression (Moonlight)."""
    kv_lora_rank: int | None = None
    """MLA: width of the compressed KV latent c_KV, cached per token. None: d_model // 4 (Moonlight: 512 = 2048/4)."""
    qk_nope_head_dim: int | None = None
    """MLA: per-head query/key channels without RoPE (content part). None: head_dim (Moonlight: 128)."""
    qk_rope_head_dim: int | None = None
    """MLA: per-head query channels with RoPE; the key's rope part is one shared head. None: head_dim // 2 (Moonlight: 64)."""
    v_head_dim: int | None = None
    """MLA: per-head value channels. None: head_dim (Moonlight: 128)."""
    # ---- mixture of experts (Moonlight App. C: DeepSeek-V3-small-like) -----------------------------
    n_routed_experts: int = 0
    """Routed experts per MoE layer (Moonlight: 64); 0 = a dense model."""
    n_shared_experts: int = 0
    """Shared experts every token passes through, stored as one SwiGLU of n_shared * expert_ffn_hidden (Moonlight: 2)."""
    top_k: int = 0
    """Routed experts chosen per token (Moonlight: 6); required (>= 1) when n_routed_experts > 0."""
    expert_ffn_hidden: int | None = None
    """Hidden width of one expert's SwiGLU. None: ffn_hidden // (top_k + n_shared_experts), so the active
    expert width equals the dense width (Moonlight: 11264 / (6 + 2) = 1408)."""
    first_k_dense: int = 1
    """With experts, blocks 0 .. first_k_dense-1 keep the dense MLP (Moonlight: first_k_dense_replace = 1)."""
    routed_scaling_factor: float = 1.0
    """Multiplies the normalised top-k gate weights (Moonlight: 2.446; see ``moe.routed_scaling_factor``)."""
    moe_bias_update_rate: float = 1e-3
    """u of the aux-loss-free balance bias update b_i <- b_i + u * (sign(e_i) - mean(sign(e))) (Moonlight: 1e-3)."""
    moe_aux_loss_coef: float = 0.0
    """α of DeepSeek-V3's sequence-wise balance loss, added to the training loss; 0 = off (aux-loss-free only).
    Moonlight's released config lists 0.001 with seq_aux; the paper does not say it was used."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "multiple_of", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"ModelConfig.mlp is {self.mlp!r}; valid values are {', '.join(map(repr, MLP_KINDS))}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads among the divisors of d_model (e.g. d_model // 64)."
            )
        if self.head_dim % 2:
            raise ValueError(
                f"ModelConfig head_dim = d_model // n_heads = {self.head_dim} is odd; "
                f"RoPE rotates pairs of channels, so head_dim must be even."
            )
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        _check_positive_int("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; "
                f"valid values are the divisors of n_heads."
            )
        if self.ffn_hidden is None:
            self.ffn_hidden = default_ffn_hidden(self.d_model, self.mlp, self.multiple_of)
        _check_positive_int("ffn_hidden", self.ffn_hidden)
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(f"ModelConfig.{name} is {value!r}; it must be a finite number > 0.")
            setattr(self, name, float(value))
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"ModelConfig.tie_embeddings is {self.tie_embeddings!r}; it must be True or False.")
        self._resolve_attention()
        self._resolve_moe()

    def _resolve_attention(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(
                f"ModelConfig.attention is {self.attention!r}; valid values are {', '.join(map(repr, ATTENTION_KINDS))}."
            )
        _check_non_negative_int("q_lora_rank", self.q_lora_rank)
        if self.attention == "mha":
            given = [n for n in _MLA_FIELDS if getattr(self, n) is not None] + (["q_lora_rank"] if self.q_lora_rank else [])
            if given:
                raise ValueError(
                    f"ModelConfig.{given[0]} is {getattr(self, given[0])!r}, but it applies only to attention='mla' "
                    f"(attention is 'mha'); leave it unset or set attention='mla'."
                )
            return
        # Moonlight's MLA widths relative to its head_dim 128 and d_model 2048 (App. C config).
        derived = dict(kv_lora_rank=self.d_model // 4, qk_nope_head_dim=self.head_dim,
                       qk_rope_head_dim=self.head_dim // 2, v_head_dim=self.head_dim)
        for name, value in derived.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
            _check_positive_int(name, getattr(self, name))
        if self.qk_rope_head_dim % 2:
            raise ValueError(
                f"ModelConfig.qk_rope_head_dim is {self.qk_rope_head_dim}; RoPE rotates pairs of channels, so it must be even."
            )

    def _resolve_moe(self) -> None:
        for name in ("n_routed_experts", "n_shared_experts", "top_k", "first_k_dense"):
            _check_non_negative_int(name, getattr(self, name))
        for name, low in (("routed_scaling_factor", "> 0"), ("moe_bias_update_rate", ">= 0"), ("moe_aux_loss_coef", ">= 0")):
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not ok or value < 0 or (low == "> 0" and value == 0):
                raise ValueError(f"ModelConfig.{name} is {value!r}; it must be a finite number {low}.")
            setattr(self, name, float(value))
        E = self.n_routed_experts
        if E == 0:
            given = [n for n in ("n_shared_experts", "top_k") if getattr(self, n)]
            given += ["expert_ffn_hidden"] if self.expert_ffn_hidden is not None else []
            if given:
                raise ValueError(
                    f"ModelConfig.{given[0]} is {getattr(self, given[0])!r}, but it applies only to MoE models; "
                    f"set n_routed_experts > 0 or leave it unset."
                )
            return
        if self.mlp != "swiglu":
            raise ValueError(f"ModelConfig.mlp is {self.mlp!r}, but experts are SwiGLU; use mlp='swiglu' with n_routed_experts > 0.")
        if not 1 <= self.top_k <= E:
            raise ValueError(f"ModelConfig.top_k is {self.top_k}; with n_routed_experts={E} it must lie in 1 .. {E}.")
        if self.first_k_dense >= self.n_layers:
            raise ValueError(
                f"ModelConfig.first_k_dense={self.first_k_dense} leaves no MoE block among n_layers={self.n_layers}; "
                f"valid values are 0 .. {self.n_layers - 1}."
            )
        if self.expert_ffn_hidden is None:
            assert self.ffn_hidden is not None
            self.expert_ffn_hidden = max(1, self.ffn_hidden // (self.top_k + self.n_shared_experts))
        _check_positive_int("expert_ffn_hidden", self.expert_ffn_hidden)

    # ---- derived shapes -------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        """Channels per attention head: d_model // n_heads."""
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Output width of wk and wv: n_kv_heads * head_dim."""
        assert self.n_kv_heads is not None
        return self.n_kv_heads * self.head_dim

    @property
    def rope_dim(self) -> int:
        """Channels per head that RoPE rotates: qk_rope_head_dim for MLA, head_dim for MHA."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim  # type: ignore[return-value]

    @property
    def is_moe(self) -> bool:
        """True when some blocks are mixture-of-experts layers (n_routed_experts > 0)."""
        return self.n_routed_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether block ``layer_idx`` holds an MoE layer (blocks from first_k_dense on, when is_moe)."""
        return self.is_moe and layer_idx >= self.first_k_dense

    def kv_cache_width(self) -> int:
        """Numbers cached per token and layer for generation.

        MHA/GQA: keys and values, 2 * n_kv_heads * head_dim. MLA: the normalised latent c_KV and the
        shared rope key, kv_lora_rank + qk_rope_head_dim (DeepSeek-V2 §2.1.2; Moonlight: 512 + 64 = 576,
        against 2 * 16 * 128 = 4096 for MHA of the same heads).
        """
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim  # type: ignore[operator]
        return 2 * self.kv_dim

    # ---- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a JSON-ready dict (field name -> value)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build a config from ``to_dict()`` output; unknown keys are an error that names them."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(
                f"ModelConfig does not have the field(s) {', '.join(map(repr, unknown))}; "
                f"valid fields are {', '.join(valid)}."
            )
        return cls(**d)

    # ---- counts ---------------------------------------------------------------------------------

    def attn_matmul_params(self) -> int:
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
        d, H = self.d_model, self.n_heads
        if self.attention == "mha":
            return 2 * d * d + 2 * d * self.kv_dim
        n, r, v, c, q = self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim, self.kv_lora_rank, self.q_lora_rank
        assert n is not None and r is not None and v is not None and c is not None
        queries = d * H * (n + r) if q == 0 else d * q + q * H * (n + r)
        return queries + d * (c + r) + c * H * (n + v) + H * v * d

    def attn_params(self) -> int:
        """All parameters of one attention layer: ``attn_matmul_params()``, plus for MLA the RMSNorm
        gains of its latents (kv_lora_rank, and q_lora_rank when the query is compressed)."""
        if self.attention == "mha":
            return self.attn_matmul_params()
        assert self.kv_lora_rank is not None
        return self.attn_matmul_params() + self.kv_lora_rank + self.q_lora_rank

    def _expert_params(self) -> int:
        """Weights of one routed expert (SwiGLU of width f_e): 3 * d * f_e."""
        assert self.expert_ffn_hidden is not None
        return 3 * self.d_model * self.expert_ffn_hidden

    def mlp_params(self, layer_idx: int = 0) -> int:
        """All parameters of the feed-forward module of block ``layer_idx``.

        Dense: 3*d*f (SwiGLU) or 2*d*f (GELU). MoE (E routed experts of width f_e, S shared)::

            E * 3*d*f_e        routed expert stacks w_gate, w_up [E, f_e, d], w_down [E, d, f_e]
          + 3*d*(S*f_e)        the shared experts, one SwiGLU of width S*f_e
          + E*d                the router [E, d]

        The load-balancing bias is a buffer, not a parameter.
        """
        if self.is_moe_layer(layer_idx):
            return (self.n_routed_experts + self.n_shared_experts) * self._expert_params() + self.n_routed_experts * self.d_model
        assert self.ffn_hidden is not None
        n_mats = 3 if self.mlp == "swiglu" else 2
        return n_mats * self.d_model * self.ffn_hidden

    def mlp_active_params(self, layer_idx: int = 0) -> int:
        """Feed-forward parameters one token uses in block ``layer_idx``: the whole dense MLP, or in an
        MoE layer its top_k routed experts, the shared experts and the router: (k + S)*3*d*f_e + E*d."""
        if self.is_moe_layer(layer_idx):
            return (self.top_k + self.n_shared_experts) * self._expert_params() + self.n_routed_experts * self.d_model
        return self.mlp_params(layer_idx)

    def block_params(self, layer_idx: int = 0) -> int:
        """All parameters of block ``layer_idx``: attention + MLP + its two RMSNorm weight vectors."""
        return self.attn_params() + self.mlp_params(layer_idx) + 2 * self.d_model

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count of ``Transformer(self)``, equal to ``sum(p.numel() for p in model.parameters())``.

        total = V*d (embed) + sum over blocks of block_params + d (final norm) + V*d (LM head, untied only).
        With ``include_embedding=False`` this is ``num_non_embedding_params()``.
        """
        non_embedding = sum(self.block_params(i) for i in range(self.n_layers)) + self.d_model
        if not include_embedding:
            return non_embedding
        return non_embedding + self._vocab_params()

    def num_active_params(self, include_embedding: bool = True) -> int:
        """Parameters a token uses (Moonlight's "activated" parameters), counted like ``num_params``
        but with each MoE block's routed experts counted top_k times instead of n_routed_experts::

            active = total - sum over MoE blocks of (E - k) * 3*d*f_e

        Equal to ``num_params`` for a dense model. Moonlight: 2.24B activated of 15.29B without
        embeddings (arXiv 2502.16982 §3.3).
        """
        inactive = sum(self.mlp_params(i) - self.mlp_active_params(i) for i in range(self.n_layers))
        return self.num_params(include_embedding) - inactive

    def _vocab_params(self) -> int:
        return (1 if self.tie_embeddings else 2) * self.vocab_size * self.d_model

    def num_non_embedding_params(self) -> int:
        """Parameters outside the vocabulary matrices: total minus the embedding and the (untied) LM head.

        Both vocabulary-sized matrices are left out, so the number is the same for tied and untied
        models (Kaplan et al.'s N; with a tied head it is exactly "total minus embedding").
        """
        return self.num_params(include_embedding=False)

    def num_matmul_params(self) -> int:
        """Weights that take part in a matmul per token: every block's attention matrices and *active*
        feed-forward weights (``mlp_active_params``, the router included) plus the LM head.

        The embedding lookup is not a matmul and is excluded; the LM head (V*d) is included even when
        tied, because the head's matmul runs either way. Norm weights are excluded.
        """
        blocks = sum(self.attn_matmul_params() + self.mlp_active_params(i) for i in range(self.n_layers))
        return blocks + self.vocab_size * self.d_model

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) at context length ``seq_len`` (default max_seq_len).

            flops = 6 * N_matmul + 6 * n_layers * seq_len * n_heads * (d_qk + d_v)

        6*N_matmul: each matmul weight costs 2 FLOPs (multiply + add) per token forward and 4 backward
        (grad w.r.t. input and w.r.t. weight); N_matmul is ``num_matmul_params()`` (active weights
        only in MoE blocks, LM head included, embedding lookup excluded). The second term is
        attention itself: per layer and token, the scores q.k over seq_len keys (2*seq_len*H*d_qk)
        and the weighted sum of values (2*seq_len*H*d_v), times 3 for forward + backward. For MHA,
        H*d_qk = H*d_v = d_model and the term is Kaplan et al. / PaLM's 12 * n_layers * d_model *
        seq_len; for MLA, d_qk = qk_nope_head_dim + qk_rope_head_dim and d_v = v_head_dim. The causal
        mask is NOT discounted: the count is for full seq_len x seq_len score matrices, not the
        ~half a causal kernel actually needs. Norms, RoPE, softmax, activations and MoE routing
        (sigmoid, top-k, permutation) are ignored.
        """
        t = self.max_seq_len if seq_len is None else seq_len
        if self.attention == "mla":
            score_dims = self.n_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim)  # type: ignore[operator]
        else:
            score_dims = 2 * self.d_model
        return 6 * self.num_matmul_params() + 6 * self.n_layers * t * score_dims


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name} is {value!r}; it must be a positive integer.")


def _check_non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"ModelConfig.{name} is {value!r}; it must be an integer >= 0.")


# ---- presets ------------------------------------------------------------------------------------

ASPECT_RATIO = 64
"""d_model per layer on the depth dial: d_model = 64 * depth (nanochat's aspect ratio)."""

# name -> (depth, d_model override or None). Sizes in the names count parameters at vocab 50257
# with a tied head, as GPT-2/GPT-3 do; "tiny" and "demo" are sized for a ~4k-8k vocab instead.
_PRESETS: dict[str, tuple[int, int | None]] = {
    "tiny": (2, 64),  # unit tests / smoke runs: narrower than the dial's 128
    "demo": (4, None),  # d=256: the laptop demo, a few million params with a ~4k-8k vocab
    "small": (6, None),  # d=384, ~nanoGPT's Shakespeare model
    "gpt2-small": (12, None),  # d=768, 12 heads: 124M at vocab 50257 (tied), like GPT-2 small
    "350m": (18, None),  # d=1152, 18 heads
    "760m": (24, None),  # d=1536, 12 heads of 128
    "1b": (26, None),  # d=1664, 13 heads of 128 (0.95B at vocab 50257 tied, 1.04B untied)
}


def _dial(depth: int) -> tuple[int, int]:
    """(d_model, n_heads) for a depth on the dial.

    head_dim = 64 while 64*depth < 1536, else 128; d_model = 64*depth rounded up to a multiple of
    head_dim; n_heads = d_model // head_dim.
    """
    base = ASPECT_RATIO * depth
    head_dim = 64 if base < 1536 else 128
    d_model = _round_up(base, head_dim)
    return d_model, d_model // head_dim


def preset(name_or_depth: str | int, vocab_size: int, max_seq_len: int, **overrides: Any) -> ModelConfig:
    """A ModelConfig from a preset name (see ``list_presets()``) or a depth (the one dial).

    The dial (as in nanochat): n_layers = depth; d_model = 64 * depth; head_dim = 64 while
    64 * depth < 1536 and 128 from there on, with d_model rounded up to a multiple of head_dim;
    n_heads = d_model // head_dim; n_kv_heads = n_heads; SwiGLU with the default hidden width.
    Presets tie the LM head to the embedding (GPT-2 style; the names' sizes are counted that way);
    pass ``tie_embeddings=False`` for a Llama/Moonlight-style untied head. The MoE presets
    (``list_moe_presets()``: ``moe-tiny``, ``moe-demo``, ``moonlight``) are fixed shapes, not points
    on the dial; their MLA and expert widths derive from d_model, so overriding it keeps the ratios. Any ModelConfig field can
    be overridden by keyword (e.g. ``mlp="gelu"``, ``n_kv_heads=2``).

    Example: ``preset("gpt2-small", 50257, 1024).num_params() == 123_551_232``.
    """
    if isinstance(name_or_depth, str) and name_or_depth in _MOE_PRESETS:
        kwargs = dict(vocab_size=vocab_size, max_seq_len=max_seq_len, tie_embeddings=True)
        kwargs.update(_MOE_PRESETS[name_or_depth])
        kwargs.update(overrides)
        return ModelConfig(**kwargs)
    if isinstance(name_or_depth, str):
        if name_or_depth not in _PRESETS:
            raise ValueError(
                f"Unknown model preset {name_or_depth!r}; valid presets are {', '.join(_PRESETS)}, "
                f"{', '.join(_MOE_PRESETS)} or an integer depth >= 1."
            )
        depth, width = _PRESETS[name_or_depth]
        d_model, n_heads = _dial(depth) if width is None else (width, max(1, width // 64))
    elif isinstance(name_or_depth, int) and not isinstance(name_or_depth, bool) and name_or_depth >= 1:
        depth = name_or_depth
        d_model, n_heads = _dial(depth)
    else:
        raise ValueError(
            f"Model preset {name_or_depth!r} is neither a preset name ({', '.join(_PRESETS)}) "
            f"nor an integer depth >= 1."
        )
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=depth,
        n_heads=n_heads,
        max_seq_len=max_seq_len,
        tie_embeddings=True,
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


# Moonlight (arXiv 2502.16982 App. C; HF config of Moonlight-16B-A3B): MLA and a DeepSeek-V3-style
# MoE with 64 routed + 2 shared experts, top-6, sigmoid router, gate scaling 2.446, layer 0 dense.
_MOONLIGHT_ROUTING: dict[str, Any] = dict(
    attention="mla", n_routed_experts=64, n_shared_experts=2, top_k=6, first_k_dense=1, routed_scaling_factor=2.446,
)
_MOE_PRESETS: dict[str, dict[str, Any]] = {
    "moe-tiny": dict(n_layers=2, d_model=64, n_heads=1, **_MOONLIGHT_ROUTING),
    "moe-demo": dict(n_layers=4, d_model=256, n_heads=4, **_MOONLIGHT_ROUTING),
    "moonlight": dict(
        n_layers=27, d_model=2048, n_heads=16, ffn_hidden=11264, expert_ffn_hidden=1408, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, rope_theta=50000.0, tie_embeddings=False,
        **_MOONLIGHT_ROUTING,
    ),
}
"""Moonlight-shaped MoE presets.

``moonlight`` is the paper's model (27 layers, d 2048, 16 MLA heads, dense FFN 11264, experts 1408,
KV latent 512, untied head; 15.29B parameters and 2.24B active without embeddings). It is there for
counting and planning; it does not fit a laptop.

``moe-tiny`` (d 64, 2 layers) and ``moe-demo`` (d 256, 4 layers) keep Moonlight's ratios:

- the routing: 64 routed + 2 shared experts, top-6 (top_k / E = 6/64 ≈ 0.094), layer 0 dense;
- expert width = dense width / 8 (Moonlight 1408 / 11264): ``expert_ffn_hidden`` is derived as
  ffn_hidden // (top_k + n_shared) = ffn_hidden / 8, so a token's active expert width (6 routed +
  2 shared) equals the dense width and an MoE block costs what a dense block costs per token;
- the gate scaling 2.446: the Monte-Carlo factor of ``muonlab.models.moe.routed_scaling_factor``
  for 64 experts, top-6 (2.4463 ± 0.001 with 10^5 samples; 2.446 in the paper);
- MLA: no query compression, KV latent = d_model / 4 (512/2048), nope = v = head_dim,
  rope = head_dim / 2 (128, 128, 64 at head_dim 128);
- active vs total non-embedding parameters: 0.21 for moe-demo (3.1M of 14.9M), 0.29 for moe-tiny
  (Moonlight 0.147 = 2.24B / 15.29B: with 26 of 27 blocks MoE and a relatively smaller attention,
  experts are a larger share of its model than of these 2- and 4-block ones).

Not kept: the dense FFN width, which follows the project's 8/3 * d_model rule (Moonlight uses
5.5 * d_model), so a preset's dense twin (``n_routed_experts=0``, the same attention) is the
ordinary dense model of the same active size; head_dim is 64 as in the other small presets.
"""


def list_presets() -> list[str]:
    """Dense preset names, smallest first (for CLI choices and help); see also ``list_moe_presets()``."""
    return list(_PRESETS)


def list_moe_presets() -> list[str]:
    """Names of the Moonlight-shaped MoE + MLA presets, smallest first."""
    return list(_MOE_PRESETS)


def describe_presets(vocab_size: int = 50257, max_seq_len: int = 1024) -> str:
    """A text table of the presets with their shapes and parameter counts at ``vocab_size``."""
    lines = [f"{'preset':<11} {'layers':>6} {'d_model':>7} {'heads':>5} {'ffn':>5} {'params':>9} {'non-emb':>9}"]
    for name in _PRESETS:
        c = preset(name, vocab_size, max_seq_len)
        lines.append(
            f"{name:<11} {c.n_layers:>6} {c.d_model:>7} {c.n_heads:>5} {c.ffn_hidden:>5} "
            f"{_human(c.num_params()):>9} {_human(c.num_non_embedding_params()):>9}"
        )
    lines.append(f"(vocab {vocab_size}, tied head; any integer depth also works: d_model = 64 * depth)")
    lines.append("")
    lines.append(f"{'MoE preset':<11} {'layers':>6} {'d_model':>7} {'heads':>5} {'experts':>9} {'f_e':>5} "
                 f"{'params':>9} {'active':>9} {'non-emb':>9} {'active':>9}")
    for name in _MOE_PRESETS:
        c = preset(name, vocab_size, max_seq_len)
        experts = f"{c.n_routed_experts}+{c.n_shared_experts}/k{c.top_k}"
        lines.append(
            f"{name:<11} {c.n_layers:>6} {c.d_model:>7} {c.n_heads:>5} {experts:>9} {c.expert_ffn_hidden:>5} "
            f"{_human(c.num_params()):>9} {_human(c.num_active_params()):>9} "
            f"{_human(c.num_non_embedding_params()):>9} {_human(c.num_active_params(include_embedding=False)):>9}"
        )
    lines.append("(MLA attention, layer 0 dense; experts = routed+shared/top-k; f_e = expert width; "
                 "'active' = parameters a token uses)")
    return "\n".join(lines)


def _human(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}K"
