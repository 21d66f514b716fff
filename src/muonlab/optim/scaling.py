"""Update-scale rules: the factor ``s(A, B)`` that multiplies the orthogonalized update.

Muon's update is ``W ← W − lr · (s(A, B) · O + λ · W)`` where ``O ≈ U Vᵀ`` has RMS
``sqrt(1 / max(A, B))`` (Moonlight Lemma 1). The rule decides how the update's size depends on
the logical matrix shape ``[A, B]`` (``A`` = rows = fan-out, ``B`` = columns = fan-in):

- ``"moonlight"``: ``0.2 · sqrt(max(A, B))`` (arXiv 2502.16982 §2.2, Eq. 4). The update RMS is then
  ≈ 0.2 for every shape, the typical RMS of an AdamW update, so AdamW's learning rate and weight
  decay can be reused unchanged. The default.
- ``"keller"``: ``sqrt(max(1, A / B))`` — Keller Jordan's original rule (Moonlight footnote 4);
  matches ``torch.optim.Muon``'s default ``adjust_lr_fn``.
- ``"spectral"``: ``sqrt(A / B) = sqrt(fan_out / fan_in)``, the spectral-norm (muP-style) scaling.
- ``"none"``: 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["SCALE_RULES", "logical_matrix_shape", "update_scale"]


def _moonlight(rows: int, cols: int) -> float:
    return 0.2 * math.sqrt(max(rows, cols))


def _keller(rows: int, cols: int) -> float:
    return math.sqrt(max(1.0, rows / cols))


def _spectral(rows: int, cols: int) -> float:
    return math.sqrt(rows / cols)


def _none(rows: int, cols: int) -> float:
    return 1.0


SCALE_RULES: dict[str, Callable[[int, int], float]] = {
    "moonlight": _moonlight,
    "keller": _keller,
    "spectral": _spectral,
    "none": _none,
}


def logical_matrix_shape(shape: tuple[int, ...], stacked: bool = True) -> tuple[int, int]:
    """The ``(rows, cols)`` of the matrices a parameter of ``shape`` stands for.

    2-D ``[A, B]`` is one matrix. 3-D is ambiguous: with ``stacked`` (an expert stack
    ``[E, A, B]``) it is ``E`` matrices of ``[A, B]``; without (a Conv1d weight ``[out, in, k]``) it
    is one ``(out, in·k)`` matrix. A conv weight ``[out, in, *kernel]`` (4-D or more) is one
    ``(out, in·prod(kernel))`` matrix.
    """
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3 and stacked:
        return shape[1], shape[2]
    if len(shape) == 3:
        return shape[0], shape[1] * shape[2]
    if len(shape) >= 4:
        return shape[0], math.prod(shape[1:])
    raise ValueError(f"a Muon parameter must have at least 2 dimensions, got shape {tuple(shape)}")


def update_scale(rule: str, shape: tuple[int, ...], stacked: bool = True) -> float:
    """``s(A, B)`` for a parameter of ``shape`` under the named rule (logical matrix shape)."""
    try:
        fn = SCALE_RULES[rule]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scale rule {rule!r}; valid: {sorted(SCALE_RULES)}") from None
    return fn(*logical_matrix_shape(tuple(shape), stacked))
