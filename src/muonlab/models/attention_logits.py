"""The per-head max pre-softmax attention logit, recorded in the forward pass on request (for QK-Clip).

Kimi K2 (arXiv 2507.20534 §2.1) tracks, for every attention head h, the largest logit its softmax
sees over the batch::

    S_max^h = max_{b, j ≤ i} scale · q_{b,i}^h · k_{b,j}^{κ(h)}        (causal: key j at or before query i)

with ``scale`` the softmax scale (1/sqrt(d_qk)) and κ(h) the key head that query head h reads
(h // (n_heads / n_kv_heads) with grouped-query attention). ``muonlab.optim.QKClip`` rescales
the query and key weights of heads whose S_max exceeds τ; Moonlight (arXiv 2502.16982 App. D)
notes that these logits grow under Muon.

:func:`causal_max_logits` computes S_max from the q and k the attention already has (after RoPE),
under ``no_grad`` and in fp32, forming the scores of a few query rows at a time (each chunk needs
only the keys up to its last row), so no T×T matrix is held and the cost is a fraction of one
attention forward. :class:`MaxLogitTracker` is the recording half of QK-Clip's module protocol:
attention modules call ``record_max_logits(q, k, scale)`` in ``forward``; it does nothing unless
``track_max_logits`` is set (QK-Clip sets it) and the module is in training mode.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SCORE_BUDGET", "MaxLogitTracker", "causal_max_logits"]

SCORE_BUDGET = 1 << 20
"""fp32 scores formed at once (4 MiB): query rows per chunk = SCORE_BUDGET // (batch · heads · T)."""


@torch.no_grad()
def causal_max_logits(q: Tensor, k: Tensor, scale: float, score_budget: int = SCORE_BUDGET) -> Tensor:
    """S_max^h for q [B, H, T, d] and k [B, H_k, T, d] (H_k divides H; query head h reads key head
    h // (H / H_k)): the max over the batch and all j ≤ i of ``scale · q_i·k_j``, fp32 [H].

    Computed in fp32 with autocast off, ``score_budget`` scores at a time (query chunks).
    """
    B, H, T, d = q.shape
    Hk = k.shape[1]
    if k.shape != (B, Hk, T, d) or H % Hk:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [B, H, T, d] and [B, H_k, T, d] "
                         "with H_k dividing H")
    rep = H // Hk
    chunk = max(1, min(T, score_budget // max(1, B * H * T)))
    with torch.autocast(q.device.type, enabled=False):
        queries = q.float().reshape(B, Hk, rep, T, d)
        keys_t = k.float().transpose(-1, -2)  # [B, H_k, d, T]
        positions = torch.arange(T, device=q.device)
        best = torch.full((Hk, rep), float("-inf"), device=q.device)
        for start in range(0, T, chunk):
            stop = min(T, start + chunk)
            rows = queries[:, :, :, start:stop].reshape(B, Hk, rep * (stop - start), d)
            scores = (rows @ keys_t[..., :stop]).view(B, Hk, rep, stop - start, stop)
            future = positions[None, :stop] > positions[start:stop, None]  # key j after query i
            best = torch.maximum(best, scores.masked_fill_(future, float("-inf")).amax(dim=(0, 3, 4)))
    return best.flatten() * scale


class MaxLogitTracker:
    """Mixin for an attention ``nn.Module``: the per-head max logit of its training forwards.

    ``record_max_logits(q, k, scale)`` (call it in ``forward`` with the q, k the softmax uses)
    folds :func:`causal_max_logits` into ``max_logits`` (fp32 [n_heads], the max over every
    recorded forward since the reader reset it to None, e.g. over gradient-accumulation
    micro-batches) when ``track_max_logits`` is True and the module is training; otherwise it
    costs nothing. Evaluation forwards are never recorded.
    """

    track_max_logits: bool = False
    max_logits: Tensor | None = None

    def record_max_logits(self, q: Tensor, k: Tensor, scale: float) -> None:
        if not (self.track_max_logits and self.training):
            return
        current = causal_max_logits(q, k, scale)
        self.max_logits = current if self.max_logits is None else torch.maximum(self.max_logits, current)
