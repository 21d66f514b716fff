"""muonlab's ``Transformer`` <-> Hugging Face Llama / DeepSeek-V3: configs and weights, both ways.

Pure mapping (torch only; no transformers import): a dense model is the Llama architecture, an
MoE + MLA model (or a dense MLA model) is DeepSeek-V3, Moonlight's own format. What matches, checked
against transformers 5's modeling code and the logits test (``tests/test_hf_export.py``):

- RMSNorm ``x · rsqrt(mean(x²) + eps) · g`` with ``rms_norm_eps`` = ``norm_eps``, except the MLA latent
  norms, whose eps is 1e-6 on both sides (``muonlab.models.mla.LATENT_NORM_EPS``); tied head = tied embeddings;
- RoPE: muonlab rotates the pairs ``(x_i, x_{i+r/2})`` ("rotate half", as HF Llama) with angles
  ``t · θ^(−2i/r)``. DeepSeek checkpoints interleave the pairs ``(x_{2i}, x_{2i+1})``
  (``rope_interleave=True``), so exported rope rows of ``q_proj`` and ``kv_a_proj_with_mqa`` are
  permuted (row ``2i`` = muonlab row ``i``, row ``2i+1`` = row ``i + r/2``) and permuted back on import;
- MLA: ``q_proj`` (or ``q_b_proj``) holds per head ``[nope | rope]`` rows; ``kv_a_proj_with_mqa`` =
  ``[W_DKV; W_KR]``; ``kv_b_proj`` holds per head ``[k nope | v]`` rows; scale ``1/sqrt(n + r)``;
- MoE: sigmoid scores, top-k of scores + ``e_score_correction_bias`` (muonlab's ``balance_bias``),
  gate weights = unbiased scores renormalised (``norm_topk_prob``) times ``routed_scaling_factor``,
  one expert group (``n_group = topk_group = 1``); ``gate_up_proj`` = ``[w_gate | w_up]`` per expert.

What has no equivalent is refused with one sentence naming the option (:class:`HFFormatError`).
Training-only MoE settings (``moe_bias_update_rate``, ``moe_aux_loss_coef``) do not change the
logits and are not exported.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models import ModelConfig

__all__ = ["HFFormatError", "check_exportable", "from_hf_state", "hf_config", "model_config_from_hf", "to_hf_state"]

class HFFormatError(ValueError):
    """A model or folder that has no exact counterpart on the other side; the message names the option."""


# ---- configs -------------------------------------------------------------------------------------


def check_exportable(cfg: ModelConfig) -> None:
    """Raise :class:`HFFormatError` naming the first option of ``cfg`` that Llama / DeepSeek-V3 cannot express."""
    if cfg.mlp != "swiglu":
        raise HFFormatError(f"ModelConfig.mlp is {cfg.mlp!r}, but Llama and DeepSeek-V3 in transformers have gated "
                            "SwiGLU MLPs only, so only mlp='swiglu' models can be exported")
    if cfg.is_moe and cfg.attention != "mla":
        raise HFFormatError(f"ModelConfig.attention is {cfg.attention!r} with n_routed_experts={cfg.n_routed_experts}, "
                            "but MoE models export as DeepSeek-V3, which has multi-head latent attention only "
                            "(attention='mla')")
    if cfg.parametrization == "mup" and (cfg.d_model != cfg.mup_base_width or cfg.mup_base_head_dim is not None):
        raise HFFormatError(f"ModelConfig.parametrization is 'mup' at d_model={cfg.d_model} (mup_base_width="
                            f"{cfg.mup_base_width}), but Llama and DeepSeek-V3 in transformers have no muP "
                            "multipliers, so only SP models and muP models at their base width can be exported")
    if cfg.is_moe and cfg.n_routed_experts < 2:
        raise HFFormatError(f"ModelConfig.n_routed_experts is {cfg.n_routed_experts}, but transformers' DeepSeek-V3 "
                            "router takes the top 2 scores of its expert group, so it needs at least 2 experts")


def hf_config(cfg: ModelConfig, eos_token_id: int) -> tuple[str, dict[str, Any]]:
    """``(model_type, config kwargs)`` of the transformers config equivalent to ``cfg`` (checked exportable)."""
    check_exportable(cfg)
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, hidden_act="silu",
                  max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                  tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, attention_bias=False,
                  rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                  bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=eos_token_id)  # pad: as the tokenizer's
    if cfg.attention == "mha":
        return "llama", dict(common, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, mlp_bias=False)
    moe = (dict(n_routed_experts=cfg.n_routed_experts, n_shared_experts=cfg.n_shared_experts,
                num_experts_per_tok=cfg.top_k, moe_intermediate_size=cfg.expert_ffn_hidden,
                first_k_dense_replace=cfg.first_k_dense, routed_scaling_factor=cfg.routed_scaling_factor)
           if cfg.is_moe else dict(first_k_dense_replace=cfg.n_layers))  # every layer dense
    return "deepseek_v3", dict(common, **moe, num_key_value_heads=cfg.n_heads, kv_lora_rank=cfg.kv_lora_rank,
                               q_lora_rank=cfg.q_lora_rank or None, qk_nope_head_dim=cfg.qk_nope_head_dim,
                               qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, n_group=1,
                               topk_group=1, norm_topk_prob=True, rope_interleave=True, num_mtp_layers=0)


def _refuse(model_type: str, option: str, value: Any, valid: str) -> HFFormatError:
    return HFFormatError(f"the {model_type} config has {option}={value!r}, which muonlab's model has no equivalent "
                         f"of; muonlab can start only from {valid}")


def _check_importable(hf: Any) -> None:
    model_type = hf.model_type
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    checks = [("rope_parameters.rope_type", rope.get("rope_type", "default"), "default", "plain RoPE"),
              ("hidden_act", hf.hidden_act, "silu", "SiLU-gated MLPs"),
              ("attention_bias", bool(getattr(hf, "attention_bias", False)), False, "projections without biases"),
              ("mlp_bias", bool(getattr(hf, "mlp_bias", False)), False, "projections without biases")]
    if model_type == "llama":
        checks.append(("head_dim", getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
                       hf.hidden_size // hf.num_attention_heads, "head_dim = hidden_size / num_attention_heads"))
    else:
        n_group, topk_group = getattr(hf, "n_group", 1) or 1, getattr(hf, "topk_group", 1) or 1
        checks += [("topk_group", topk_group, n_group, "routing over every expert group (topk_group = n_group)"),
                   ("norm_topk_prob", bool(hf.norm_topk_prob), True, "renormalised top-k gate weights"),
                   ("num_key_value_heads", hf.num_key_value_heads, hf.num_attention_heads, "one KV head per head")]
    for option, value, valid, what in checks:
        if value != valid:
            raise _refuse(model_type, option, value, what)


def model_config_from_hf(hf: Any) -> ModelConfig:
    """The muonlab ``ModelConfig`` of a transformers Llama or DeepSeek-V3 config (``hf``: the config object)."""
    if hf.model_type not in ("llama", "deepseek_v3"):
        raise HFFormatError(f"the folder holds a {hf.model_type!r} model, which has no muonlab equivalent; muonlab "
                            "can start from Llama (dense) and DeepSeek-V3 (MoE + MLA) folders")
    _check_importable(hf)
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    fields = dict(vocab_size=hf.vocab_size, d_model=hf.hidden_size, n_layers=hf.num_hidden_layers,
                  n_heads=hf.num_attention_heads, ffn_hidden=hf.intermediate_size, mlp="swiglu",
                  max_seq_len=hf.max_position_embeddings, rope_theta=rope.get("rope_theta", 10000.0),
                  norm_eps=hf.rms_norm_eps, tie_embeddings=bool(hf.tie_word_embeddings),
                  init_std=hf.initializer_range)
    if hf.model_type == "llama":
        return ModelConfig(**fields, n_kv_heads=hf.num_key_value_heads or hf.num_attention_heads)
    fields.update(attention="mla", q_lora_rank=hf.q_lora_rank or 0, kv_lora_rank=hf.kv_lora_rank,
                  qk_nope_head_dim=hf.qk_nope_head_dim, qk_rope_head_dim=hf.qk_rope_head_dim,
                  v_head_dim=hf.v_head_dim)
    if hf.first_k_dense_replace >= hf.num_hidden_layers:
        return ModelConfig(**fields)
    return ModelConfig(**fields, n_routed_experts=hf.n_routed_experts, n_shared_experts=hf.n_shared_experts,
                       top_k=hf.num_experts_per_tok, expert_ffn_hidden=hf.moe_intermediate_size,
                       first_k_dense=hf.first_k_dense_replace, routed_scaling_factor=hf.routed_scaling_factor)


# ---- weights -------------------------------------------------------------------------------------


def _interleave(w: torch.Tensor, r: int) -> torch.Tensor:
    """Rope rows ``[..., r, in]`` from muonlab's half layout to DeepSeek's interleaved one (row 2i = row i,
    row 2i+1 = row i + r/2)."""
    return w.unflatten(-2, (2, r // 2)).transpose(-3, -2).flatten(-3, -2)


def _deinterleave(w: torch.Tensor, r: int) -> torch.Tensor:
    """The inverse of :func:`_interleave`."""
    return w.unflatten(-2, (r // 2, 2)).transpose(-3, -2).flatten(-3, -2)


_DENSE = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight",
          "attn.wq.weight": "self_attn.q_proj.weight", "attn.wk.weight": "self_attn.k_proj.weight",
          "attn.wv.weight": "self_attn.v_proj.weight", "attn.wo.weight": "self_attn.o_proj.weight",
          "mlp.w_gate.weight": "mlp.gate_proj.weight",
          "mlp.w_up.weight": "mlp.up_proj.weight", "mlp.w_down.weight": "mlp.down_proj.weight",
          "mlp.shared.w_gate.weight": "mlp.shared_experts.gate_proj.weight",
          "mlp.shared.w_up.weight": "mlp.shared_experts.up_proj.weight",
          "mlp.shared.w_down.weight": "mlp.shared_experts.down_proj.weight",
          "mlp.router": "mlp.gate.weight", "mlp.balance_bias": "mlp.gate.e_score_correction_bias",
          "mlp.w_down": "mlp.experts.down_proj", "attn.q_norm.weight": "self_attn.q_a_layernorm.weight",
          "attn.wq_down.weight": "self_attn.q_a_proj.weight", "attn.kv_norm.weight": "self_attn.kv_a_layernorm.weight"}
"""muonlab name within a block -> HF name within a decoder layer, for tensors that map one to one."""


def _mla_to_hf(block: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    H, n, r, v = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    q_nope, q_rope = block.pop("attn.wq_nope.weight"), block.pop("attn.wq_rope.weight")
    q = torch.cat([q_nope.unflatten(0, (H, n)), _interleave(q_rope.unflatten(0, (H, r)), r)], 1).flatten(0, 1)
    kv_a = torch.cat([block.pop("attn.wkv_down.weight"), _interleave(block.pop("attn.wk_rope.weight"), r)])
    k_up, v_up = block.pop("attn.wk_up.weight"), block.pop("attn.wv_up.weight")
    kv_b = torch.cat([k_up.unflatten(0, (H, n)), v_up.unflatten(0, (H, v))], 1).flatten(0, 1)
    return {"self_attn.q_b_proj.weight" if cfg.q_lora_rank else "self_attn.q_proj.weight": q,
            "self_attn.kv_a_proj_with_mqa.weight": kv_a, "self_attn.kv_b_proj.weight": kv_b}


def _mla_from_hf(layer: dict[str, torch.Tensor], cfg: ModelConfig, interleaved: bool) -> dict[str, torch.Tensor]:
    H, n, r, c = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
    half = (lambda w: _deinterleave(w, r)) if interleaved else (lambda w: w)
    q = layer.pop("self_attn.q_b_proj.weight" if cfg.q_lora_rank else "self_attn.q_proj.weight").unflatten(0, (H, -1))
    kv_a = layer.pop("self_attn.kv_a_proj_with_mqa.weight")
    kv_b = layer.pop("self_attn.kv_b_proj.weight").unflatten(0, (H, -1))
    return {"attn.wq_nope.weight": q[:, :n].flatten(0, 1), "attn.wq_rope.weight": half(q[:, n:]).flatten(0, 1),
            "attn.wkv_down.weight": kv_a[:c], "attn.wk_rope.weight": half(kv_a[c:]),
            "attn.wk_up.weight": kv_b[:, :n].flatten(0, 1), "attn.wv_up.weight": kv_b[:, n:].flatten(0, 1)}


def _blocks(state: dict[str, torch.Tensor], prefix: str, n_layers: int) -> list[dict[str, torch.Tensor]]:
    """The tensors of each layer, keyed by their name inside the layer."""
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
    for name, tensor in state.items():
        if name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            layers[int(index)][rest] = tensor
    return layers


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF names and layouts for a muonlab ``Transformer`` state dict (``lm_head.weight`` included, tied or not)."""
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"],
           "lm_head.weight": state["embed.weight"] if cfg.tie_embeddings else state["lm_head.weight"]}
    for i, block in enumerate(_blocks(state, "layers.", cfg.n_layers)):
        layer = _mla_to_hf(block, cfg) if cfg.attention == "mla" else {}
        if "mlp.w_gate" in block:
            layer["mlp.experts.gate_up_proj"] = torch.cat([block.pop("mlp.w_gate"), block.pop("mlp.w_up")], 1)
            if not cfg.n_shared_experts:  # transformers builds the shared expert anyway, with width 0
                empty = block["mlp.w_down"].new_empty(0, cfg.d_model)
                layer.update({f"mlp.shared_experts.{p}_proj.weight": empty for p in ("gate", "up")})
                layer["mlp.shared_experts.down_proj.weight"] = empty.T
        for name, tensor in block.items():
            layer[_DENSE[name]] = tensor
        out.update({f"model.layers.{i}.{name}": tensor for name, tensor in layer.items()})
    return out


def from_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig, rope_interleave: bool) -> dict[str, torch.Tensor]:
    """A muonlab ``Transformer`` state dict from HF tensors (``lm_head.weight`` = the embedding when tied)."""
    hf_to_ml = {hf: ml for ml, hf in _DENSE.items()}
    embed = state["model.embed_tokens.weight"]
    out = {"embed.weight": embed, "norm.weight": state["model.norm.weight"],
           "lm_head.weight": embed if cfg.tie_embeddings else state["lm_head.weight"]}
    for i, layer in enumerate(_blocks(state, "model.layers.", cfg.n_layers)):
        block = _mla_from_hf(layer, cfg, rope_interleave) if cfg.attention == "mla" else {}
        if "mlp.experts.gate_up_proj" in layer:
            block["mlp.w_gate"], block["mlp.w_up"] = layer.pop("mlp.experts.gate_up_proj").chunk(2, dim=1)
            if not cfg.n_shared_experts:  # the width-0 shared expert transformers builds anyway
                layer = {name: t for name, t in layer.items() if not name.startswith("mlp.shared_experts.")}
        unknown = sorted(set(layer) - set(hf_to_ml))
        if unknown:
            raise HFFormatError(f"layer {i} holds tensors muonlab's model has no place for: {unknown[:4]}")
        block.update({hf_to_ml[name]: tensor for name, tensor in layer.items()})
        out.update({f"layers.{i}.{name}": tensor.contiguous() for name, tensor in block.items()})
    return out
