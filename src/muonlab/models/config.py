"""Model configuration: one flat dataclass with its validation and derived shapes.

Everything here is plain Python (no torch). The exact parameter and FLOP counts are formulas in
``muonlab.models.counting`` (``cfg.num_params()`` and friends call them); named sizes and the depth
dial are in ``muonlab.models.presets``.

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

from . import counting

PARAMETRIZATIONS = ("sp", "mup")
"""``"sp"``: the standard parametrization (every factor 1); ``"mup"``: the table of muonlab.models.mup."""

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
    ``n_routed_experts > 0``), so ``to_dict()`` writes the fully resolved config. Because of that,
    ``dataclasses.replace(cfg,
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
    """MLA: per-head query channels with RoPE; the key's rope part is one shared head. None: head_dim // 2
    (Moonlight: 64)."""
    v_head_dim: int | None = None
    """MLA: per-head value channels. None: head_dim (Moonlight: 128)."""
    # ---- mixture of experts (Moonlight App. C: DeepSeek-V3-small-like) -----------------------------
    n_routed_experts: int = 0
    """Routed experts per MoE layer (Moonlight: 64); 0 = a dense model."""
    n_shared_experts: int = 0
    """Shared experts every token passes through, stored as one SwiGLU of n_shared * expert_ffn_hidden
    (Moonlight: 2)."""
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

    # ---- parametrization (Tensor Programs V's muP, as the Essential AI paper applies it; models/mup.py) ------
    parametrization: str = "sp"
    """"sp" (standard) or "mup": multipliers, init stds and per-role lr factors that make hyperparameters
    tuned at ``mup_base_width`` transfer across widths (the table in ``muonlab.models.mup``)."""
    mup_base_width: int = 256
    """muP's base width d₀: at d_model = d₀ muP equals SP; the width multiplier is m = d_model / d₀.
    256 is the ``demo`` preset's width, the run default, so its tuned lr carries over unchanged."""
    mup_base_head_dim: int | None = None
    """muP only: the query/key head width h₀ at the base width when a width family widens the heads; attention
    logits are then scaled by √h₀ / h (TP5's 1/d rule). None: heads keep their width as d_model grows (more heads),
    and logits keep 1/√h."""

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
        self._check_parametrization()

    def _resolve_attention(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(
                f"ModelConfig.attention is {self.attention!r}; valid values are "
                f"{', '.join(map(repr, ATTENTION_KINDS))}."
            )
        _check_non_negative_int("q_lora_rank", self.q_lora_rank)
        if self.attention == "mha":
            given = [n for n in _MLA_FIELDS if getattr(self, n) is not None]
            given += ["q_lora_rank"] if self.q_lora_rank else []
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
                f"ModelConfig.qk_rope_head_dim is {self.qk_rope_head_dim}; RoPE rotates pairs of channels, "
                "so it must be even."
            )

    def _resolve_moe(self) -> None:
        for name in ("n_routed_experts", "n_shared_experts", "top_k", "first_k_dense"):
            _check_non_negative_int(name, getattr(self, name))
        bounds = (("routed_scaling_factor", "> 0"), ("moe_bias_update_rate", ">= 0"), ("moe_aux_loss_coef", ">= 0"))
        for name, low in bounds:
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
            raise ValueError(
                f"ModelConfig.mlp is {self.mlp!r}, but experts are SwiGLU; use mlp='swiglu' with n_routed_experts > 0."
            )
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

    def _check_parametrization(self) -> None:
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"ModelConfig.parametrization is {self.parametrization!r}; valid values are "
                             f"{', '.join(map(repr, PARAMETRIZATIONS))}.")
        _check_positive_int("mup_base_width", self.mup_base_width)
        if self.mup_base_head_dim is None:
            return
        _check_positive_int("mup_base_head_dim", self.mup_base_head_dim)
        if self.parametrization != "mup":
            raise ValueError(
                f"ModelConfig.mup_base_head_dim is {self.mup_base_head_dim!r}, but it applies only to "
                "parametrization='mup'; leave it unset or set parametrization='mup'."
            )

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

    # ---- counts (formulas in muonlab.models.counting) ----------------------------------------------

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count of ``Transformer(self)`` (``counting.num_params``)."""
        return counting.num_params(self, include_embedding)

    def num_non_embedding_params(self) -> int:
        """Parameters outside the embedding and the (untied) LM head: ``num_params(include_embedding=False)``."""
        return counting.num_params(self, include_embedding=False)

    def num_active_params(self, include_embedding: bool = True) -> int:
        """Parameters a token uses, MoE routed experts counted top_k times (``counting.num_active_params``)."""
        return counting.num_active_params(self, include_embedding)

    def num_matmul_params(self) -> int:
        """Weights that take part in a matmul per token, LM head included (``counting.num_matmul_params``)."""
        return counting.num_matmul_params(self)

    def attn_params(self) -> int:
        """All parameters of one attention layer (``counting.attn_params``)."""
        return counting.attn_params(self)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token at context ``seq_len``, default max_seq_len (``counting.flops_per_token``)."""
        return counting.flops_per_token(self, seq_len)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name} is {value!r}; it must be a positive integer.")


def _check_non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"ModelConfig.{name} is {value!r}; it must be an integer >= 0.")
