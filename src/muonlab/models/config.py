"""Model configuration: one flat dataclass, size presets on a single depth dial, exact counts.

Everything here is plain Python (no torch): parameter and FLOP counts are formulas over the config,
so an experiment can plan a compute budget without building the model. Tests check each formula
against ``sum(p.numel())`` of the built model and against a hand count of the matrix shapes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

MLP_KINDS = ("swiglu", "gelu")


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
    """A Llama-style decoder-only transformer (RMSNorm, RoPE, SwiGLU or GELU MLP, no biases).

    ``n_kv_heads`` and ``ffn_hidden`` given as None are resolved to numbers in ``__post_init__``,
    so ``to_dict()`` writes the fully resolved config. Because of that, ``dataclasses.replace(cfg,
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

    def attn_params(self) -> int:
        """Weights of one attention layer: wq, wo are [d, d]; wk, wv are [kv_dim, d]."""
        return 2 * self.d_model * self.d_model + 2 * self.d_model * self.kv_dim

    def mlp_params(self, layer_idx: int = 0) -> int:
        """Weights of the MLP of block ``layer_idx``: 3*d*f for SwiGLU, 2*d*f for GELU."""
        assert self.ffn_hidden is not None
        n_mats = 3 if self.mlp == "swiglu" else 2
        return n_mats * self.d_model * self.ffn_hidden

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
        vocab_mats = 1 if self.tie_embeddings else 2
        return non_embedding + vocab_mats * self.vocab_size * self.d_model

    def num_non_embedding_params(self) -> int:
        """Parameters outside the vocabulary matrices: total minus the embedding and the (untied) LM head.

        Both vocabulary-sized matrices are left out, so the number is the same for tied and untied
        models (Kaplan et al.'s N; with a tied head it is exactly "total minus embedding").
        """
        return self.num_params(include_embedding=False)

    def num_matmul_params(self) -> int:
        """Weights that take part in a matmul per token: every block's linear layers plus the LM head.

        The embedding lookup is not a matmul and is excluded; the LM head (V*d) is included even when
        tied, because the head's matmul runs either way. Norm weights are excluded.
        """
        blocks = sum(self.attn_params() + self.mlp_params(i) for i in range(self.n_layers))
        return blocks + self.vocab_size * self.d_model

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) at context length ``seq_len`` (default max_seq_len).

            flops = 6 * N_matmul + 12 * n_layers * d_model * seq_len

        6*N_matmul: each matmul weight costs 2 FLOPs (multiply + add) per token forward and 4 backward
        (grad w.r.t. input and w.r.t. weight); N_matmul is ``num_matmul_params()`` (LM head included,
        embedding lookup excluded). The second term is attention itself: per layer and token, the
        scores q.k over seq_len keys (2*seq_len*d_model) and the weighted sum of values (the same),
        times 3 for forward + backward. The causal mask is NOT discounted: the count is for full
        seq_len x seq_len score matrices (as in Kaplan et al. / PaLM's 6N + 12LHT), not the ~half
        a causal kernel actually needs. Norms, RoPE, softmax and activations are ignored.
        """
        t = self.max_seq_len if seq_len is None else seq_len
        return 6 * self.num_matmul_params() + 12 * self.n_layers * self.d_model * t


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name} is {value!r}; it must be a positive integer.")


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
    pass ``tie_embeddings=False`` for a Llama/Moonlight-style untied head. Any ModelConfig field can
    be overridden by keyword (e.g. ``mlp="gelu"``, ``n_kv_heads=2``).

    Example: ``preset("gpt2-small", 50257, 1024).num_params() == 123_551_232``.
    """
    if isinstance(name_or_depth, str):
        if name_or_depth not in _PRESETS:
            raise ValueError(
                f"Unknown model preset {name_or_depth!r}; valid presets are {', '.join(_PRESETS)} "
                f"or an integer depth >= 1."
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


def list_presets() -> list[str]:
    """Preset names, smallest first (for CLI choices and help)."""
    return list(_PRESETS)


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
    return "\n".join(lines)


def _human(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}K"
