"""Owner-compute: each matrix is orthogonalized once, on one rank, and only pieces move.

Newton–Schulz needs a whole matrix, but in every parallel layout a rank holds only part of the
optimizer's view of it: a row block (FSDP2 ``Shard(0)``), a column block (tensor parallelism's
row-wise ``Shard(1)``), a rectangle (both on a 2-D mesh), a flat range of a partition (ZeRO-1),
or the whole matrix with the work to be split (DDP). A :class:`Unit` says, for one batch of
same-shape matrices ``[batch, rows, cols]`` (row-major, flattened), which region each rank
contributes (``inputs``), which rank computes (``owner``) and which region of the result each
rank needs back (``outputs``). A region is a flat range ``(lo, hi)`` or a :class:`Block` of rows
and columns of every matrix; pieces travel flattened row-major. :class:`OwnerCompute` runs a
matrix function over all units:

1. every rank sends its input pieces of units it does not own to their owners (one all-to-all
   per bucket of same-key units, in the exchange dtype — bf16 for bf16 Newton–Schulz, as
   Moonlight communicates, arXiv 2502.16982 §2.3);
2. each owner assembles its units and runs the function once per bucket, batched;
3. owners send the result pieces back (a second all-to-all per bucket).

Buckets run largest matrix first, and every exchange is asynchronous: while bucket k is being
orthogonalized, bucket k+1's pieces are already arriving and bucket k−1's results leaving. A
bucket in which nothing crosses ranks (whole matrices on their owner) issues no collective; on
one process nothing is ever sent. This is the all-to-all design Essential AI describe for FSDP
(arXiv 2505.02222 infra note; microsoft/dion ``muon_update_batch_async``), generalised to uneven
pieces and to any owner.

Owners are chosen by :func:`lpt_assign` (Graham's longest-processing-time-first list
scheduling): the busiest rank's Newton–Schulz FLOPs are at most the mean plus one largest
matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from .collectives import all_to_all_uneven

__all__ = ["Block", "OwnerCompute", "Unit", "lpt_assign"]

Range = tuple[int, int]


@dataclass(frozen=True)
class Block:
    """Rows ``[rows[0], rows[1])`` and columns ``[cols[0], cols[1])`` of every matrix of a unit."""

    rows: Range
    cols: Range

    @property
    def area(self) -> int:
        return max(0, self.rows[1] - self.rows[0]) * max(0, self.cols[1] - self.cols[0])


EMPTY_BLOCK = Block((0, 0), (0, 0))


@dataclass(frozen=True)
class Unit:
    """A batch of same-shape matrices that one rank orthogonalizes.

    Attributes:
        key: bucket key; units with equal keys are computed in one batched call (same shape,
            same Newton–Schulz settings, same exchange dtypes).
        batch, rows, cols: the unit is ``[batch, rows, cols]``, flattened row-major.
        owner: the rank that assembles the unit and runs the function.
        inputs: per rank, the region (flat range ``[lo, hi)`` or :class:`Block`) it contributes;
            the non-empty regions partition the unit.
        outputs: per rank, the region of the result it needs (may be empty).
    """

    key: Hashable
    batch: int
    rows: int
    cols: int
    owner: int
    inputs: tuple[Range, ...]
    outputs: tuple[Range, ...]

    @property
    def numel(self) -> int:
        return self.batch * self.rows * self.cols

    def size(self, region: Range | Block) -> int:
        """Elements of ``region`` (over every matrix of the unit)."""
        return self.batch * region.area if isinstance(region, Block) else max(0, region[1] - region[0])

    def view(self, flat: torch.Tensor, region: Range | Block) -> torch.Tensor:
        """``region`` of the unit's flat tensor ``flat`` (``numel`` elements), as a view."""
        if isinstance(region, Block):
            return flat.view(self.batch, self.rows, self.cols)[:, slice(*region.rows), slice(*region.cols)]
        return flat[region[0] : region[1]]

    def tiled(self) -> bool:
        """Whether the non-empty ``inputs`` tile the unit without gaps or overlaps."""
        regions = [r for r in self.inputs if self.size(r)]
        if all(isinstance(r, Block) for r in regions):
            overlap = any(_overlap(a.rows, b.rows) and _overlap(a.cols, b.cols)
                          for i, a in enumerate(regions) for b in regions[i + 1 :])
            inside = all(0 <= r.rows[0] and r.rows[1] <= self.rows and 0 <= r.cols[0] and r.cols[1] <= self.cols
                         for r in regions)
            return inside and not overlap and sum(self.size(r) for r in regions) == self.numel
        if any(isinstance(r, Block) for r in regions):
            return False
        return _partitions(regions, self.numel)


def _overlap(a: Range, b: Range) -> bool:
    return max(a[0], b[0]) < min(a[1], b[1])


def lpt_assign(costs: Sequence[float], world_size: int, loads: Sequence[float] | None = None) -> list[int]:
    """Owner rank of each item: largest cost first, each to the least-loaded rank (ties: lowest rank).

    ``loads`` are work already fixed on each rank. Deterministic, so every rank computes the same
    assignment from the same inputs. Bound (Graham 1969): max load ≤ mean load + max cost.
    """
    load = list(loads) if loads is not None else [0.0] * world_size
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners


def _length(r: Range) -> int:
    return r[1] - r[0]


def _partitions(ranges: Sequence[Range], n: int) -> bool:
    """Whether the non-empty ``ranges`` tile ``[0, n)`` without gaps or overlaps."""
    edge = 0
    for lo, hi in sorted(r for r in ranges if _length(r) > 0):
        if lo != edge:
            return False
        edge = hi
    return edge == n


@dataclass
class _Bucket:
    key: Hashable
    units: list[int]
    owned: list[int]
    fwd_send: list[list[int]]  # per destination rank: units whose input piece this rank sends there
    fwd_recv: list[list[int]]  # per source rank: owned units whose input piece arrives from there
    bwd_send: list[list[int]]  # per destination rank: owned units whose output piece goes there
    bwd_recv: list[list[int]]  # per source rank: units owned there whose output piece this rank needs
    moves_forward: bool  # any input piece on a rank other than its owner (same answer on every rank)
    moves_backward: bool


class OwnerCompute:
    """Run a function of whole matrices once per :class:`Unit`, on its owner, and exchange pieces.

    Args:
        units: the same list, in the same order, on every rank.
        rank, world_size, group: this rank's place in the process group (``group`` unused when
            ``world_size`` is 1).
        dtypes: ``key -> (input dtype, output dtype)`` of the exchanged pieces.
        order: ``key -> sort value``; buckets run in increasing order (pass the negated matrix
            cost to run the largest first).
    """

    def __init__(self, units: Sequence[Unit], rank: int, world_size: int, group,
                 dtypes: Callable[[Hashable], tuple[torch.dtype, torch.dtype]],
                 order: Callable[[Hashable], float]) -> None:
        for u in units:
            if not u.tiled():
                raise ValueError(f"unit inputs {u.inputs} do not partition a [{u.batch}, {u.rows}, {u.cols}] unit")
        self.units = list(units)
        self.rank, self.world_size, self.group = rank, world_size, group
        self.dtypes = dtypes
        by_key: dict[Hashable, list[int]] = {}
        for i, u in enumerate(self.units):
            by_key.setdefault(u.key, []).append(i)
        self.buckets = [self._bucket(key, idx) for key, idx in sorted(by_key.items(), key=lambda kv: order(kv[0]))]

    def _bucket(self, key, idx: list[int]) -> _Bucket:
        me, W, units = self.rank, self.world_size, self.units
        owned = [i for i in idx if units[i].owner == me]
        return _Bucket(
            key=key,
            units=idx,
            owned=owned,
            fwd_send=[[i for i in idx if units[i].owner == d != me and self._in(i, me)] for d in range(W)],
            fwd_recv=[[i for i in owned if s != me and self._in(i, s)] for s in range(W)],
            bwd_send=[[i for i in owned if d != me and self._out(i, d)] for d in range(W)],
            bwd_recv=[[i for i in idx if units[i].owner == s != me and self._out(i, me)] for s in range(W)],
            moves_forward=any(self._in(i, r) for i in idx for r in range(W) if r != units[i].owner),
            moves_backward=any(self._out(i, r) for i in idx for r in range(W) if r != units[i].owner),
        )

    def _in(self, i: int, rank: int) -> int:
        """Elements of unit i that ``rank`` contributes."""
        return self.units[i].size(self.units[i].inputs[rank])

    def _out(self, i: int, rank: int) -> int:
        """Elements of unit i's result that ``rank`` needs."""
        return self.units[i].size(self.units[i].outputs[rank])

    def run(self, write_input: Callable[[int, torch.Tensor], None],
            compute: Callable[[Hashable, list[int], torch.Tensor], torch.Tensor],
            consume: Callable[[dict[int, torch.Tensor]], None], device: torch.device) -> None:
        """Exchange, compute, exchange back, one bucket at a time.

        Args:
            write_input: ``(unit index, out)`` writes this rank's flat input piece of a unit into
                ``out`` (the bucket's input dtype, ``inputs[rank]``'s length); called once for every
                unit whose ``inputs[rank]`` is non-empty, straight into the owner's batch or the
                send buffer, so no input is materialized twice.
            compute: ``(key, owned unit indices, [Σ batch, rows, cols] input batch) -> output batch``
                (same shape, the output dtype); called on each owner once per bucket it owns units in.
            consume: called once per bucket with ``{unit index: this rank's flat output piece}`` for
                every unit of the bucket whose ``outputs[rank]`` is non-empty (views into the owner's
                output batch where it was computed here), as soon as they are all here: a bucket
                computed here is consumed before the next one is computed, so its batch is freed and
                reused (a bucket whose results travel is consumed after every bucket was sent).
            device: where buffers live.
        """
        units, me = self.units, self.rank
        forward = [self._send(b.fwd_send, b.fwd_recv, lambda i, d: self._in(i, me),
                              lambda i, d, out: write_input(i, out), self._in, self.dtypes(b.key)[0], device)
                   if b.moves_forward else None for b in self.buckets]
        backward = []
        for b, flight in zip(self.buckets, forward):
            received = self._receive(b.fwd_recv, self._in, flight)
            full: dict[int, torch.Tensor] = {}
            results: dict[int, torch.Tensor] = {}
            if b.owned:
                batch, offsets = self._assemble(b, write_input, received, device)
                out = compute(b.key, b.owned, batch).reshape(-1)
                del batch
                full = {i: out[o : o + units[i].numel] for i, o in zip(b.owned, offsets)}
                for i in b.owned:
                    if self._out(i, me):
                        results[i] = units[i].view(full[i], units[i].outputs[me]).reshape(-1)
            if b.moves_backward:
                flight = self._send(b.bwd_send, b.bwd_recv, self._out, partial(self._fill_output, full),
                                    lambda i, s: self._out(i, me), self.dtypes(b.key)[1], device)
                backward.append((b, flight, results))
            elif results:
                consume(results)
        for b, flight, results in backward:
            received = self._receive(b.bwd_recv, lambda i, s: self._out(i, me), flight)
            results.update({i: piece for (i, _), piece in received.items()})
            if results:
                consume(results)

    def _fill_output(self, full: dict[int, torch.Tensor], i: int, d: int, out: torch.Tensor) -> None:
        """Write the part of unit i's result that rank d needs into the send buffer slice ``out``."""
        piece = self.units[i].view(full[i], self.units[i].outputs[d])
        out.view(piece.shape).copy_(piece)

    def _send(self, send: list[list[int]], recv: list[list[int]], send_length, fill, recv_length, dtype, device):
        """Start one all-to-all: ``send_length(i, d)`` elements of unit i to rank d, written into the
        send buffer by ``fill(i, d, out)``, and ``recv_length(i, s)`` elements of unit i from rank s."""
        send_sizes = [sum(send_length(i, d) for i in idx) for d, idx in enumerate(send)]
        recv_sizes = [sum(recv_length(i, s) for i in idx) for s, idx in enumerate(recv)]
        buffer = torch.empty(sum(send_sizes), dtype=dtype, device=device)
        offset = 0
        for d, idx in enumerate(send):
            for i in idx:
                n = send_length(i, d)
                fill(i, d, buffer[offset : offset + n])
                offset += n
        work, received = all_to_all_uneven(buffer, send_sizes, recv_sizes, self.group)
        return work, buffer, received

    @staticmethod
    def _receive(recv: list[list[int]], length, flight) -> dict[tuple[int, int], torch.Tensor]:
        """Wait for an exchange and split what arrived into ``(unit, source rank)`` pieces."""
        if flight is None:
            return {}
        work, _, received = flight
        work.wait()
        out, offset = {}, 0
        for s, idx in enumerate(recv):
            for i in idx:
                n = length(i, s)
                out[(i, s)] = received[offset : offset + n]
                offset += n
        return out

    def _assemble(self, b: _Bucket, write_input, received: dict, device) -> tuple[torch.Tensor, list[int]]:
        """The owned units of bucket ``b`` as one ``[Σ batch, rows, cols]`` batch, and each unit's offset."""
        units, me = self.units, self.rank
        first = units[b.owned[0]]
        offsets, total = [], 0
        for i in b.owned:
            offsets.append(total)
            total += units[i].numel
        flat = torch.empty(total, dtype=self.dtypes(b.key)[0], device=device)
        for i, offset in zip(b.owned, offsets):
            unit = units[i]
            for s in range(self.world_size):
                if not self._in(i, s):
                    continue
                target = unit.view(flat[offset : offset + unit.numel], unit.inputs[s])
                if s != me:
                    target.copy_(received[(i, s)].view(target.shape))
                elif target.is_contiguous():  # a flat range or whole rows: written in place
                    write_input(i, target.view(-1))
                else:
                    piece = torch.empty(target.numel(), dtype=flat.dtype, device=device)
                    write_input(i, piece)
                    target.copy_(piece.view(target.shape))
        return flat.view(-1, first.rows, first.cols), offsets
