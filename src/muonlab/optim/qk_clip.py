"""QK-Clip (Kimi K2, arXiv 2507.20534 §2.1): cap each attention head's max logit at τ by rescaling
its query and key weights after the optimizer step. Muon + weight decay + update-RMS matching +
QK-Clip is K2's "MuonClip"; Moonlight (arXiv 2502.16982 App. D) already saw the logits grow.

For head h with max pre-softmax logit S_h (the max over the batch and all key positions j ≤ i of
the logit its softmax sees, softmax scale included, recorded in the forward pass)::

    γ_h = τ / S_h   if S_h > τ,   else 1           (a non-finite S_h leaves the head alone)

and the head's query and key rows are rescaled so that every logit of the head — bilinear in the
two — shrinks by exactly γ_h. Forward and backward are unchanged; heads with γ_h = 1 are not
touched. A logit term pairs query rows with key rows; the factor is split per term:

- one key head per query head (multi-head attention; MLA's q^C, k^C): √γ_h on each (K2).
- a key head g shared by a group G of query heads (grouped-query attention): the key rows get
  √γ_min with γ_min = min_{h∈G} γ_h, each query head the remainder γ_h / √γ_min, so head h's
  logits scale by (γ_h / √γ_min)·√γ_min = γ_h. When the group's heads are clipped alike (their
  shared key usually drives them) this is √γ on each side, as K2; a head under τ in a group with
  a clipped head keeps its logits (its query rows are scaled by 1/√γ_min) but not its weights
  bit for bit. Groups without a clipped head are untouched.
- a key declared as not rescaled (None; MLA's rotary key k^R, shared by all heads, which K2 leaves
  alone because scaling it would couple the heads): the query rows take all of γ_h (MLA's q^R).

**The module protocol** (duck-typed; ``muonlab.optim`` imports nothing from ``muonlab.models``).
A module takes part when its class defines ``qk_clip_terms()``; it also has

- ``track_max_logits``: a bool attribute; QKClip sets it while it needs the maxima;
- ``max_logits``: None, or an fp32 tensor [n_heads] — the max logit per query head over the
  training forwards since QKClip last reset it to None;
- ``qk_clip_terms()``: a list of ``(query, key)`` pairs whose dot products make the logits, each
  a weight or ``(weight, rows)`` with ``rows`` a slice of its dim 0 (e.g. of a fused qkv weight);
  ``key`` None for a key that is not rescaled. The query rows split into n_heads equal blocks
  (head h = block h); the key rows into blocks of the same width, one per key head; query head h
  reads key head h // (n_heads / n_key_heads). Head h's logit must be the scaled sum over the
  terms of (its query block's output)·(its key block's output); rotations inside a block (RoPE) and
  normalisation before the projection are fine.

``muonlab.models.attention_logits.MaxLogitTracker`` provides the first two: call
``self.record_max_logits(q, k, scale)`` in ``forward``. muonlab's ``Attention`` (MHA/GQA) and
``MLA`` implement the protocol.

**Where it runs.** ``Muon(..., qk_clip=QKClip(model, tau=100))`` applies it at the end of every
``step()``: after the engine has written every rank's updated weights (ZeRO-1's all-gather
included), before anything else can run a forward that would make the recorded maxima stale, and
without a line a user's own loop could forget; schedulers and checkpoints see clipped weights.
Under another optimizer, call ``qk_clip.apply()`` right after its ``step()``.

**Data and tensor parallelism.** The maxima are all-reduced (MAX) over ``process_group`` — by
default every process, when torch.distributed is initialized with more than one — so every rank
computes the same γ. Under tensor parallelism a rank's forward computes only its block of heads
(the rows of its ``tp`` shard of the first query weight, ``muonlab.parallel.mesh``): its maxima
fill that block of the module's heads and the others are −∞ before the reduction, so the MAX both
merges the head blocks of tensor-parallel peers and takes each head's max over the data-parallel
ranks (``process_group`` must span both; the default does). Replicated weights (DDP, ZeRO-1) are
scaled identically on every rank; DTensors (FSDP2, tensor parallelism, both) in the rows each rank
holds, which must be whole rows (dim 0 sharding only).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .distributed.shards import local_box

__all__ = ["QKClip", "attention_modules", "clip_factors", "head_scales"]


def clip_factors(max_logits: Tensor, tau: float) -> Tensor:
    """γ_h = τ / S_h where S_h > τ (and finite), else 1 — fp32, one per head."""
    s = max_logits.float()
    return torch.where(torch.isfinite(s) & (s > tau), tau / s, torch.ones_like(s))


def head_scales(gamma: Tensor, key_heads: int | None) -> tuple[Tensor, Tensor | None]:
    """Factors ``(s_q [H], s_k [key_heads])`` with s_q[h]·s_k[κ(h)] = γ_h, κ(h) = h // (H / key_heads).

    ``key_heads`` None (a key that is not rescaled): ``(γ, None)``. Otherwise s_k[g] = √(min of γ
    over the query heads reading key head g) and s_q[h] = γ_h / s_k[κ(h)]: √γ on each side with
    one key head per query head (module docstring).
    """
    if key_heads is None:
        return gamma, None
    group = gamma.numel() // key_heads
    s_k = gamma.view(key_heads, group).amin(dim=1).sqrt()
    return gamma / s_k.repeat_interleave(group), s_k


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module whose class defines ``qk_clip_terms``, in ``named_modules`` order."""
    found, seen = [], set()
    for name, module in model.named_modules():
        if callable(getattr(type(module), "qk_clip_terms", None)) and id(module) not in seen:
            seen.add(id(module))
            found.append((name, module))
    return found


def _rows(block: Any, where: str) -> tuple[Tensor, slice]:
    """A term's weight and the slice of its dim 0 that the term uses."""
    weight, rows = block if isinstance(block, tuple) else (block, slice(None))
    if not isinstance(weight, Tensor) or weight.ndim < 2 or not isinstance(rows, slice):
        raise ValueError(f"{where} must be a weight matrix or (weight, rows slice), got {block!r:.80}")
    start, stop, step = rows.indices(weight.shape[0])
    if step != 1 or stop <= start:
        raise ValueError(f"{where}: rows {rows} of a weight with {weight.shape[0]} rows is not a contiguous block")
    return weight, slice(start, stop)


def _local_rows(weight: Tensor) -> tuple[Tensor, int]:
    """The rows of ``weight`` this rank holds and the global index of the first: all of them for a
    plain tensor, its block for a DTensor (FSDP2 and tensor parallelism shard rows: ``Shard(0)``)."""
    if getattr(weight, "device_mesh", None) is None:
        return weight, 0
    box = local_box(weight)
    if any(o or n != full for o, n, full in zip(box.offset[1:], box.shape[1:], weight.shape[1:])):
        raise ValueError(f"QK-Clip rescales whole rows, but this rank holds the block {box.shape} at {box.offset} of "
                         f"a weight of shape {tuple(weight.shape)} (placements {tuple(weight.placements)}); shard "
                         "query and key weights on dim 0 only (column-wise tensor parallelism, FSDP2)")
    return weight.to_local(), box.offset[0]


def _head_block(module: nn.Module, name: str, recorded: int) -> tuple[int, int]:
    """``(first, total)``: the module has ``total`` heads and this rank's forward computed heads
    ``[first, first + recorded)`` — all of them, or under tensor parallelism the block in the rows of
    its ``tp`` shard of the first query weight."""
    where = f"attention module {name!r}, qk_clip_terms()[0] query"
    weight, rows = _rows(module.qk_clip_terms()[0][0], where)
    box = local_box(weight, ("tp",))
    if box.shape[0] == weight.shape[0]:  # not split by tensor parallelism: this rank computed every head
        return 0, recorded
    lo, hi = max(rows.start, box.offset[0]), min(rows.stop, box.offset[0] + box.shape[0])
    width, rest = divmod(hi - lo, recorded)
    if rest or width <= 0 or (rows.stop - rows.start) % width:
        raise ValueError(f"{where}: this rank's {hi - lo} query rows do not split into the {recorded} heads of its "
                         "max_logits")
    return (lo - rows.start) // width, (rows.stop - rows.start) // width


class QKClip:
    """QK-Clip for ``model``'s attention modules (module docstring: the rule, the protocol, where it runs).

    Args:
        model: any module; the attention modules are those whose class defines ``qk_clip_terms``.
        tau: the threshold τ (Kimi K2: 100); None measures the max logits on request
            (``measure_next_step``) without clipping.
        process_group: the data-parallel group the maxima are reduced over (None: every process
            when torch.distributed is initialized with more than one).

    After each ``apply()``, ``stats()`` gives ``max_logit/layer{i}`` (the max over the heads of the
    i-th attention module, before clipping) and, with ``tau``, ``qk_clip/heads_clipped`` and
    ``qk_clip/min_gamma``. No state is kept across steps: a resumed run clips exactly as an
    uninterrupted one.
    """

    def __init__(self, model: nn.Module, tau: float | None = None, process_group: Any = None) -> None:
        if tau is not None and not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"QK-Clip's tau must be a positive number (Kimi K2: 100), or None to only measure; "
                             f"got {tau}")
        self.tau = None if tau is None else float(tau)
        self.process_group = process_group
        self.modules = attention_modules(model)
        if self.tau is not None and not self.modules:
            raise ValueError(f"QK-Clip with tau={tau} found no attention module in {type(model).__name__}: a module "
                             "takes part when its class defines qk_clip_terms() (muonlab.optim.qk_clip docstring)")
        self._last: tuple[Tensor, list[int], Tensor | None] | None = None
        self._track(self.tau is not None)

    def _track(self, on: bool) -> None:
        for _, module in self.modules:
            module.track_max_logits = on

    def measure_next_step(self) -> None:
        """Record the max logits of the forwards until the next ``apply()`` (always on with ``tau``)."""
        self._track(True)

    def _collect(self) -> tuple[Tensor, list[int]] | None:
        """Every module's recorded maxima (reset to None) in its block of the module's heads (−∞
        elsewhere), concatenated and all-reduced (MAX) over the process group, and the number of
        heads of each module; None when none recorded."""
        recorded = [module.max_logits for _, module in self.modules]
        if all(m is None for m in recorded):
            if self.tau is not None:
                raise ValueError("QK-Clip found no recorded max logits after the step: every attention module must "
                                 "run a training forward with track_max_logits set (record_max_logits) before step()")
            return None
        for (name, module), m in zip(self.modules, recorded):
            if m is None or m.ndim != 1:
                raise ValueError(f"attention module {name!r} recorded max_logits {m!r:.60} while others recorded "
                                 "theirs; each must hold one fp32 value per query head after every training forward")
            module.max_logits = None
        blocks = []
        for (name, module), m in zip(self.modules, recorded):
            first, total = _head_block(module, name, m.numel())
            blocks.append(m.float().new_full((total,), float("-inf")).index_copy_(
                0, torch.arange(first, first + m.numel(), device=m.device), m.float()))
        maxima = torch.cat(blocks)
        group = self.process_group
        if group is not None or (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
        return maxima, [b.numel() for b in blocks]

    @torch.no_grad()
    def apply(self) -> None:
        """Read the maxima recorded since the last call and, with ``tau``, rescale the clipped heads."""
        collected = self._collect()
        if self.tau is None:
            self._track(False)
        if collected is None:
            self._last = None
            return
        maxima, heads = collected
        gamma = None
        if self.tau is not None:
            gamma = clip_factors(maxima, self.tau)
            for weight, scale in self._row_scales(gamma, heads):
                local, offset = _local_rows(weight)
                local.mul_(scale[offset : offset + local.shape[0]].view(-1, *[1] * (local.ndim - 1)))
        self._last = (maxima, heads, gamma)

    def _row_scales(self, gamma: Tensor, heads: list[int]) -> list[tuple[Tensor, Tensor]]:
        """``(weight, factor per row)`` for every weight a term names (rows outside the terms: 1)."""
        scales: dict[int, tuple[Tensor, Tensor]] = {}

        def fold(weight: Tensor, rows: slice, factors: Tensor, width: int) -> None:
            _, row_scale = scales.setdefault(id(weight), (weight, torch.ones(weight.shape[0], device=gamma.device)))
            row_scale[rows] *= factors.repeat_interleave(width)

        for (name, module), module_gamma in zip(self.modules, gamma.split(heads)):
            n_heads = module_gamma.numel()
            for t, (query, key) in enumerate(module.qk_clip_terms()):
                where = f"attention module {name!r}, qk_clip_terms()[{t}]"
                q_weight, q_rows = _rows(query, f"{where} query")
                width, rest = divmod(q_rows.stop - q_rows.start, n_heads)
                if rest or not width:
                    raise ValueError(f"{where}: {q_rows.stop - q_rows.start} query rows do not split into "
                                     f"{n_heads} heads (the length of its max_logits)")
                key_heads = None
                if key is not None:
                    k_weight, k_rows = _rows(key, f"{where} key")
                    key_heads, rest = divmod(k_rows.stop - k_rows.start, width)
                    if rest or not key_heads or n_heads % key_heads:
                        raise ValueError(f"{where}: {k_rows.stop - k_rows.start} key rows are not key heads of "
                                         f"{width} rows whose count divides {n_heads} query heads")
                s_q, s_k = head_scales(module_gamma, key_heads)
                fold(q_weight, q_rows, s_q, width)
                if s_k is not None:
                    fold(k_weight, k_rows, s_k, width)
        return list(scales.values())

    def stats(self) -> dict[str, float]:
        """The last ``apply()``'s measurements (empty when it measured nothing); synchronizes with the device."""
        if self._last is None:
            return {}
        maxima, heads, gamma = self._last
        per_layer = torch.stack([part.max() for part in maxima.split(heads)]).tolist()
        row = {f"max_logit/layer{i}": value for i, value in enumerate(per_layer)}
        if gamma is not None:
            row["qk_clip/heads_clipped"] = int((gamma < 1).sum())
            row["qk_clip/min_gamma"] = float(gamma.min())
        return row
