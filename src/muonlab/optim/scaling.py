"""Update-scale rules: the factor ``s(A, B)`` that multiplies the orthogonalized update.

Muon's update is ``W ← W − lr · (s(A, B) · O + λ · W)`` where ``O ≈ U Vᵀ`` has RMS
``sqrt(1 / max(A, B))`` (Moonlight Lemma 1). The rule decides how the update's size depends on
the logical matrix shape ``[A, B]`` (``A`` = rows = fan-out, ``B`` = columns = fan-in). Three rules
aim at a target update RMS ``r`` (``update_rms``, 0.2 by default: the typical RMS of an AdamW
update, Moonlight §2.2; Table 8 sweeps it):

- ``"moonlight"``: ``r · sqrt(max(A, B))`` (arXiv 2502.16982 §2.2, Eq. 4; Table 1's "Adjusted LR").
  The update RMS is then ≈ r for every shape (exactly r for the exact polar factor of a full-rank
  matrix), so with r = 0.2 AdamW's learning rate and weight decay can be reused unchanged. The default.
- ``"min_side"``: ``r · sqrt(min(A, B))``. Table 1's "Baseline" (Eq. 5), ``0.2 · √H`` for every
  matrix, in a model whose Muon matrices all have the hidden size H as their smaller side (attention
  ``[H, H]``, a plain MLP ``[4H, H]`` and ``[H, 4H]``): there min = H. Its update RMS is
  ``r · sqrt(min / max)``: r on square matrices, r/2 on the ``[H, 4H]`` MLP. On matrices whose
  smaller side is *not* H it is not the paper's Baseline: GQA key/value ``[kv, H]`` with kv < H,
  MLA low-rank projections (``wq_down`` ``[q_rank, H]``, ``wkv_down`` ``[kv_rank, H]``, the
  up-projections ``[heads · head_dim, rank]``), MoE experts ``[I, H]`` with I < H: each gets
  ``r · sqrt(its smaller side)``, less than ``r · √H``.
- ``"update_norm"``: ``r · O / RMS(O)``, Table 1's "Update Norm" (Eq. 6): data-dependent, the
  orthogonalized update of each logical matrix (each expert of a stack, each block of a fused
  projection) is divided by its own RMS before it is scaled, so its RMS is exactly r whatever the
  shape or how well Newton–Schulz converged. The factor ``s`` is r; the division happens where the
  whole orthogonalized matrix lives (``Engine.orthogonalizer``), so it is exact on every engine.
  For the exact polar factor of a full-rank matrix it equals ``"moonlight"`` (Lemma 1).
- ``"keller"``: ``sqrt(max(1, A / B))`` — Keller Jordan's original rule (Moonlight footnote 4);
  matches ``torch.optim.Muon``'s default ``adjust_lr_fn``.
- ``"spectral"``: ``sqrt(A / B) = sqrt(fan_out / fan_in)``, the spectral-norm (muP-style) scaling.
- ``"none"``: 1.

``keller``, ``spectral`` and ``none`` have no target RMS: ``Muon`` rejects an ``update_rms`` other
than the default with them (:func:`check_update_rms`).

``A`` and ``B`` are those of the *logical* matrix ``[out, in]``, whatever the storage: a matrix
stored ``[in, out]`` (Hugging Face ``Conv1D``) is scaled as its transpose, and fused projections
split into blocks are scaled by the shape of one block (:func:`block_shape`). ``keller`` and
``spectral`` are not symmetric in ``A`` and ``B``, so the orientation matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_UPDATE_RMS", "SCALE_RULES", "ScaleRule", "block_shape", "check_update_rms",
           "logical_matrix_shape", "stored_matrix_shape", "update_scale"]

DEFAULT_UPDATE_RMS = 0.2
"""Moonlight's target update RMS (§2.2: AdamW's update RMS is "usually around 0.2 to 0.4")."""


@dataclass(frozen=True)
class ScaleRule:
    """One update-scale rule: ``factor(A, B, r)`` is ``s``; ``uses_update_rms``: whether the target
    RMS ``r`` enters it; ``normalizes``: whether ``O`` is divided by ``RMS(O)`` (per logical matrix)
    before it is scaled."""

    factor: Callable[[int, int, float], float]
    uses_update_rms: bool
    normalizes: bool = False

    def __call__(self, rows: int, cols: int, update_rms: float = DEFAULT_UPDATE_RMS) -> float:
        return self.factor(rows, cols, update_rms)


SCALE_RULES: dict[str, ScaleRule] = {
    "moonlight": ScaleRule(lambda rows, cols, r: r * math.sqrt(max(rows, cols)), uses_update_rms=True),
    "min_side": ScaleRule(lambda rows, cols, r: r * math.sqrt(min(rows, cols)), uses_update_rms=True),
    "update_norm": ScaleRule(lambda rows, cols, r: r, uses_update_rms=True, normalizes=True),
    "keller": ScaleRule(lambda rows, cols, r: math.sqrt(max(1.0, rows / cols)), uses_update_rms=False),
    "spectral": ScaleRule(lambda rows, cols, r: math.sqrt(rows / cols), uses_update_rms=False),
    "none": ScaleRule(lambda rows, cols, r: 1.0, uses_update_rms=False),
}


def check_update_rms(rule: str, update_rms: float) -> None:
    """Raise ``ValueError`` unless ``update_rms`` is a positive finite number that ``rule`` can use:
    rules without a target RMS (``keller``, ``spectral``, ``none``) accept only the default."""
    if isinstance(update_rms, bool) or not isinstance(update_rms, (int, float)) or not 0 < update_rms < math.inf:
        raise ValueError(f"update_rms must be a positive number, got {update_rms!r}")
    if rule in SCALE_RULES and not SCALE_RULES[rule].uses_update_rms and update_rms != DEFAULT_UPDATE_RMS:
        users = sorted(name for name, r in SCALE_RULES.items() if r.uses_update_rms)
        raise ValueError(f"update_rms={update_rms!r} has no effect under scale rule {rule!r}, which has no target "
                         f"update RMS; use one of {users}, or leave update_rms at {DEFAULT_UPDATE_RMS}")


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
