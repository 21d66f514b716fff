"""Multi-head latent attention (MLA), the attention of DeepSeek-V2/V3 and Moonlight.

DeepSeek-V2 (arXiv 2405.04434) §2.1; Moonlight (arXiv 2502.16982 App. C) uses it with 16 heads,
no query compression, kv_lora_rank 512, qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128.
For a token with hidden state h (width d), H heads, and widths n (nope), r (rope), v, c (KV latent)::

    c_Q      = RMSNorm(W_DQ h)                 [q]        only when q_lora_rank q > 0; else c_Q = h
    q_i^C    = (W_QC c_Q)_i                    [n]        per head i      (wq_nope)
    q_i^R    = RoPE((W_QR c_Q)_i)              [r]        per head i      (wq_rope)
    c_KV     = RMSNorm(W_DKV h)                [c]        the KV latent   (wkv_down, kv_norm)
    k^R      = RoPE(W_KR h)                    [r]        one rope key shared by all heads (wk_rope)
    k_i^C    = (W_UK c_KV)_i                   [n]        (wk_up)
    v_i      = (W_UV c_KV)_i                   [v]        (wv_up)
    q_i = [q_i^C; q_i^R],  k_i = [k_i^C; k^R]
    o_i      = Σ_{s ≤ t} softmax_s(q_i·k_{i,s} / sqrt(n + r)) v_{i,s}
    out      = W_O [o_1; …; o_H]               [d]        (wo)

Only ``[c_KV; k^R]`` — ``kv_lora_rank + qk_rope_head_dim`` numbers per token and layer — has to
be cached for generation (``kv_cache_shape``); keys and values are re-expanded from it.

Every projection is its own ``nn.Linear`` (the split of Moonlight App. F, Figure 9: WQC, WQR, WC,
WKR, WKC, WV, WO), so the optimizer's routing (``muonlab.optim.routing``) sees whole matrices:
all seven (eight with query compression) are role ``hidden`` and go to Muon, each orthogonalized as
one matrix with its own shape; the latent RMSNorm gains (``kv_norm``, ``q_norm``) are role
``norm`` and go to AdamW. The latent norms use eps :data:`LATENT_NORM_EPS` = 1e-6 whatever the
model's ``norm_eps``: DeepSeek-V2/V3's released modeling code — Moonlight's included, whose config
sets ``rms_norm_eps`` 1e-5 for the block norms — and transformers' DeepSeek-V3 build them with
RMSNorm's default eps of 1e-6. The RoPE layout is "rotate half" (``layers.apply_rope``); DeepSeek's
checkpoints interleave pairs instead, which is a fixed permutation of W_QR and W_KR's rows.

QK-Clip (Kimi K2, arXiv 2507.20534 §2.1; ``muonlab.optim.QKClip``): head i's logit is
q_i^C·k_i^C + q_i^R·k^R, so the per-head rows are those of ``wq_nope`` (q^C; with query
compression it is the up-projection, after ``wq_down`` and ``q_norm``), ``wk_up`` (k^C, in the KV
up-projection) and ``wq_rope`` (q^R); k^R (``wk_rope``) is shared by every head and is left
untouched, so q^R takes the whole factor γ_i while q^C and k^C take sqrt(γ_i) each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention_logits import MaxLogitTracker
from .config import ModelConfig
from .layers import apply_rope
from .mup import attention_scale

__all__ = ["LATENT_NORM_EPS", "MLA", "causal_attention"]

LATENT_NORM_EPS = 1e-6
"""eps of the latent RMSNorms (``kv_norm``, ``q_norm``), fixed as in DeepSeek's and Moonlight's code (see above)."""


class MLA(MaxLogitTracker, nn.Module):
    """Causal multi-head latent attention; ``forward(x, cos, sin)`` with RoPE tables of width qk_rope_head_dim / 2.

    With ``track_max_logits`` set, training forwards record each head's max logit (``max_logits``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.attention != "mla":
            raise ValueError(f"MLA needs a config with attention='mla', got attention={config.attention!r}")
        d, H = config.d_model, config.n_heads
        n, r, v, c, q = (config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim,
                         config.kv_lora_rank, config.q_lora_rank)
        assert n is not None and r is not None and v is not None and c is not None
        self.n_heads, self.nope_dim, self.rope_dim, self.v_dim, self.kv_lora_rank = H, n, r, v, c
        self.scale = attention_scale(config, n + r)  # None: 1/sqrt(n + r); muP may set it (models/mup.py)
        self.compress_q = q > 0
        if q:
            self.wq_down = nn.Linear(d, q, bias=False)
            self.q_norm = nn.RMSNorm(q, eps=LATENT_NORM_EPS)
        q_in = q or d
        self.wq_nope = nn.Linear(q_in, H * n, bias=False)
        self.wq_rope = nn.Linear(q_in, H * r, bias=False)
        self.wkv_down = nn.Linear(d, c, bias=False)
        self.kv_norm = nn.RMSNorm(c, eps=LATENT_NORM_EPS)
        self.wk_rope = nn.Linear(d, r, bias=False)
        self.wk_up = nn.Linear(c, H * n, bias=False)
        self.wv_up = nn.Linear(c, H * v, bias=False)
        self.wo = nn.Linear(H * v, d, bias=False)

    def kv_cache_shape(self, batch: int, seq: int) -> tuple[int, int, int]:
        """Shape of this layer's generation cache: [batch, seq, kv_lora_rank + qk_rope_head_dim]."""
        return (batch, seq, self.kv_lora_rank + self.rope_dim)

    def kv_latent(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """What a generation cache holds: [c_KV; k^R] for x [B, T, d] -> [B, T, kv_lora_rank + qk_rope_head_dim]."""
        c_kv = self.kv_norm(self.wkv_down(x).float())  # fp32 into the norm, as the residual stream is
        k_rope = apply_rope(self.wk_rope(x).unsqueeze(1), cos, sin).squeeze(1)  # one shared rope "head"
        return torch.cat([c_kv, k_rope.to(c_kv.dtype)], dim=-1)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x: [B, T, d_model]; cos, sin: [T, qk_rope_head_dim/2] -> [B, T, d_model]."""
        B, T, _ = x.shape
        n, r = self.nope_dim, self.rope_dim
        # Head counts come from the projections: under tensor parallelism (muonlab.parallel.mesh)
        # each rank computes n_heads / tp of them.
        c_q = self.q_norm(self.wq_down(x).float()) if self.compress_q else x
        q_nope = self.wq_nope(c_q).view(B, T, -1, n).transpose(1, 2)  # [B, H, T, n]
        q_rope = apply_rope(self.wq_rope(c_q).view(B, T, -1, r).transpose(1, 2), cos, sin)
        # Keys and values are expanded from the cached latent, exactly as generation would do.
        c_kv, k_rope = self.kv_latent(x, cos, sin).split([self.kv_lora_rank, r], dim=-1)
        k_nope = self.wk_up(c_kv).view(B, T, -1, n).transpose(1, 2)
        v = self.wv_up(c_kv).view(B, T, -1, self.v_dim).transpose(1, 2)  # [B, H, T, v]
        H = q_nope.shape[1]
        q = torch.cat([q_nope, q_rope.to(q_nope.dtype)], dim=-1)
        k = torch.cat([k_nope, k_rope.to(k_nope.dtype)[:, None].expand(B, H, T, r)], dim=-1)
        self.record_max_logits(q, k, (n + r) ** -0.5 if self.scale is None else self.scale)
        y = causal_attention(q, k, v.to(q.dtype), self.scale)  # [B, H, T, v]
        return self.wo(y.transpose(1, 2).reshape(B, T, H * self.v_dim))

    def qk_clip_terms(self) -> list[tuple[Tensor, Tensor | None]]:
        """QK-Clip's row blocks (module docstring): (q^C rows of ``wq_nope``, k^C rows of ``wk_up``), one
        block per head each; (q^R rows of ``wq_rope``, None): the shared rotary key is not rescaled."""
        return [(self.wq_nope.weight, self.wk_up.weight), (self.wq_rope.weight, None)]


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale + causal mask) v for q, k [B, H, T, d_qk] and v [B, H, T, d_v] (None: 1/sqrt(d_qk)).

    SDPA's fused kernels (flash attention on CPU) want one head width for q, k and v; with
    d_qk != d_v it falls back to a math path about 2x slower on CPU. Zero channels appended to the
    narrower side change neither q·k nor the values, so both are padded to the wider width, the
    scale is pinned (by default DeepSeek's 1/sqrt(d_qk)), and the padding is cut from the output.
    """
    d_qk, d_v = q.shape[-1], v.shape[-1]
    width = max(d_qk, d_v)
    q, k, v = (F.pad(t, (0, width - t.shape[-1])) if t.shape[-1] < width else t for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=d_qk**-0.5 if scale is None else scale)
    return y[..., :d_v] if d_v < width else y
