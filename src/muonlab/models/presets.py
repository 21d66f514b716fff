"""Model presets: named sizes on one depth dial, Moonlight-shaped MoE presets, and a run's overrides.

``preset(name_or_depth, vocab_size, max_seq_len, **overrides)`` builds a ``ModelConfig`` from a name
(``list_presets()``, ``list_moe_presets()``) or from a depth on the dial (d_model = 64 * depth, as
in nanochat); ``model_config_for`` applies the model fields of a training run (``TrainConfig``) to a
preset; ``describe_presets`` prints them with their parameter counts.
"""

from __future__ import annotations

import math
from typing import Any

from .config import ModelConfig

__all__ = ["ASPECT_RATIO", "describe_presets", "list_moe_presets", "list_presets", "model_config_for", "preset"]

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


def _dial(depth: int) -> tuple[int, int]:
    """(d_model, n_heads) for a depth on the dial.

    head_dim = 64 while 64*depth < 1536, else 128; d_model = 64*depth rounded up to a multiple of
    head_dim; n_heads = d_model // head_dim.
    """
    base = ASPECT_RATIO * depth
    head_dim = 64 if base < 1536 else 128
    d_model = math.ceil(base / head_dim) * head_dim
    return d_model, d_model // head_dim


def preset(name_or_depth: str | int, vocab_size: int, max_seq_len: int, **overrides: Any) -> ModelConfig:
    """A ModelConfig from a preset name (see ``list_presets()``) or a depth (the one dial).

    The dial (as in nanochat): n_layers = depth; d_model = 64 * depth; head_dim = 64 while
    64 * depth < 1536 and 128 from there on, with d_model rounded up to a multiple of head_dim;
    n_heads = d_model // head_dim; n_kv_heads = n_heads; SwiGLU with the default hidden width.
    Presets tie the LM head to the embedding (GPT-2 style; the names' sizes are counted that way);
    pass ``tie_embeddings=False`` for a Llama/Moonlight-style untied head. The MoE presets
    (``list_moe_presets()``: ``moe-tiny``, ``moe-demo``, ``moonlight``) are fixed shapes, not points
    on the dial; their MLA and expert widths derive from d_model, so overriding it keeps the ratios.
    Any ModelConfig field can be overridden by keyword (e.g. ``mlp="gelu"``, ``n_kv_heads=2``).

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


def model_config_for(preset_name: str | int, vocab_size: int, seq_len: int, *, d_model: int = 0, n_layers: int = 0,
                     n_heads: int = 0, mlp: str = "swiglu", tie_embeddings: bool = False, parametrization: str = "sp",
                     mup_base_width: int = 256, mup_base_head_dim: int = 0) -> ModelConfig:
    """The model of a training run: a preset with the run's model fields (those of ``TrainConfig``).

    ``preset_name`` is a preset name or a depth (an int, or its digits: "4" is depth 4).
    ``d_model``, ``n_layers`` and ``n_heads`` replace the preset's when non-zero (0 keeps it); a new
    ``d_model`` without ``n_heads`` keeps the presets' head_dim of 64 (n_heads = d_model // 64).
    The MLP hidden width is re-derived (``default_ffn_hidden``) when d_model or the MLP kind changes,
    so it fits the final shape. ``mlp`` and ``tie_embeddings`` always apply; their defaults are a
    run's (SwiGLU, untied head as in Llama and Moonlight), not ``preset()``'s tied head.
    ``parametrization``, ``mup_base_width`` and ``mup_base_head_dim`` (0: None) are ModelConfig's muP fields.
    """
    overrides: dict[str, Any] = {"mlp": mlp, "tie_embeddings": tie_embeddings, "parametrization": parametrization,
                                 "mup_base_width": mup_base_width, "mup_base_head_dim": mup_base_head_dim or None}
    for name, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads)):
        if value:
            overrides[name] = value
    if d_model and not n_heads:
        overrides["n_heads"] = max(1, d_model // 64)
    if d_model or mlp != "swiglu":
        overrides["ffn_hidden"] = None
    name = int(preset_name) if isinstance(preset_name, str) and preset_name.isdigit() else preset_name
    return preset(name, vocab_size=vocab_size, max_seq_len=seq_len, **overrides)


def list_presets() -> list[str]:
    """Dense preset names, smallest first (for CLI choices and help); see also ``list_moe_presets()``."""
    return list(_PRESETS)


def list_moe_presets() -> list[str]:
    """Names of the Moonlight-shaped MoE + MLA presets, smallest first."""
    return list(_MOE_PRESETS)


def describe_presets(vocab_size: int = 50257, max_seq_len: int = 1024, tie_embeddings: bool = False) -> str:
    """A text table of the presets with their shapes and parameter counts at ``vocab_size``, each model as
    ``muonlab train --model NAME`` builds it (:func:`model_config_for`: an untied head unless ``tie_embeddings``)."""
    head = "tied head" if tie_embeddings else "untied head as in `muonlab train`; --tie_embeddings for tied"
    lines = [f"{'preset':<11} {'layers':>6} {'d_model':>7} {'heads':>5} {'ffn':>5} {'params':>9} {'non-emb':>9}"]
    for name in _PRESETS:
        c = model_config_for(name, vocab_size, max_seq_len, tie_embeddings=tie_embeddings)
        lines.append(
            f"{name:<11} {c.n_layers:>6} {c.d_model:>7} {c.n_heads:>5} {c.ffn_hidden:>5} "
            f"{_human(c.num_params()):>9} {_human(c.num_non_embedding_params()):>9}"
        )
    lines.append(f"(vocab {vocab_size}, {head}; any integer depth also works: d_model = 64 * depth)")
    lines.append("")
    lines.append(f"{'MoE preset':<11} {'layers':>6} {'d_model':>7} {'heads':>5} {'experts':>9} {'f_e':>5} "
                 f"{'params':>9} {'active':>9} {'non-emb':>9} {'active':>9}")
    for name in _MOE_PRESETS:
        c = model_config_for(name, vocab_size, max_seq_len, tie_embeddings=tie_embeddings)
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
