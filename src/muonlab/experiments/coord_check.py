"""The muP coordinate check (Tensor Programs V, arXiv 2203.03466 §D.1; the ``mup`` package's check).

Train the same tiny model at several widths for a few optimizer steps (Muon on the hidden matrices,
AdamW elsewhere, one fixed learning rate, no schedule) and record, after every step, the RMS of
each layer's activations on a fixed probe batch:

    ``embedding``   the input of block 0 (the embedding output, times muP's multiplier)
    ``attn/{i}``    block i's attention output (what it adds to the residual stream)
    ``mlp/{i}``     block i's MLP (or MoE) output
    ``logits``      the LM head's output

Under a parametrization that transfers across width these curves are flat in the width; under
the standard parametrization they drift (grow) with it, since larger fan-ins sum more correlated
update terms. :func:`loglog_slope` condenses a curve into the slope of log RMS against log width.
The data is a synthetic Zipf-distributed token stream, so the check needs no corpus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..models import ModelConfig, Transformer, mup
from ..optim import Muon, param_groups

__all__ = ["activation_rms", "coord_check_config", "coordinate_check", "loglog_slope", "zipf_batch"]


def coord_check_config(width: int, parametrization: str, *, base_width: int = 64, n_layers: int = 2,
                       head_dim: int = 32, vocab_size: int = 256, seq_len: int = 32, **fields) -> ModelConfig:
    """A small model of ``width``: heads of ``head_dim`` channels (their count grows with the width), untied
    head, SwiGLU of the default hidden width, muP relative to ``base_width``; ``fields`` are further
    ModelConfig fields (e.g. ``attention="mla"``, ``n_routed_experts=4, top_k=2`` for the MoE model)."""
    return ModelConfig(vocab_size=vocab_size, d_model=width, n_layers=n_layers, n_heads=max(1, width // head_dim),
                       max_seq_len=seq_len, parametrization=parametrization, mup_base_width=base_width, **fields)


def zipf_batch(generator: torch.Generator, batch: int, seq_len: int, vocab_size: int) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of ``batch`` sequences of ``seq_len`` i.i.d. tokens with P(token r) ∝ 1/(r + 1)."""
    probs = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    tokens = torch.multinomial(probs.expand(batch, -1), seq_len + 1, replacement=True, generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


@torch.no_grad()
def activation_rms(model: Transformer, input_ids: Tensor) -> dict[str, float]:
    """RMS of the embedding output, every block's attention and MLP output, and the logits (module docstring)."""
    rms: dict[str, float] = {}

    def record(name: str):
        def hook(module, args, output=None):
            value = args[0] if output is None else output
            rms[name] = float(value.float().square().mean().sqrt())

        return hook

    handles = [model.layers[0].register_forward_pre_hook(record("embedding"))]
    for i, block in enumerate(model.layers):
        handles += [block.attn.register_forward_hook(record(f"attn/{i}")),
                    block.mlp.register_forward_hook(record(f"mlp/{i}"))]
    try:
        was_training = model.training
        model.eval()
        logits = model(input_ids)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    rms["logits"] = float(logits.float().square().mean().sqrt())
    return rms


def coordinate_check(parametrization: str, widths: Sequence[int], *, steps: int = 5, lr: float = 0.02,
                     batch: int = 8, seed: int = 0, **model_kwargs) -> dict[int, list[dict[str, float]]]:
    """``{width: [activation_rms after step 0 (init), 1, …, steps]}`` for ``parametrization`` ("sp" or "mup").

    Each width starts from ``seed`` and sees the same batches (fresh Zipf batches every step) and the
    same probe batch. Muon (Moonlight scale, no weight decay, no clipping) at a constant ``lr``, each
    role's group at lr × its muP factor (``muonlab.models.mup.lr_overrides``; none under SP).
    ``model_kwargs`` go to :func:`coord_check_config`.
    """
    results: dict[int, list[dict[str, float]]] = {}
    for width in widths:
        config = coord_check_config(width, parametrization, **model_kwargs)
        torch.manual_seed(seed)
        model = Transformer(config)
        groups = param_groups(model, role_overrides=mup.lr_overrides(config, lr))
        optimizer = Muon(groups, lr=lr, weight_decay=0.0, ns_dtype="float32")
        data = torch.Generator().manual_seed(seed + 1)
        probe, _ = zipf_batch(torch.Generator().manual_seed(seed + 2), batch, config.max_seq_len, config.vocab_size)
        trace = [activation_rms(model, probe)]
        for _ in range(steps):
            inputs, targets = zipf_batch(data, batch, config.max_seq_len, config.vocab_size)
            model(inputs, targets).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            trace.append(activation_rms(model, probe))
        results[width] = trace
    return results


def loglog_slope(widths: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(width): 0 = flat, 0.5 = grows like √width."""
    xs = [math.log(w) for w in widths]
    ys = [math.log(v) for v in values]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sum((x - x_mean) ** 2 for x in xs)
