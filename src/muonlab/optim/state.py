"""The optimizer state of each algorithm: its fields, dtypes and initial values, in one place.

=========  ===========================================  ==========================================
algorithm  fields                                       dtype
=========  ===========================================  ==========================================
muon       ``momentum_buffer``                          fp32, or wider (fp64 parameters keep fp64)
muon       ``normuon_v`` (NorMuon only; one value per   fp32, whole on every rank
           row of each block, ``Engine.row_state``)
adamw      ``exp_avg``, ``exp_avg_sq``, ``step``        the parameter's; ``step`` a 0-d fp32 count
=========  ===========================================  ==========================================

Every engine creates state with :func:`new_state` (on whole parameters, local shards or flat
pieces alike), so a parameter's state has the same dtype whichever engine holds it.
"""

from __future__ import annotations

import torch

__all__ = ["FIELDS", "momentum_dtype", "new_state"]

FIELDS = {"muon": ("momentum_buffer",), "adamw": ("exp_avg", "exp_avg_sq", "step")}


def momentum_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Momentum is kept in fp32 (or wider) whatever the parameter's dtype."""
    return torch.promote_types(param_dtype, torch.float32)


def new_state(field: str, shape: tuple[int, ...] | torch.Size, param_dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    """The initial value of one state ``field`` for a parameter (or piece) of ``shape``: zeros."""
    if field == "step":
        return torch.zeros(())
    dtype = momentum_dtype(param_dtype) if field == "momentum_buffer" else param_dtype
    return torch.zeros(shape, dtype=dtype, device=device)
