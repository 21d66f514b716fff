"""DTensor parameters on any device mesh — FSDP2, tensor parallelism, both — with their replicas.

Each rank holds one box of each parameter (:mod:`muonlab.optim.distributed.shards`: read off the
DTensor once at construction; a plain parameter marked ``"replicated"`` is whole on every rank).
State is kept like the parameter — DTensors in ``optimizer.state`` (so torch.distributed.checkpoint
reshards it), plain tensors for replicas — and momentum, AdamW and the update run on the local
pieces. Every Muon matrix meets whole on one owner (all-to-all of its blocks, in the Newton–Schulz
dtype), is orthogonalized there once, and each holder gets its block back; whole experts are
orthogonalized where they are. ``tp_mode="blockwise"`` instead orthogonalizes each
tensor-parallel block on its own (Megatron-LM's approximation; see ``Muon``).

The gradient check and clipping use the global norm over the distinct pieces (a replica's piece
is counted once, by the lowest rank holding it), and telemetry counts each piece once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import PARALLEL_ATTR
from ..distributed import shards as planning
from ..distributed.owners import Block
from ..gradients import check_and_clip_pieces
from ..state import FIELDS
from ..telemetry import UpdateTelemetry
from .base import Engine, Placement, _local

__all__ = ["TP_DIMS", "ShardedEngine", "sharded_group"]

TP_DIMS = ("tp",)
"""Mesh dims whose shards ``tp_mode="blockwise"`` orthogonalizes apart."""


def _is_dtensor(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def sharded_group(optimizer):
    """The process group the optimizer's DTensors span: their one 1-D mesh's (FSDP2 alone), else the
    default group. A plain parameter among DTensors must be marked ``"replicated"``."""
    meshes, plain = [], False
    for group in optimizer.param_groups:
        names = group.get("names")
        for i, p in enumerate(group["params"]):
            if _is_dtensor(p):
                if p.device_mesh not in meshes:
                    meshes.append(p.device_mesh)
                continue
            plain = True
            if getattr(getattr(p, PARALLEL_ATTR, None), "mode", None) != "replicated":
                raise ValueError(f"parameter {names[i] if names else i!r} of shape {tuple(p.shape)} is a plain tensor "
                                 "while others are DTensors; shard every parameter the optimizer updates "
                                 "(muonlab.parallel.parallelize), or mark the ones every rank holds whole and "
                                 "computes the same gradient for with mark_data_parallel(params, 'replicated')")
    if len(meshes) == 1 and meshes[0].ndim == 1 and not plain:
        return meshes[0].get_group()
    return dist.group.WORLD


class ShardedEngine(Engine):
    """Parameters held in boxes on a device mesh: sharded state, owner-compute Newton–Schulz."""

    def __init__(self, optimizer, policy) -> None:
        super().__init__(optimizer, policy, sharded_group(optimizer))
        blockwise = [s.algorithm == "muon" and self.group(k).get("tp_mode", "exact") == "blockwise"
                     for k, s in enumerate(self.slots)]
        blocked = [s.algorithm == "muon" and self.matrix_param(k).key.blocks.count > 1
                   for k, s in enumerate(self.slots)]
        self.boxes, tp_blocks = planning.gather_boxes([s.param for s in self.slots],
                                                      [TP_DIMS if b or c else None for b, c in zip(blockwise, blocked)],
                                                      self.process_group)
        self.primary = {}  # parameter -> whether this rank counts its piece (the lowest rank holding that box)
        self.held, self.regions = {}, {}  # Muon parameter -> per rank: its piece, the region it is orthogonalized in
        for k, slot in enumerate(self.slots):
            shape, boxes = tuple(slot.param.shape), self.boxes[k]
            if not planning.tiles(shape, boxes):
                raise ValueError(f"parameter {slot.name!r} of shape {shape}: the pieces the {self.world_size} ranks "
                                 f"hold ({sorted(set(boxes))}) do not cover it exactly once; shard the model over "
                                 "one device mesh that spans every rank")
            self.primary[k] = boxes.index(boxes[self.rank]) == self.rank
            if slot.algorithm == "muon":
                self._plan_pieces(k, blockwise[k], tp_blocks[k])

    def _plan_pieces(self, k: int, blockwise: bool, tp_blocks) -> None:
        slot, group = self.slots[k], self.group(k)
        shape = tuple(slot.param.shape)
        stacked = len(shape) == 3 and group.get("role") != "hidden"
        m = self.matrix_param(k)
        whole = Block((0, m.rows), (0, m.cols))
        try:
            self.held[k] = [planning.held_piece(shape, box, stacked) for box in self.boxes[k]]
            self.regions[k] = [whole] * self.world_size  # a stack's experts are whole already
            if not stacked and m.key.blocks.count > 1:
                self.regions[k] = self._block_regions(m.key, self.held[k], tp_blocks, whole, shape)
            if blockwise and not stacked and self.regions[k] == [whole] * self.world_size:
                self.regions[k] = [planning.held_piece(shape, box, False) for box in tp_blocks]
                split = any(region != whole for region in self.regions[k])
                if split and (m.key.blocks.count != 1 or group.get("transposed", False)):
                    raise ValueError("tp_mode='blockwise' splits only plain [out, in] matrices whose tensor-parallel "
                                     "blocks hold whole blocks (heads), not fused or transposed ones")
                if split and group.get("normuon"):
                    raise ValueError("NorMuon needs whole rows of whole blocks; tp_mode='blockwise' cuts them here "
                                     "(use tp_mode='exact')")
        except ValueError as err:
            raise ValueError(f"parameter {slot.name!r}: {err}") from None

    @staticmethod
    def _block_regions(key, held, tp_blocks, whole: Block, shape) -> list[Block]:
        """Where a matrix cut into blocks (per head) is orthogonalized: on each rank's own piece if
        every piece is a union of whole blocks (no communication), else in its tensor-parallel block
        if those are (a gather over the other mesh dims only), else whole."""
        if all(p is None or key.restrict(p.rows, p.cols) is not None for p in held):
            return [whole if p is None else p for p in held]
        if tp_blocks[0] is not None:
            regions = [planning.held_piece(shape, box, False) for box in tp_blocks]
            if all(r is not None and key.restrict(r.rows, r.cols) is not None for r in regions):
                return regions
        return [whole] * len(held)

    def _sharded_state(self, k: int) -> dict:
        p = self.slots[k].param
        if not _is_dtensor(p):
            return self.state_of(k, p.shape)

        def as_dtensor(local: torch.Tensor):
            from torch.distributed.tensor import DTensor

            return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                      stride=p.stride())

        return self.state_of(k, p._local_tensor.shape, as_dtensor)

    def step(self, telemetry: UpdateTelemetry | None) -> None:
        grads = {k: _local(s.param.grad) for k, s in enumerate(self.slots) if s.param.grad is not None}
        if not grads:
            return
        device = next(iter(grads.values())).device
        if not check_and_clip_pieces([(k, g) for k, g in grads.items() if self.primary[k]], self.describe,
                                     self.policy, self.opt.max_grad_norm, device, self.process_group,
                                     [self.update_limit(k) for k in range(len(self.slots))],
                                     replicas=[g for k, g in grads.items() if not self.primary[k]]):
            return
        muon = []
        for group in self.opt.param_groups:
            ks = [self.index[id(p)] for p in group["params"] if self.index[id(p)] in grads]
            if group["algorithm"] == "adamw":
                for part, measured in ((True, telemetry), (False, None)):  # a replica's update is measured once
                    js = [k for k in ks if self.primary[k] == part]
                    if js:
                        states = [{f: _local(v) for f, v in self._sharded_state(k).items()} for k in js]
                        self.adamw(group, js, [_local(self.slots[k].param) for k in js], [grads[k] for k in js],
                                   states, measured)
                continue
            muon += ks
        if muon:
            self._muon(muon, grads, telemetry, device)
        if telemetry is not None:
            telemetry.gather(self.process_group)

    def _muon(self, ks: list[int], grads: dict, telemetry, device) -> None:
        mats = {k: self.matrix_param(k) for k in ks}
        units, where, executor = self.cached(tuple(mats.values()), lambda: self._plan(list(mats.values())))
        bufs = {k: _local(self._sharded_state(k)["momentum_buffer"]) for k in ks}

        def inputs(u: int) -> tuple[torch.Tensor, torch.Tensor]:
            k = where[u].param
            return self._piece(k, grads[k], u, units, where), self._piece(k, bufs[k], u, units, where)

        def target(u: int) -> torch.Tensor:
            k = where[u].param
            return self._piece(k, _local(self.slots[k].param), u, units, where)

        momenta = [(k, grads[k], bufs[k]) for k in ks]
        self.muon_step(Placement(units, where, executor, momenta, inputs, target, device), telemetry)

    def _plan(self, mats):
        # Looked up at call time, so a test can swap in a deliberately wrong plan.
        units, where = planning.sharded_units(mats, [self.held[m.index] for m in mats],
                                              [self.regions[m.index] for m in mats], self.world_size)
        return units, where, self.executor(units)

    def _piece(self, k: int, local: torch.Tensor, u: int, units, where) -> torch.Tensor:
        """This rank's part of unit u in ``local`` (parameter k's local tensor or its state): all of
        it for a matrix, experts ``[first, first + batch)`` for a stack."""
        held = self.held[k][self.rank]
        if isinstance(held, Block):
            return local
        first = where[u].first - held[0]
        return local[first : first + units[u].batch]

    def load_checkpoint_state(self, available, read) -> None:
        template = {}
        for k, slot in enumerate(self.slots):
            fields = FIELDS[slot.algorithm]
            if all(f"{slot.name}/{f}" in available for f in fields):
                state = self._sharded_state(k)
                template.update({f"{slot.name}/{f}": state[f] for f in fields})
        rows = self.row_state_template(available)
        read({**template, **rows})
        self.restore_row_state(rows)
