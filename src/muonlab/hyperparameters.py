"""Muon's hyper-parameter vocabulary, shared by the optimizer and the run config, without torch.

``muonlab.optim.Muon`` and ``muonlab.train.config.TrainConfig`` both need the names and defaults below;
``TrainConfig`` validates a run before torch is imported, so they live here, once, in a module that
imports only the standard library.

Update-scale rules: the factor ``s(A, B)`` that multiplies the orthogonalized update.


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

``A`` and ``B`` are the rows and columns of the *logical* matrix ``[out, in]``
(:mod:`muonlab.optim.scaling` derives them from a parameter's storage). ``keller`` and ``spectral``
are not symmetric in ``A`` and ``B``.

Newton–Schulz: ``NS_STEPS`` = 5 iterations in ``NS_DTYPE`` (bf16), as both papers (Moonlight §2.1,
Essential AI §2.1); ``NS_DTYPES`` names the compute dtypes the optimizer accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ADAMW_BETAS", "ADAMW_EPS", "DEFAULT_UPDATE_RMS", "MOMENTUM", "NESTEROV", "NORMUON_BETA2", "NS_COEFFICIENTS",
           "NS_DTYPE", "NS_DTYPES", "NS_STEPS", "SCALE", "SCALE_RULES", "ScaleRule",
           "check_update_rms"]

MOMENTUM = 0.95
"""Muon's momentum μ (Moonlight Algorithm 1)."""
NESTEROV = True
"""Feed ``G + μM`` to Newton–Schulz (Keller Jordan's and Moonlight's code)."""
NS_STEPS = 5
"""Newton–Schulz iterations."""
NS_COEFFICIENTS = "jordan"
"""The Newton–Schulz polynomial: Keller Jordan's (3.4445, −4.7750, 2.0315) (``muonlab.optim.newton_schulz``)."""
NS_DTYPES = ("bfloat16", "float16", "float32", "float64")
"""The Newton–Schulz compute dtypes, by name."""
NS_DTYPE = "bfloat16"
"""The default Newton–Schulz compute dtype, as both papers."""
SCALE = "moonlight"
"""The default update-scale rule (a key of ``SCALE_RULES``)."""
NORMUON_BETA2 = 0.95
"""NorMuon's second-moment decay β2 (arXiv 2510.05491)."""
ADAMW_BETAS = (0.9, 0.95)
"""AdamW's (β1, β2) for the parameters Muon leaves to AdamW (Moonlight's pretraining values)."""
ADAMW_EPS = 1e-8
"""AdamW's ε."""

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
