"""Models: a Llama-style decoder (RMSNorm, RoPE, SwiGLU/GELU, GQA) and its config, presets and counts,
with Moonlight's DeepSeek-V3-style options: multi-head latent attention and a mixture-of-experts layer.

No torch.distributed here: parallelism is applied to these models from ``muonlab.parallel``.
"""

from .attention_logits import MaxLogitTracker, causal_max_logits
from .config import ModelConfig, default_ffn_hidden
from .layers import GeluMLP, SwiGLU, apply_rope, rope_cos_sin
from .mla import MLA
from .moe import MoE, routed_scaling_factor
from .mup import PARAMETRIZATIONS
from .output_rms import OutputRMSTracker
from .presets import describe_presets, list_moe_presets, list_presets, model_config_for, preset
from .transformer import IGNORE_INDEX, OUTPUT_PROJECTIONS, Attention, Block, Transformer, build_attention, build_mlp

__all__ = [
    "IGNORE_INDEX",
    "OUTPUT_PROJECTIONS",
    "PARAMETRIZATIONS",
    "Attention",
    "Block",
    "GeluMLP",
    "MLA",
    "MaxLogitTracker",
    "ModelConfig",
    "MoE",
    "OutputRMSTracker",
    "SwiGLU",
    "Transformer",
    "apply_rope",
    "build_attention",
    "build_mlp",
    "causal_max_logits",
    "default_ffn_hidden",
    "describe_presets",
    "list_moe_presets",
    "list_presets",
    "model_config_for",
    "preset",
    "rope_cos_sin",
    "routed_scaling_factor",
]
