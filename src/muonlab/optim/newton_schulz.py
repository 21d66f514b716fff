"""Newton–Schulz orthogonalization: the matrix function at the heart of Muon.

Muon replaces a momentum matrix ``M = U Σ Vᵀ`` by (an approximation of) its polar factor
``U Vᵀ`` (Moonlight, arXiv 2502.16982 §2.1 Eq. 2; Jordan et al. 2024). Each Newton–Schulz step
applies an odd quintic to the singular values without computing an SVD::

    X₀     = G / (margin · ‖G‖_F + eps)                      # all singular values now ≤ 1
    X_{k+1} = a_k X_k + b_k (X_k X_kᵀ) X_k + c_k (X_k X_kᵀ)² X_k

so that σ ↦ p_k(σ) = a_k σ + b_k σ³ + c_k σ⁵ is applied to every singular value at once. A
*coefficient set* is data: one ``(a, b, c)`` per step (the last one repeats when more steps are
asked for) plus the normalisation margin. Two sets are built in:

- ``"jordan"``: (3.4445, −4.7750, 2.0315) at every step — Keller Jordan's values, used by both
  papers with 5 steps. They maximise the slope at zero rather than converge, so the output's
  singular values land in roughly [0.7, 1.2] instead of exactly 1.
- ``"polar_express"``: the per-step minimax-optimal degree-5 polynomials of Amsel et al.,
  "The Polar Express" (arXiv 2505.16932, Algorithm 1), with their safety factor folded into the
  coefficients and the normalisation margin.

Two algebraically identical ways of running the same polynomial are offered (``method``):

- ``"standard"``: the iteration as written; per step ``4mn·m + 2m³`` FLOPs for a wide ``m × n``
  matrix (``m ≤ n``).
- ``"gram"``: every iterate is ``X_k = Q_k X₀`` with ``Q_k`` a polynomial in the small ``m × m``
  Gram matrix ``A = X₀ X₀ᵀ``. Because all these matrices commute,

      P_k = a_k I + b_k A_k + c_k A_k²,   Q_{k+1} = P_k Q_k,   A_{k+1} = P_k A_k P_k,

  and ``X`` is touched only to form ``A`` and to apply ``Q`` at the end, saving most FLOPs when
  ``n ≫ m``. The catch is precision: ``A`` holds σ², so in bf16 a singular value below about
  ``f ≈ 0.05·σ_max`` is lost in the rounding of ``A`` and the recursion treats it as zero, growing
  it by ``a_k`` per step, the polynomials' slope at 0, with no feedback. If that growth pushes it
  past ≈ 1.3, the quintic diverges (a momentum matrix of a rarely-routed MoE expert, 64 × 192,
  came out with σ_max = 5.2 instead of 1.2 after three such steps). So the iteration restarts
  from the current ``X`` — re-forming ``A`` exactly — before the product of the segment's ``a_k``
  exceeds ``GRAM_MAX_GROWTH`` = 16 (16·f < 1): segments of 2 steps for ``"jordan"`` (3.44² ≈ 12),
  1, 2, 2 for ``"polar_express"``. Measured so, bf16 output singular values stay ≤ 1.21 on that
  matrix and on Gaussian, low-rank, geometric and clustered spectra from 64 to 768 rows; the
  bf16 error against the exact polynomial is 1.2–4.2× the standard form's (≈ 2× on 768 × 3072
  Gaussians; tests/test_optim_gram_bf16.py bounds it by 3× on its cases), small next to the
  polynomial's own distance from ``U Vᵀ``.

The Gram form is only used where it is numerically safe: in fp32/fp64 always, in bf16/fp16
only when the small side has at least ``GRAM_MIN_ROWS_HALF`` rows. Below that, rounding ``A`` to
half precision can create spurious negative eigenvalues that the recursion amplifies (measured:
output singular values up to 5·10⁴ on 4 × 8 rank-deficient inputs; ≤ 1.28 from 16 rows up, for
Gaussian, low-rank, low-rank-plus-noise and power-law spectra); such matrices fall back to
``"standard"``, which costs little at that size.

``"auto"`` picks the form with fewer FLOPs for the shape (``ns_flops``) among the safe ones.
``"svd"`` returns the exact polar factor ``U Vᵀ`` (slow; for analysis and for exact-RMS
experiments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "COEFFICIENT_SETS",
    "GRAM_MIN_ROWS_HALF",
    "NS_METHODS",
    "CoefficientSet",
    "get_coefficient_set",
    "ns_flops",
    "orthogonalize",
]

NS_METHODS = ("auto", "standard", "gram", "svd")
GRAM_MIN_ROWS_HALF = 64
GRAM_MAX_GROWTH = 16.0


@dataclass(frozen=True)
class CoefficientSet:
    """A Newton–Schulz polynomial schedule.

    Attributes:
        name: registry name.
        polynomials: ``(a, b, c)`` per step; when more steps are requested than listed, the last
            polynomial repeats.
        norm_margin: ``X₀ = G / (norm_margin · ‖G‖_F + eps)``; a margin > 1 keeps rounding from
            pushing a singular value past 1, where aggressive polynomials blow up.
        safe_dtypes: dtypes in which the set was measured to stay bounded (singular values of
            the output ≤ 1.5 on Gaussian, low-rank and tiny matrices); others are refused.
    """

    name: str
    polynomials: tuple[tuple[float, float, float], ...]
    norm_margin: float = 1.0
    safe_dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32, torch.float64)

    def schedule(self, steps: int) -> list[tuple[float, float, float]]:
        """The ``(a, b, c)`` used at each of ``steps`` iterations."""
        if steps < 1:
            raise ValueError(f"ns_steps must be a positive integer, got {steps}")
        last = len(self.polynomials) - 1
        return [self.polynomials[min(k, last)] for k in range(steps)]

    def gram_segments(self, steps: int) -> list[int]:
        """Step counts between restarts of the Gram form: a segment ends before the product of
        its ``a_k`` (the growth of a singular value lost in bf16 rounding) would pass
        ``GRAM_MAX_GROWTH``; see the module docstring."""
        segments, growth = [], math.inf
        for a, _, _ in self.schedule(steps):
            if growth * abs(a) > GRAM_MAX_GROWTH:
                segments.append(0)
                growth = 1.0
            segments[-1] += 1
            growth *= abs(a)
        return segments


def _with_safety(polys, safety: float):
    # Polar Express: use p(x / s) = (a/s)x + (b/s³)x³ + (c/s⁵)x⁵ instead of p(x), so that a
    # singular value pushed slightly above the fitted interval by rounding is not amplified.
    return tuple((a / safety, b / safety**3, c / safety**5) for a, b, c in polys)


_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
)
_POLAR_EXPRESS_SAFETY = 1.01

COEFFICIENT_SETS: dict[str, CoefficientSet] = {
    "jordan": CoefficientSet("jordan", ((3.4445, -4.7750, 2.0315),)),
    "polar_express": CoefficientSet(
        "polar_express",
        _with_safety(_POLAR_EXPRESS_RAW, _POLAR_EXPRESS_SAFETY) + ((1.875, -1.25, 0.375),),
        norm_margin=_POLAR_EXPRESS_SAFETY,
    ),
}


def get_coefficient_set(spec: str | CoefficientSet) -> CoefficientSet:
    """Look a coefficient set up by name (or pass a ``CoefficientSet`` through)."""
    if isinstance(spec, CoefficientSet):
        return spec
    try:
        return COEFFICIENT_SETS[spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown ns_coefficients {spec!r}; valid: {sorted(COEFFICIENT_SETS)} or a CoefficientSet"
        ) from None


def ns_flops(m: int, n: int, steps: int, method: str, coefficients: str | CoefficientSet = "jordan") -> int:
    """Matmul FLOPs of one orthogonalization of a wide ``m × n`` matrix (``m ≤ n``).

    standard: ``steps · (2·m·m·n [XXᵀ] + 2m³ [A²] + 2·m·m·n [BX])``.
    gram (segments from ``coefficients``): ``2m²n`` per (re)start to form ``A``, ``2m²n`` per restart and at the
    end to apply
    ``Q``, and per step ``2m³`` for ``A²`` plus ``2m³`` for ``Q ← PQ`` (not on a segment's first
    step, where ``Q = P``) plus ``4m³`` for ``A ← P(PA)`` (not on a segment's last step).
    """
    if m > n:
        m, n = n, m
    if method == "standard":
        return steps * (4 * m * m * n + 2 * m**3)
    if method == "gram":
        total = 0
        for seg in get_coefficient_set(coefficients).gram_segments(steps):
            cube_products = seg + (seg - 1) + 2 * (seg - 1)
            total += 4 * m * m * n + 2 * m**3 * cube_products
        return total
    raise ValueError(f"ns_flops knows methods 'standard' and 'gram', got {method!r}")


def choose_method(method: str, m: int, n: int, steps: int, dtype: torch.dtype,
                  coefficients: str | CoefficientSet = "jordan") -> str:
    """The form that runs for a wide ``m × n`` matrix: ``"gram"`` only where safe (see above)."""
    if method in ("standard", "svd"):
        return method
    if dtype in (torch.bfloat16, torch.float16) and m < GRAM_MIN_ROWS_HALF:
        return "standard"
    if method == "gram":
        return "gram"
    gram = ns_flops(m, n, steps, "gram", coefficients)
    return "gram" if gram < ns_flops(m, n, steps, "standard") else "standard"


def _small_gram(X: torch.Tensor) -> torch.Tensor:
    # The Gram matrix on the small side: XXᵀ for a wide [batch, m, n] X, XᵀX for a tall one.
    return torch.bmm(X, X.mT) if X.shape[-2] <= X.shape[-1] else torch.bmm(X.mT, X)


def _apply(M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    # M·X for a wide X, X·M for a tall one; M is a symmetric polynomial in the small Gram matrix,
    # so both are the same iteration written for either orientation, and nothing is transposed.
    return torch.bmm(M, X) if X.shape[-2] <= X.shape[-1] else torch.bmm(X, M)


def _scale(A: torch.Tensor, inv: torch.Tensor | None, power: int) -> torch.Tensor:
    return A if inv is None else A.mul_(inv**power)


def _standard(X: torch.Tensor, gram: torch.Tensor | None, inv: torch.Tensor | None, schedule) -> torch.Tensor:
    # X: [batch, r, c], *not* normalised; gram: its small Gram matrix (or None); inv: [batch, 1, 1]
    # = 1 / (margin·‖X‖_F + eps), or None when X is already normalised. The normalisation
    # X₀ = inv·X is folded into the first step: A₀ = inv²·XXᵀ, X₁ = inv·(aX + B₀X). aX + BX is one
    # fused call (the aX term is added before rounding, which keeps bf16 as accurate as the
    # textbook form; forming aI + B first would round the cancelling sum twice).
    for a, b, c in schedule:
        A = _scale(gram if gram is not None else _small_gram(X), inv, 2)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # bA + cA²
        X = torch.baddbmm(X, B, X, beta=a) if X.shape[-2] <= X.shape[-1] else torch.baddbmm(X, X, B, beta=a)
        X = _scale(X, inv, 1)
        gram = inv = None
    return X


def _gram(X: torch.Tensor, gram: torch.Tensor, inv: torch.Tensor | None, schedule, segments: list[int]) -> torch.Tensor:
    # X, gram, inv as in _standard. The iteration runs on the small Gram matrix and applies the
    # accumulated polynomial Q to X at the end of each segment (see the module docstring).
    start = 0
    for length in segments:
        segment, start = schedule[start : start + length], start + length
        A = _scale(gram if gram is not None else _small_gram(X), inv, 2)
        gram = None
        Q = None
        for k, (a, b, c) in enumerate(segment):
            P = torch.baddbmm(A, A, A, beta=b, alpha=c)
            P.diagonal(dim1=-2, dim2=-1).add_(a)  # P = aI + bA + cA²
            Q = P if Q is None else torch.bmm(P, Q)
            if k < len(segment) - 1:
                A = torch.bmm(P, torch.bmm(P, A))
        X = _apply(_scale(Q, inv, 1), X)
        inv = None
    return X


def _polar_svd(X: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def orthogonalize(
    G: torch.Tensor,
    coefficients: str | CoefficientSet = "jordan",
    steps: int = 5,
    dtype: torch.dtype = torch.bfloat16,
    eps: float = 1e-7,
    method: str = "auto",
) -> torch.Tensor:
    """Approximate the polar factor ``U Vᵀ`` of each matrix in ``G``.

    Args:
        G: ``[..., A, B]``; leading dims are a batch of independent matrices (e.g. the experts of
            a stacked ``[E, A, B]`` parameter). The iteration always works with the Gram matrix
            of the smaller side (``XXᵀ`` when wide, ``XᵀX`` when tall), without transposing.
        coefficients: a name in ``COEFFICIENT_SETS`` or a ``CoefficientSet``.
        steps: number of Newton–Schulz iterations.
        dtype: compute dtype (bf16 by default, as in both papers; fp32/fp64 for accuracy).
        eps: added to the Frobenius norm so a zero matrix maps to zero instead of NaN.
        method: ``"auto"``, ``"standard"``, ``"gram"`` or ``"svd"`` (exact polar factor, in fp64
            when ``dtype`` is fp64 else fp32).

    Returns:
        A tensor of ``G``'s shape in ``dtype`` (``"svd"``: fp32 or fp64).
    """
    if G.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    if method not in NS_METHODS:
        raise ValueError(f"unknown Newton–Schulz method {method!r}; valid: {list(NS_METHODS)}")
    cset = get_coefficient_set(coefficients)
    if method != "svd" and dtype not in cset.safe_dtypes:
        raise ValueError(
            f"coefficient set {cset.name!r} is not numerically safe in {dtype}; "
            f"use one of {[str(d) for d in cset.safe_dtypes]} or the 'jordan' set"
        )
    schedule = cset.schedule(steps)
    batch_shape, (rows, cols) = G.shape[:-2], G.shape[-2:]
    X = G.reshape(-1, rows, cols)
    if method == "svd":
        svd_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        X = _polar_svd(X.to(svd_dtype))
    else:
        X = X.to(dtype)
        if dtype == torch.float16:  # the Gram matrix of an unnormalised X can exceed fp16's range
            norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True, dtype=torch.float32)
            X, gram, inv = X * (1.0 / (norm * cset.norm_margin + eps)).to(dtype), None, None
        else:  # ‖X‖_F² = trace of the first Gram matrix, which the iteration needs anyway
            gram = _small_gram(X)
            norm_sq = gram.diagonal(dim1=-2, dim2=-1).sum(-1, dtype=torch.promote_types(dtype, torch.float32))
            inv = (1.0 / (norm_sq.sqrt() * cset.norm_margin + eps))[:, None, None]  # kept at ≥ fp32
        m, n = min(rows, cols), max(rows, cols)
        chosen = choose_method(method, m, n, steps, dtype, cset)
        if chosen == "gram":
            X = _gram(X, gram, inv, schedule, cset.gram_segments(steps))
        else:
            X = _standard(X, gram, inv, schedule)
    return X.reshape(*batch_shape, rows, cols)
