"""Blocks: a logical matrix ``[out, in]`` orthogonalized as a grid of smaller matrices.

Per-head orthogonalization (Kimi K3, arXiv 2607.24653 §2.5 "Per-Head Muon"; GLM-5's "Muon Split",
arXiv 2602.15763) replaces ``NS(M)`` of a projection by ``NS`` of each head's block of ``M``:

- row blocks: a q/k/v projection ``[heads·head_dim, d]`` is ``heads`` blocks ``[head_dim, d]``; a
  fused QKV under grouped-query attention splits unequally (``q`` rows, then ``k``, then ``v``),
  per head into equal ``head_dim`` blocks; MLA's up-projections per head likewise;
- column blocks: an output projection ``[d, heads·head_dim]`` is ``heads`` blocks ``[d, head_dim]``;
- both: the grid of row blocks × column blocks.

Each block is orthogonalized, normalized (NorMuon) and scaled by its *own* shape, so the update
RMS stays at the target (with ``0.2·sqrt(max(A, B))`` per block; a scale on the whole matrix's
shape would give each block a ``1/sqrt(heads)``-times smaller update). A parameter group states
its blocks with ``"blocks"`` (row blocks: an int ``n`` for ``n`` equal blocks, or a list of
sizes) and ``"col_blocks"`` (likewise for columns). :class:`Blocks` is the normalized form,
hashable (it is part of a Newton–Schulz bucket key) and pure: no communication, no state.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Blocks", "parse_blocks"]


def _sizes(spec, total: int, what: str) -> tuple[int, ...]:
    """``spec`` (an int count of equal blocks, or a list of sizes) as the tuple of sizes of ``total``."""
    if isinstance(spec, bool):
        raise ValueError(f"{what}={spec!r} must be a positive integer or a list of positive sizes")
    if isinstance(spec, int):
        if spec < 1 or total % spec:
            raise ValueError(f"{what}={spec!r} must be a positive integer dividing {total}")
        return (total // spec,) * spec
    sizes = tuple(spec) if isinstance(spec, (list, tuple)) else None
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"{what}={spec!r} must be a positive integer or a list of positive sizes")
    if sum(sizes) != total:
        raise ValueError(f"{what}={list(sizes)} must add up to {total}, the matrix's size on that side")
    return sizes


def parse_blocks(out_features: int, in_features: int, rows=1, cols=1) -> Blocks:
    """The :class:`Blocks` of a logical ``[out_features, in_features]`` matrix from a group's
    ``"blocks"`` (row) and ``"col_blocks"`` (column) specs; ``ValueError`` names a bad one."""
    return Blocks(_sizes(rows, out_features, "blocks"), _sizes(cols, in_features, "col_blocks"))


def _edges(sizes: Sequence[int]) -> list[int]:
    edges = [0]
    for s in sizes:
        edges.append(edges[-1] + s)
    return edges


@dataclass(frozen=True)
class Blocks:
    """Row sizes and column sizes of the block grid of one logical matrix ``[Σ rows, Σ cols]``."""

    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def whole(cls, out_features: int, in_features: int) -> Blocks:
        return cls((out_features,), (in_features,))

    @property
    def shape(self) -> tuple[int, int]:
        """The whole logical matrix ``[out, in]``."""
        return sum(self.rows), sum(self.cols)

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def uniform(self) -> tuple[int, int] | None:
        """The one block shape, if every block has it (then the scale is one number per matrix)."""
        if len(set(self.rows)) == 1 and len(set(self.cols)) == 1:
            return self.rows[0], self.cols[0]
        return None

    def grid(self) -> list[tuple[int, int, tuple[int, int], tuple[int, int]]]:
        """Every block as ``(i, j, (row0, row1), (col0, col1))``, row-major over the grid."""
        re, ce = _edges(self.rows), _edges(self.cols)
        return [(i, j, (re[i], re[i + 1]), (ce[j], ce[j + 1]))
                for i in range(len(self.rows)) for j in range(len(self.cols))]

    def shapes(self) -> list[tuple[int, int]]:
        """The distinct block shapes, in order of first appearance in :meth:`grid`."""
        seen: list[tuple[int, int]] = []
        for _, _, r, c in self.grid():
            shape = (r[1] - r[0], c[1] - c[0])
            if shape not in seen:
                seen.append(shape)
        return seen

    def restrict(self, rows: tuple[int, int], cols: tuple[int, int]) -> Blocks | None:
        """The blocks inside the region ``rows × cols`` of the logical matrix, if the region is a
        union of whole blocks (its edges fall on block edges); otherwise None."""
        re, ce = _edges(self.rows), _edges(self.cols)
        if not (rows[0] in re and rows[1] in re and cols[0] in ce and cols[1] in ce):
            return None
        return Blocks(tuple(self.rows[re.index(rows[0]) : re.index(rows[1])]),
                      tuple(self.cols[ce.index(cols[0]) : ce.index(cols[1])]))

    def split(self, X: torch.Tensor) -> list[torch.Tensor]:
        """A batch ``[N, out, in]`` as one batch per distinct block shape (:meth:`shapes`), each
        ``[N·count, r, c]`` with matrix ``n``'s blocks in :meth:`grid` order, matrix after matrix.
        Equal row blocks are a view (one reshape); anything else is a copy."""
        N = X.shape[0]
        uniform = self.uniform
        if uniform is not None and len(self.cols) == 1:
            return [X.reshape(N * len(self.rows), *uniform)]
        if uniform is not None:
            r, c = uniform
            return [X.reshape(N, len(self.rows), r, len(self.cols), c).transpose(2, 3).reshape(-1, r, c)]
        parts = []
        for shape in self.shapes():
            pieces = [X[:, r[0] : r[1], c[0] : c[1]] for _, _, r, c in self.grid()
                      if (r[1] - r[0], c[1] - c[0]) == shape]
            parts.append(torch.stack(pieces, dim=1).reshape(-1, *shape))
        return parts

    def merge(self, parts: list[torch.Tensor], N: int) -> torch.Tensor:
        """The inverse of :meth:`split`: ``[N, out, in]``."""
        out_features, in_features = self.shape
        uniform = self.uniform
        if uniform is not None and len(self.cols) == 1:
            return parts[0].reshape(N, out_features, in_features)
        if uniform is not None:
            r, c = uniform
            return parts[0].reshape(N, len(self.rows), len(self.cols), r, c).transpose(2, 3).reshape(
                N, out_features, in_features)
        X = parts[0].new_empty(N, out_features, in_features)
        for shape, part in zip(self.shapes(), parts):
            where = [(r, c) for _, _, r, c in self.grid() if (r[1] - r[0], c[1] - c[0]) == shape]
            part = part.reshape(N, len(where), *shape)
            for b, (r, c) in enumerate(where):
                X[:, r[0] : r[1], c[0] : c[1]] = part[:, b]
        return X

    def row_index(self, row_offset: int = 0, col_block_offset: int = 0, out_features: int | None = None
                  ) -> list[torch.Tensor]:
        """Per distinct shape (:meth:`shapes`), where each block row lives in a NorMuon row state of one
        matrix, flattened ``[column blocks · out]`` (column block ``j``'s row ``i`` at ``j·out + i``),
        as ``[count, r]`` in the order of :meth:`split`. For blocks restricted to a region
        (:meth:`restrict`) of a larger matrix, pass the region's first row, its first column
        block's index and the larger matrix's ``out``."""
        out_features = self.shape[0] if out_features is None else out_features
        index = []
        for shape in self.shapes():
            rows = [torch.arange(r[0], r[1]) + row_offset + (j + col_block_offset) * out_features
                    for _, j, r, c in self.grid() if (r[1] - r[0], c[1] - c[0]) == shape]
            index.append(torch.stack(rows))
        return index

    def col_block_of(self, col: int) -> int:
        """The index of the column block that holds column ``col`` (a region of whole blocks starts at
        its edge; one that cuts a block — ``tp_mode="blockwise"``'s approximation — keeps its rows in
        the block it starts in)."""
        if not 0 <= col < self.shape[1]:
            raise ValueError(f"column {col} lies outside the matrix's {self.shape[1]} columns")
        return bisect.bisect_right(_edges(self.cols), col) - 1
