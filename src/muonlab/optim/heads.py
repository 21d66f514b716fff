"""Attention heads of a model's projections, for per-head orthogonalization (``param_groups(model,
orthogonalize="per_head")``; the math is in :mod:`muonlab.optim.blocks`).

A projection's heads are read from its attention module (the parent of the ``nn.Linear`` /
``Conv1D``): the head counts from the module or its ``config`` — ``n_heads`` / ``num_heads`` /
``num_attention_heads`` / ``n_head``, and ``n_kv_heads`` / ``num_key_value_heads`` (default: as
many as query heads) — and the projection's kind from its name:

==================================================  ==================  ===========================
projection names                                    blocks              heads
==================================================  ==================  ===========================
``wq q_proj query q_b_proj wq_nope wq_rope``        rows                query heads
``kv_b_proj wk_up wv_up`` (MLA up-projections)      rows                query heads (GLM-5 "Split")
``wk wv k_proj v_proj key value``                   rows                key/value heads
``c_attn qkv_proj query_key_value Wqkv`` (fused)    rows                query + 2 · key/value heads
``wo o_proj c_proj out_proj dense``                 columns             query heads
==================================================  ==================  ===========================

This covers muonlab's dense and MLA models and the Hugging Face architectures whose attention
uses these names (GPT-2, Llama, Mistral, Qwen2/3, Gemma, Phi-3, Mixtral, Qwen2-MoE/Qwen3-MoE,
DeepSeek-V3, OLMo, GPT-NeoX …). A module not among them declares its heads as it declares a
layout: ``muon_layouts = {"weight": {"heads": 8}}`` (row blocks; or a list of sizes) or
``{"col_heads": 8}``. Projections shared by all heads (MLA's ``wkv_down``, ``wk_rope``,
``kv_a_proj_with_mqa``) stay whole.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["head_blocks"]

_QUERY = {"wq", "q_proj", "query", "q_b_proj", "wq_nope", "wq_rope", "kv_b_proj", "wk_up", "wv_up"}
_KEY_VALUE = {"wk", "wv", "k_proj", "v_proj", "key", "value"}
_FUSED = {"c_attn", "qkv_proj", "query_key_value", "Wqkv"}
_OUTPUT = {"wo", "o_proj", "c_proj", "out_proj", "dense"}


def _count(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for owner in (module, getattr(module, "config", None)):
        for name in names:
            value = getattr(owner, name, None) if owner is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def head_counts(module: nn.Module | None) -> tuple[int, int] | None:
    """``(query heads, key/value heads)`` an attention module states, or None."""
    if module is None:
        return None
    heads = _count(module, ("n_heads", "num_heads", "num_attention_heads", "n_head"))
    if heads is None:
        return None
    return heads, _count(module, ("n_kv_heads", "num_key_value_heads", "num_kv_heads")) or heads


def head_blocks(module: nn.Module, parent: nn.Module | None, module_name: str, param_name: str,
                declared: dict[str, Any] | None) -> tuple[Any, Any]:
    """``(row blocks, column blocks)`` of a Muon weight under per-head orthogonalization: an int
    count of equal blocks or a list of sizes each, ``(1, 1)`` where the weight has no heads."""
    if declared is not None and ("heads" in declared or "col_heads" in declared):
        return declared.get("heads", 1), declared.get("col_heads", 1)
    counts = head_counts(parent)
    if param_name != "weight" or counts is None:
        return 1, 1
    heads, kv_heads = counts
    kind = module_name.rsplit(".", 1)[-1]
    if kind in _QUERY:
        return heads, 1
    if kind in _KEY_VALUE:
        return kv_heads, 1
    if kind in _FUSED:
        return heads + 2 * kv_heads, 1
    if kind in _OUTPUT:
        return 1, heads
    return 1, 1
