"""Models: a Llama-style decoder (RMSNorm, RoPE, SwiGLU/GELU, GQA) and its config, presets and counts.

No torch.distributed here: parallelism is applied to these models from ``muonlab.parallel``.
"""

from .config import ModelConfig, default_ffn_hidden, describe_presets, list_presets, preset
from .transformer import (
    IGNORE_INDEX,
    OUTPUT_PROJECTIONS,
    Attention,
    Block,
    GeluMLP,
    SwiGLU,
    Transformer,
    apply_rope,
    build_mlp,
    rope_cos_sin,
)

__all__ = [
    "IGNORE_INDEX",
    "OUTPUT_PROJECTIONS",
    "Attention",
    "Block",
    "GeluMLP",
    "ModelConfig",
    "SwiGLU",
    "Transformer",
    "apply_rope",
    "build_mlp",
    "default_ffn_hidden",
    "describe_presets",
    "list_presets",
    "preset",
    "rope_cos_sin",
]
