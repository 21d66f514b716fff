"""Logical matrix shapes and the update scale ``s(A, B)`` of a Muon parameter.

The scale rules themselves (``SCALE_RULES``: ``"moonlight"``, ``"min_side"``, ``"update_norm"``,
``"keller"``, ``"spectral"``, ``"none"``, and the target update RMS 0.2) are described and defined in
:mod:`muonlab.hyperparameters`, torch-free, so that run configs validate without torch; this module
applies them to parameter shapes.

``A`` and ``B`` are those of the *logical* matrix ``[out, in]``, whatever the storage: a matrix
stored ``[in, out]`` (Hugging Face ``Conv1D``) is scaled as its transpose, and fused projections
split into blocks are scaled by the shape of one block (:func:`block_shape`). ``keller`` and
``spectral`` are not symmetric in ``A`` and ``B``, so the orientation matters.
"""

from __future__ import annotations

import math

from ..hyperparameters import DEFAULT_UPDATE_RMS, SCALE_RULES, ScaleRule, check_update_rms

__all__ = ["DEFAULT_UPDATE_RMS", "SCALE_RULES", "ScaleRule", "block_shape", "check_update_rms",
           "logical_matrix_shape", "stored_matrix_shape", "update_scale"]


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
                 blocks: int = 1, update_rms: float = DEFAULT_UPDATE_RMS) -> float:
    """``s(A, B)`` for a parameter of ``shape`` under the named rule (logical matrix shape) and target
    update RMS. Under ``"update_norm"`` it multiplies ``O / RMS(O)``, not ``O``."""
    try:
        fn = SCALE_RULES[rule]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scale rule {rule!r}; valid: {sorted(SCALE_RULES)}") from None
    check_update_rms(rule, update_rms)
    return fn(*logical_matrix_shape(tuple(shape), stacked, transposed, blocks), update_rms)
