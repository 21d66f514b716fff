"""Muon's element-wise refinements compiled into fused passes: cautious weight decay with the update,
and NorMuon's row normalization.

Eagerly, cautious decay (arXiv 2510.12402) costs three passes over ``W`` beside plain decay's one
multiplication: the mask ``𝟙(Õ ⊙ W ≥ 0)``, ``W ← W − lr·λ·mask ⊙ W``, then ``W ← W − lr·s·Õ``
(``update_rule.cautious_mask``, ``decoupled_update_``). :func:`fused_cautious_update_` runs
``update_rule.cautious_update`` compiled by ``torch.compile`` into one kernel that reads ``W`` and
``Õ`` once and writes ``W`` once, as dion and modded-nanogpt compile their optimizers' element-wise
updates. Eagerly, NorMuon (arXiv 2510.05491) widens a bf16 batch of orthogonalized blocks to fp32
twice, once to reduce its rows and once to multiply them (``update_rule.normuon_``);
:func:`fused_normuon_` compiles those two passes (``update_rule.row_mean_squares``,
``scale_rows_``) into a reduction and a multiplication that read the bf16 batch directly.

Compiled once per device type and dtypes, not per shape: the tensors are passed with dynamic
sizes, and the coefficients as unspecialized floats, so a schedule's new lr or another matrix
shape reuses the kernel. The first call per dtype compiles (seconds, once per process). Turned off
with ``Muon(compile=False)`` (``TrainConfig.compile``, the ``muonlab`` commands' ``--compile``).
Where compiling fails (no C++ compiler for a CPU kernel, a Python that ``torch.compile`` does not
support), it warns once and the caller takes the eager path, as it does for pieces too small to gain.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

from .update_rule import cautious_update, normuon_row_factor_, row_mean_squares, scale_rows_

__all__ = ["MIN_NUMEL", "fused_cautious_update_", "fused_normuon_"]

MIN_NUMEL = 1 << 14  # smaller pieces stay eager: a compiled call's fixed cost (~10 µs) outweighs the passes it saves

_compiled_keys: set[tuple] = set()  # (kernel, device type, dtypes) that compiled
_failed_devices: set[str] = set()  # device types where compiling failed: eager from then on


def _row_mean_squares_into(O: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(row_mean_squares(O))


def _cautious_update_(param: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float,
                      scale: float) -> None:
    param.copy_(cautious_update(param, update, lr, weight_decay, scale))


@functools.cache
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=True, fullgraph=True)


def _run_compiled(fn: Callable, what: str, key: tuple, *args) -> bool:
    """Run ``fn`` compiled on ``args`` (its first tensor's device); ``False`` where compiling failed there
    (now or before), with one warning naming ``what``."""
    device = args[0].device.type
    if device in _failed_devices:
        return False
    key = (fn, device, *key)
    if key in _compiled_keys:
        _compiled(fn)(*args)
        return True
    try:  # the first call compiles; a compilation error leaves the tensors untouched
        _compiled(fn)(*args)
    except Exception as err:  # noqa: BLE001 - any compiler failure means: stay eager
        _failed_devices.add(device)
        warnings.warn(f"muonlab: could not compile the fused {what} on {device} ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); using the eager code. Muon(compile=False) "
                      "skips the attempt.", RuntimeWarning, stacklevel=3)
        return False
    _compiled_keys.add(key)
    return True


def fused_cautious_update_(param: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float,
                           scale: float) -> bool:
    """``W ← W − lr·(s·Õ + λ·𝟙(Õ ⊙ W ≥ 0) ⊙ W)`` in place in one compiled pass; ``False`` (nothing
    done) where the caller should take the eager path instead: a piece under :data:`MIN_NUMEL`
    elements or not contiguous, or a device where compiling failed."""
    if param.numel() < MIN_NUMEL or not (param.is_contiguous() and update.is_contiguous()):
        return False
    return _run_compiled(_cautious_update_, "cautious-decay update", (param.dtype, update.dtype),
                         param.view(-1), update.view(-1), lr, weight_decay, scale)


def fused_normuon_(O: torch.Tensor, v: torch.Tensor, beta2: float, eps: float) -> bool:
    """NorMuon's row normalization of the batch ``O`` ``[N, m, n]`` with its row state ``v`` ``[N, m]``
    (``update_rule.normuon_``), in place, its two passes over ``O`` compiled; ``False`` (nothing done)
    where the caller should take the eager path: a batch under :data:`MIN_NUMEL` elements, or a device
    where compiling failed. The batch size ``N`` is marked unbacked, so that a batch of one matrix and a
    batch of several share one compilation (a compiler otherwise specializes a size of 1)."""
    if O.numel() < MIN_NUMEL:
        return False
    mean_sq = torch.empty(O.shape[:-1], dtype=torch.promote_types(O.dtype, torch.float32), device=O.device)
    for t in (O, mean_sq):
        torch._dynamo.decorators.mark_unbacked(t, 0)
    if not _run_compiled(_row_mean_squares_into, "NorMuon row statistics", (O.dtype,), O, mean_sq):
        return False
    factor = normuon_row_factor_(mean_sq, v, beta2, eps, O.shape[-1])
    torch._dynamo.decorators.mark_unbacked(factor, 0)
    if not _run_compiled(scale_rows_, "NorMuon row scaling", (O.dtype,), O, factor):
        scale_rows_(O, factor)  # v is updated already: finish here, eagerly
    return True
