"""The RMS of a block's output (the residual stream after the block), recorded in the forward pass on request.

Moonlight (arXiv 2502.16982 §2.2, Figure 2 and App. D) watches the RMS of every layer's output over
training: without weight decay it keeps growing (past bf16's high-precision range at scale); with
weight decay, on the RMSNorm gains too, it stays bounded. For block i and a batch of activations
x_i [B, T, d]::

    output_rms_i = sqrt( Σ x_i² / (B·T·d) )

over every element of every training forward recorded since the reader last reset it (e.g. the
micro-batches of one optimizer step; several data-parallel ranks add their sums up).

:class:`OutputRMSTracker` is a mixin, like ``attention_logits.MaxLogitTracker``, rather than a
forward hook: hooks registered after ``torch.compile`` are not seen by the compiled model (dynamo
skips guards on module hooks), while a flag the forward reads is guarded, so a compiled model
records too. Off telemetry steps the flag is False and the forward keeps nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["OutputRMSTracker"]


class OutputRMSTracker:
    """Mixin for a block ``nn.Module``: the sum of squares and element count of its training outputs.

    ``record_output_rms(x)`` (call it in ``forward`` on the block's output) adds ``Σ x²`` (fp32,
    autocast off, no gradient) to ``output_sumsq`` and ``x.numel()`` to ``output_count`` when
    ``track_output_rms`` is True and the module is training; otherwise it costs nothing and keeps
    nothing. Evaluation forwards are never recorded. The reader resets both to None and 0.
    """

    track_output_rms: bool = False
    output_sumsq: Tensor | None = None
    output_count: int = 0

    def record_output_rms(self, x: Tensor) -> None:
        if not (self.track_output_rms and self.training):
            return
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            sumsq = x.detach().float().pow(2).sum()
        self.output_sumsq = sumsq if self.output_sumsq is None else self.output_sumsq + sumsq
        self.output_count = self.output_count + x.numel()
