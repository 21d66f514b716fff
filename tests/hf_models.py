"""Tiny Hugging Face models for the integration tests, built from configs (nothing is downloaded)."""

from __future__ import annotations

import torch

VOCAB = 96


def tiny_configs() -> dict:
    """name -> a transformers config of a 2-layer model of width 32 (4 heads, 4 experts where MoE), no dropout."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    moe = dict(num_experts_per_tok=2, moe_intermediate_size=16)
    return {
        "gpt2": tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                              eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),  # deterministic
        "llama": tf.LlamaConfig(**common, num_key_value_heads=2),
        "qwen2": tf.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True),
        "mixtral": tf.MixtralConfig(**common, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
        "qwen2_moe": tf.Qwen2MoeConfig(**common, **moe, num_key_value_heads=2, num_experts=4,
                                       shared_expert_intermediate_size=32),
        "deepseek_v3": tf.DeepseekV3Config(**common, **moe, num_key_value_heads=4, n_routed_experts=4,
                                           n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16,
                                           q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                                           n_group=1, topk_group=1),
    }


def build(name: str, seed: int = 0, **config_changes):
    """The causal LM of ``tiny_configs()[name]`` (with ``config_changes``) in fp32, initialised from ``seed``."""
    import transformers as tf

    config = tiny_configs()[name]
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
