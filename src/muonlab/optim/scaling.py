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

``A`` and ``B`` are those of the *logical* matrix ``[out, in]``, whatever the storage: a matrix
stored ``[in, out]`` (Hugging Face ``Conv1D``) is scaled as its transpose, and fused projections
split into blocks are scaled by the shape of one block (:func:`block_shape`). ``keller`` and
``spectral`` are not symmetric in ``A`` and ``B``, so the orientation matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["SCALE_RULES", "block_shape", "logical_matrix_shape", "stored_matrix_shape", "update_scale"]


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


def stored_matrix_shape(shape: tuple[int, ...], stacked: bool = True) -> tuple[int, int]:
    """The ``(rows, cols)`` of the matrices a parameter of ``shape`` holds, as they lie in memory.

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


def block_shape(rows: int, cols: int, transposed: bool = False, blocks: int = 1) -> tuple[int, int]:
    """The matrix Muon orthogonalizes (and scales by) for a stored matrix ``[rows, cols]``.

    ``transposed``: the matrix is stored ``[in, out]`` (Hugging Face ``Conv1D``, ``is_transposed``
    expert stacks), so the logical matrix is its transpose ``[cols, rows]``. ``blocks``: the
    logical rows are that many equal fused projections (GPT-2's ``c_attn`` = ``[q|k|v]``, a fused
    ``[gate|up]``), each ``[rows / blocks, cols]`` orthogonalized on its own.
    """
    out_features, in_features = (cols, rows) if transposed else (rows, cols)
    if not isinstance(blocks, int) or blocks < 1 or out_features % blocks:
        raise ValueError(f"blocks={blocks!r} must be a positive integer dividing the {out_features} output rows "
                         f"of a [{out_features}, {in_features}] matrix")
    return out_features // blocks, in_features


def logical_matrix_shape(shape: tuple[int, ...], stacked: bool = True, transposed: bool = False,
                         blocks: int = 1) -> tuple[int, int]:
    """The ``(rows, cols)`` of each matrix Muon orthogonalizes in a parameter of ``shape``:
    :func:`stored_matrix_shape`, then :func:`block_shape` (orientation and fused blocks)."""
    return block_shape(*stored_matrix_shape(tuple(shape), stacked), transposed, blocks)


def update_scale(rule: str, shape: tuple[int, ...], stacked: bool = True, transposed: bool = False,
                 blocks: int = 1) -> float:
    """``s(A, B)`` for a parameter of ``shape`` under the named rule (logical matrix shape)."""
    try:
        fn = SCALE_RULES[rule]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scale rule {rule!r}; valid: {sorted(SCALE_RULES)}") from None
    return fn(*logical_matrix_shape(tuple(shape), stacked, transposed, blocks))
