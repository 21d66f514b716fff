"""Building blocks shared by the attention and feed-forward modules: RoPE and the dense MLPs.

RoPE (Su et al. 2021) in the "rotate half" layout, used by both standard attention
(``transformer.Attention``) and multi-head latent attention (``mla.MLA``, on its decoupled rope
channels); SwiGLU (Shazeer 2020) and a plain GELU MLP, used as dense blocks and, for SwiGLU, as
the MoE layer's shared experts (``moe.MoE``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GeluMLP", "SwiGLU", "apply_rope", "rope_cos_sin"]


# ---- RoPE ---------------------------------------------------------------------------------------


def rope_cos_sin(
    head_dim: int, max_seq_len: int, theta: float, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """RoPE tables in fp32: cos, sin of shape [max_seq_len, head_dim // 2].

    Entry [t, i] is the angle t * theta ** (-2i / head_dim) of channel pair i at position t.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    t = torch.arange(max_seq_len, device=device, dtype=torch.float64)
    angles = torch.outer(t, inv_freq)  # [T, head_dim/2], in float64 so large positions stay exact
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs of ``x`` [B, n_heads, T, head_dim] by the angles in ``cos``, ``sin`` [T, head_dim/2].

    Pairs are (x[..., i], x[..., i + head_dim/2]) — the "rotate half" layout of GPT-NeoX and
    Hugging Face Llama. Seen as the complex number z_i = x[..., i] + 1j * x[..., i + head_dim/2],
    the result is z_i * exp(1j * angle[t, i]). Computed in fp32, returned in ``x.dtype``.
    """
    half = x.shape[-1] // 2
    x1, x2 = x.float().split(half, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


# ---- dense MLPs ------------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    """w_down(silu(w_gate x) * w_up x); w_gate, w_up: [f, d], w_down: [d, f]."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class GeluMLP(nn.Module):
    """w_out(gelu(w_in x)); w_in: [f, d], w_out: [d, f] (the GPT-2 MLP without biases)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(d_model, hidden, bias=False)
        self.w_out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(F.gelu(self.w_in(x)))
