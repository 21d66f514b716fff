"""Where each Muon matrix lives, and who orthogonalizes it, for each data-parallel layout.

Pure functions of shapes and the world size (no communication), so every rank builds the same
plan. A Muon parameter is ``batch`` matrices of ``[rows, cols]`` (``batch`` = E for an expert
stack ``[E, A, B]``, 1 otherwise), row-major; owners are chosen by Newton–Schulz cost with
:func:`~muonlab.optim.distributed.owners.lpt_assign`.

- :func:`replicated_units` (one process, DDP): every rank holds every matrix; the matrices are
  split among owners, whose results all ranks receive.
- DTensors on any mesh (FSDP2, tensor parallelism, both): :mod:`.shards` — each rank's box is read
  off the DTensor; a matrix's blocks travel to one owner and back, whole experts stay where they
  are. :func:`chunk_rows` is FSDP2's ``Shard(0)`` row split (``torch.chunk``).
- :class:`Zero1Layout` (ZeRO-1): one flat buffer of every parameter the optimizer updates,
  ``world_size`` equal chunks, chunk r being rank r's optimizer partition. Matrices are assigned
  to ranks whole (largest first, balanced) and laid out in their owner's chunk, and AdamW
  parameters (element-wise, free to split anywhere) fill each chunk up to its end. So a matrix is
  split by a chunk boundary only when its owner's matrices overflow the chunk; only such a
  matrix needs Algorithm 1's "DP gather", and only towards its owner.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .owners import Unit, lpt_assign

__all__ = ["MatrixParam", "Segment", "Zero1Layout", "chunk_rows", "replicated_units"]


@dataclass(frozen=True)
class MatrixParam:
    """A Muon parameter as the layouts see it.

    Attributes:
        index: position in the optimizer's parameter list (groups in order, then params).
        key: bucket key for its matrices.
        batch, rows, cols: the parameter is ``batch`` row-major ``[rows, cols]`` matrices.
        cost: Newton–Schulz FLOPs of one matrix.
    """

    index: int
    key: Hashable
    batch: int
    rows: int
    cols: int
    cost: float

    @property
    def matrix_numel(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class UnitOf:
    """Which matrices of which parameter a unit holds: ``param`` matrices ``[first, first + batch)``;
    ``origin``: the stored (row, column) where the unit's region starts (``(0, 0)``: whole matrices)."""

    param: int
    first: int
    origin: tuple[int, int] = (0, 0)


def _only(rank: int, world_size: int, n: int) -> tuple[tuple[int, int], ...]:
    return tuple((0, n) if r == rank else (0, 0) for r in range(world_size))


def _runs(mats: Sequence[MatrixParam], owners: Sequence[int]):
    """Each rank's matrices of each parameter as one contiguous run: ``(param, first, count, owner)``.

    ``owners`` has one entry per matrix (parameters in order, then their matrices). The matrices
    of one parameter cost the same, so giving each rank a contiguous block of as many of them as
    it was assigned keeps every rank's load and makes one batched unit per (parameter, rank).
    """
    runs, k = [], 0
    for m in mats:
        first = 0
        for rank in sorted(set(owners[k : k + m.batch])):
            count = owners[k : k + m.batch].count(rank)
            runs.append((m, first, count, rank))
            first += count
        k += m.batch
    return runs


def replicated_units(mats: Sequence[MatrixParam], world_size: int) -> tuple[list[Unit], list[UnitOf]]:
    """Units for replicated parameters: each owner computes its matrices, every rank gets all results."""
    owners = lpt_assign([m.cost for m in mats for _ in range(m.batch)], world_size)
    units, where = [], []
    for m, first, count, owner in _runs(mats, owners):
        n = count * m.matrix_numel
        units.append(Unit(m.key, count, m.rows, m.cols, owner, _only(owner, world_size, n),
                          tuple((0, n) for _ in range(world_size))))
        where.append(UnitOf(m.index, first))
    return units, where


def chunk_rows(size: int, world_size: int) -> list[tuple[int, int]]:
    """``(offset, count)`` of dim 0 on each rank, as ``torch.chunk`` (and FSDP2's ``Shard(0)``) splits it."""
    per = math.ceil(size / world_size) if size else 0
    return [(min(r * per, size), max(0, min(per, size - r * per))) for r in range(world_size)]


@dataclass(frozen=True)
class Segment:
    """A contiguous flat range ``[lo, hi)`` of parameter ``param``, stored at ``flat`` in the buffer.

    ``unit`` is the Muon unit it is (one segment per unit), or None for an AdamW range.
    """

    param: int
    lo: int
    hi: int
    flat: int
    unit: int | None

    @property
    def numel(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class Piece:
    """The part of a segment inside one rank's chunk: chunk range ``[start, start + hi − lo)``."""

    segment: Segment
    lo: int  # within the parameter
    hi: int
    start: int  # within the chunk

    @property
    def numel(self) -> int:
        return self.hi - self.lo


class Zero1Layout:
    """The flat ZeRO-1 partition of Muon matrices and AdamW parameters over ``world_size`` ranks.

    Args:
        mats: the Muon parameters.
        adamw: ``(index, numel)`` of each AdamW parameter.
        world_size: number of ranks.

    Attributes:
        chunk: elements per rank; the buffer has ``world_size · chunk`` elements (the last few
            may be padding).
        segments: every parameter range, in flat order.
        units, where: the Muon units and which matrices each holds (inputs = outputs = each
            rank's part of the unit's range).

    Rank r's chunk holds its own matrices ``L_r`` plus ``chunk − L_r`` AdamW elements, so its
    state is ``L_r`` momentum + ``2·(chunk − L_r)`` AdamW moments; with owners balanced within one
    largest matrix, that is at most ``1/N`` of the whole state plus one largest matrix.
    """

    def __init__(self, mats: Sequence[MatrixParam], adamw: Sequence[tuple[int, int]], world_size: int) -> None:
        self.world_size = world_size
        owners = lpt_assign([m.cost for m in mats for _ in range(m.batch)], world_size)
        runs_by_rank: list[list] = [[] for _ in range(world_size)]
        for run in _runs(mats, owners):
            runs_by_rank[run[3]].append(run)
        total = sum(m.batch * m.matrix_numel for m in mats) + sum(n for _, n in adamw)
        self.chunk = C = max(1, math.ceil(total / world_size))
        self.total = total

        segments: list[Segment] = []
        self.units: list[Unit] = []
        self.where: list[UnitOf] = []
        stream = [(index, 0, n) for index, n in adamw if n]  # AdamW ranges not yet placed
        cursor = 0

        def place_adamw(room: int) -> int:
            nonlocal cursor
            while room > 0 and stream:
                index, lo, n = stream[0]
                take = min(room, n - lo)
                segments.append(Segment(index, lo, lo + take, cursor, None))
                cursor += take
                room -= take
                stream[0] = (index, lo + take, n)
                if lo + take == n:
                    stream.pop(0)
            return cursor

        pending_units = []
        for rank in range(world_size):
            for m, first, count, owner in runs_by_rank[rank]:
                n = count * m.matrix_numel
                pending_units.append((m, first, count, owner, cursor, n))
                segments.append(Segment(m.index, first * m.matrix_numel, (first + count) * m.matrix_numel, cursor,
                                        len(pending_units) - 1))
                cursor += n
            place_adamw((rank + 1) * C - cursor)
        place_adamw(world_size * C - cursor)
        self.segments = segments

        for m, first, count, owner, start, n in pending_units:
            ranges = []
            for r in range(world_size):
                lo, hi = max(start, r * C), min(start + n, (r + 1) * C)
                ranges.append((lo - start, hi - start) if hi > lo else (0, 0))
            self.units.append(Unit(m.key, count, m.rows, m.cols, owner, tuple(ranges), tuple(ranges)))
            self.where.append(UnitOf(m.index, first))

    def pieces(self, rank: int) -> list[Piece]:
        """The parts of every segment inside ``rank``'s chunk, in chunk order."""
        lo_flat, hi_flat = rank * self.chunk, (rank + 1) * self.chunk
        out = []
        for seg in self.segments:
            a, b = max(seg.flat, lo_flat), min(seg.flat + seg.numel, hi_flat)
            if b > a:
                out.append(Piece(seg, seg.lo + a - seg.flat, seg.lo + b - seg.flat, a - lo_flat))
        return out
