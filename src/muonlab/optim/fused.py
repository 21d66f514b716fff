"""Cautious weight decay and the Muon update in one compiled element-wise pass.

Eagerly, cautious decay (arXiv 2510.12402) costs three passes over ``W`` beside plain decay's one
multiplication: the mask ``𝟙(Õ ⊙ W ≥ 0)``, ``W ← W − lr·λ·mask ⊙ W``, then ``W ← W − lr·s·Õ``
(``update_rule.cautious_mask``, ``decoupled_update_``). :func:`fused_cautious_update_` runs
``update_rule.cautious_update`` compiled by ``torch.compile`` into one kernel that reads ``W`` and
``Õ`` once and writes ``W`` once, as dion and modded-nanogpt compile their optimizers' element-wise
updates.

Compiled once per device type and dtypes, not per shape: the tensors are passed flat with a dynamic
length, and ``lr``, ``λ``, ``s`` as unspecialized floats, so a schedule's new lr or another matrix
shape reuses the kernel. The first call per dtype compiles (seconds, once per process). Turned off
with ``Muon(compile=False)`` (``TrainConfig.compile``, the ``muonlab`` commands' ``--compile``).
Where compiling fails (no C++ compiler for a CPU kernel, a Python that ``torch.compile`` does not
support), it warns once and the caller takes the eager path, as it does for pieces too small to gain.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .update_rule import cautious_update

__all__ = ["MIN_NUMEL", "fused_cautious_update_"]

MIN_NUMEL = 1 << 14  # smaller pieces stay eager: a compiled call's fixed cost (~10 µs) outweighs the passes it saves

_compiled_keys: set[tuple] = set()  # (device type, param dtype, update dtype) that compiled
_failed_devices: set[str] = set()  # device types where compiling failed: eager from then on


def _cautious_update_(param: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float,
                      scale: float) -> None:
    param.copy_(cautious_update(param, update, lr, weight_decay, scale))


@functools.cache
def _compiled():
    return torch.compile(_cautious_update_, dynamic=True, fullgraph=True)


def fused_cautious_update_(param: torch.Tensor, update: torch.Tensor, lr: float, weight_decay: float,
                           scale: float) -> bool:
    """``W ← W − lr·(s·Õ + λ·𝟙(Õ ⊙ W ≥ 0) ⊙ W)`` in place in one compiled pass; ``False`` (nothing
    done) where the caller should take the eager path instead: a piece under :data:`MIN_NUMEL`
    elements or not contiguous, or a device where compiling failed."""
    device = param.device.type
    if device in _failed_devices or param.numel() < MIN_NUMEL or not (param.is_contiguous() and update.is_contiguous()):
        return False
    args = (param.view(-1), update.view(-1), lr, weight_decay, scale)
    key = (device, param.dtype, update.dtype)
    if key in _compiled_keys:
        _compiled()(*args)
        return True
    try:  # the first call compiles; a compilation error leaves param untouched
        _compiled()(*args)
    except Exception as err:  # noqa: BLE001 - any compiler failure means: stay eager
        _failed_devices.add(device)
        warnings.warn(f"muonlab: could not compile the fused cautious-decay update on {device} ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); using the eager update. Muon(compile=False) "
                      "skips the attempt.", RuntimeWarning, stacklevel=2)
        return False
    _compiled_keys.add(key)
    return True
