"""Where each rank's piece of each parameter lies on a device mesh, and the units that assemble
every Muon matrix whole on one owner.

A DTensor on any mesh — FSDP2's ``Shard(0)``, tensor parallelism's ``Shard(0)`` (column-wise) or
``Shard(1)`` (row-wise), both on a 2-D mesh (FSDP2 over TP gives ``(_StridedShard(0), Shard(0))``
or ``(Shard(0), Shard(1))``), ``Replicate`` on some mesh dims — holds on each rank one
:class:`Box` of the logical tensor: a global offset and a local shape (torch's own
``compute_local_shape_and_global_offset``, the arithmetic DCP uses). A plain tensor next to
DTensors is a replica: its box is the whole tensor. Every rank learns every rank's boxes once
(:func:`gather_boxes`, one object all-gather), so the plan below needs no assumption about the
placements: it is read off the boxes.

:func:`sharded_units` turns the boxes of the Muon parameters into owner-compute units
(:mod:`.owners`):

- a matrix ``[rows, cols]`` (2-D, or a conv weight viewed ``(out, -1)``) is one unit; rank r
  contributes its :class:`~.owners.Block` (each distinct block by one holder: the owner if it
  holds it, else the lowest rank), and every holder gets its block of the result back. Owners are
  balanced by Newton–Schulz cost with :func:`~.owners.lpt_assign`, so each matrix is
  orthogonalized exactly once, on one rank;
- with ``regions`` narrower than the matrix each region is a unit of its own shape (its key's
  ``region``): a union of whole per-head blocks orthogonalized where it lies (exact), or under
  ``tp_mode="blockwise"`` a tensor-parallel block (Megatron-LM's approximation). A region some
  rank holds whole is owned by that rank (the least loaded of them), so none of it travels;
  the other units' owners are balanced around that load;
- an expert stack ``[E, A, B]`` must be split on E only; each run of experts is orthogonalized on
  one rank that holds it whole (no communication) and sent only to other holders (replicas).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .layouts import MatrixParam, UnitOf
from .owners import EMPTY_BLOCK, Block, Range, Unit, lpt_assign

__all__ = ["Box", "gather_boxes", "held_piece", "local_box", "sharded_units", "tiles"]


class Box(NamedTuple):
    """The part of a tensor one rank holds: ``offset`` (global index of its first element) and ``shape``."""

    offset: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def local_box(p: torch.Tensor, only_dims: Sequence[str] | None = None) -> Box:
    """This rank's box of ``p``; with ``only_dims``, the box it would hold if ``p`` were sharded on
    the mesh dims of those names only (the others replicated) — e.g. its tensor-parallel block."""
    from torch.distributed.tensor import DTensor, Replicate
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(p, DTensor):
        return Box((0,) * p.ndim, tuple(p.shape))
    placements = list(p.placements)
    if only_dims is not None:
        names = p.device_mesh.mesh_dim_names or ()
        placements = [pl if i < len(names) and names[i] in only_dims else Replicate()
                      for i, pl in enumerate(placements)]
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, placements)
    return Box(tuple(int(o) for o in offset), tuple(int(s) for s in shape))


def gather_boxes(params: Sequence[torch.Tensor], only_dims: Sequence[Sequence[str] | None], group):
    """``(boxes, blocks)``: ``boxes[k][r]`` is rank r's box of ``params[k]``, ``blocks[k][r]`` its
    box under ``only_dims[k]`` (:func:`local_box`); one object all-gather over ``group``."""
    import torch.distributed as dist

    mine = [(local_box(p), local_box(p, dims) if dims is not None else None) for p, dims in zip(params, only_dims)]
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    boxes = [[everyone[r][k][0] for r in range(len(everyone))] for k in range(len(params))]
    blocks = [[everyone[r][k][1] for r in range(len(everyone))] for k in range(len(params))]
    return boxes, blocks


def tiles(shape: Sequence[int], boxes: Sequence[Box]) -> bool:
    """Whether the distinct non-empty ``boxes`` cover a tensor of ``shape`` exactly once."""
    distinct = sorted({b for b in boxes if b.numel})
    inside = all(0 <= o and o + s <= n for b in distinct for o, s, n in zip(b.offset, b.shape, shape))
    disjoint = not any(all(max(o1, o2) < min(o1 + s1, o2 + s2)
                           for o1, s1, o2, s2 in zip(a.offset, a.shape, b.offset, b.shape))
                       for i, a in enumerate(distinct) for b in distinct[i + 1 :])
    return inside and disjoint and sum(b.numel for b in distinct) == math.prod(shape)


def held_piece(shape: Sequence[int], box: Box, stacked: bool) -> Block | Range | None:
    """What ``box`` is of a Muon parameter of ``shape``: a :class:`~.owners.Block` of its matrix
    (a conv weight ``(out, in, …)`` as ``(out, -1)``), or for an expert stack the expert range;
    None if empty. Raises ``ValueError`` for a box that cuts a dim the matrix view cannot follow."""
    if not box.numel:
        return None
    full = [o == 0 and s == n for o, s, n in zip(box.offset, box.shape, shape)]
    if stacked:
        if not all(full[1:]):
            raise ValueError(f"an expert stack of shape {tuple(shape)} is split inside its experts (local box "
                             f"{box.shape} at {box.offset}); shard expert stacks on the expert dim only")
        return (box.offset[0], box.offset[0] + box.shape[0])
    if len(shape) > 2 and not all(full[1:]):
        raise ValueError(f"a weight of shape {tuple(shape)} is split on a dim after the first (local box "
                         f"{box.shape} at {box.offset}); Muon views it as (out, -1) and needs whole rows")
    cols = (box.offset[1], box.offset[1] + box.shape[1]) if len(shape) == 2 else (0, math.prod(shape[1:]))
    return Block((box.offset[0], box.offset[0] + box.shape[0]), cols)


def _only(rank: int, world_size: int, n: int) -> tuple[Range, ...]:
    return tuple((0, n) if r == rank else (0, 0) for r in range(world_size))


def _expert_runs(held: Sequence[Range | None]) -> list[tuple[Range, list[int]]]:
    """The stack's expert axis cut at every holder's boundary: ``((first, end), holders)`` per run."""
    edges = sorted({e for h in held if h is not None for e in h})
    runs = []
    for lo, hi in zip(edges, edges[1:]):
        holders = [r for r, h in enumerate(held) if h is not None and h[0] <= lo and hi <= h[1]]
        if holders:
            runs.append(((lo, hi), holders))
    return runs


def _corner(block: Block) -> tuple[Range, Range]:
    return block.rows, block.cols


def _relative(block: Block, region: Block) -> Block:
    return Block((block.rows[0] - region.rows[0], block.rows[1] - region.rows[0]),
                 (block.cols[0] - region.cols[0], block.cols[1] - region.cols[0]))


def _region_cost(m: MatrixParam, region: Block) -> float:
    """Newton–Schulz cost of a region, scaled from the whole matrix's (∝ min² · max)."""
    def shape_cost(a: int, b: int) -> float:
        return min(a, b) ** 2 * max(a, b)

    rows, cols = region.rows[1] - region.rows[0], region.cols[1] - region.cols[0]
    return m.cost * shape_cost(rows, cols) / shape_cost(m.rows, m.cols)


def _local_owner(m: MatrixParam, pieces, region: Block, holders: list[int], loads: list[float]) -> int | None:
    """The owner of a region narrower than its matrix that some rank holds whole (a tensor-parallel rank's whole
    heads): the least-loaded such rank, so the region is orthogonalized where it lies and nothing travels to it
    (its cost is added to ``loads``); None for any other region (owners balanced by cost)."""
    whole = [r for r in holders if pieces[r] == region]
    if not whole or (region.rows, region.cols) == ((0, m.rows), (0, m.cols)):
        return None
    owner = min(whole, key=lambda r: (loads[r], r))
    loads[owner] += _region_cost(m, region)
    return owner


def sharded_units(mats: Sequence[MatrixParam], held: Sequence[Sequence[Block | Range | None]],
                  regions: Sequence[Sequence[Block | None]], world_size: int) -> tuple[list[Unit], list[UnitOf]]:
    """Units for parameters held in pieces (module docstring).

    Args:
        mats: the Muon parameters.
        held: per parameter, per rank, :func:`held_piece` of its box.
        regions: per parameter, per rank, the matrix region its piece belongs to (the whole
            matrix, or its tensor-parallel block under ``blockwise``); ignored for stacks.
        world_size: number of ranks.
    """
    units, where, loads = [], [], [0.0] * world_size
    free = []
    for m, pieces, areas in zip(mats, held, regions):
        if any(isinstance(p, tuple) for p in pieces):  # expert ranges of a stack
            for (first, end), holders in _expert_runs(pieces):
                owner = min(holders, key=lambda r: (loads[r], r))
                n = (end - first) * m.matrix_numel
                outputs = tuple((0, n) if r in holders else (0, 0) for r in range(world_size))
                units.append(Unit(m.key, end - first, m.rows, m.cols, owner, _only(owner, world_size, n), outputs))
                where.append(UnitOf(m.index, first))
                loads[owner] += (end - first) * m.cost
            continue
        for region in sorted({a for a, p in zip(areas, pieces) if p is not None}, key=_corner):
            holders = [r for r in range(world_size) if pieces[r] is not None and areas[r] == region]
            free.append((m, pieces, region, holders))
    local = [_local_owner(m, pieces, region, holders, loads) for m, pieces, region, holders in free]
    rest = [item for item, owner in zip(free, local) if owner is None]
    spread = iter(lpt_assign([_region_cost(m, region) for m, _, region, _ in rest], world_size, loads))
    owners = [owner if owner is not None else next(spread) for owner in local]
    for (m, pieces, region, holders), owner in zip(free, owners):
        inputs, outputs = [EMPTY_BLOCK] * world_size, [EMPTY_BLOCK] * world_size
        for block in sorted({pieces[r] for r in holders}, key=_corner):
            have = [r for r in holders if pieces[r] == block]
            inputs[owner if owner in have else have[0]] = _relative(block, region)
        for r in holders:
            outputs[r] = _relative(pieces[r], region)
        rows, cols = region.rows[1] - region.rows[0], region.cols[1] - region.cols[0]
        key = m.key if (rows, cols) == (m.rows, m.cols) else m.key.region(region.rows, region.cols)
        units.append(Unit(key, 1, rows, cols, owner, tuple(inputs), tuple(outputs)))
        where.append(UnitOf(m.index, 0, (region.rows[0], region.cols[0])))
    return units, where
