"""ZeRO-1: replicated parameters, partitioned optimizer state — Moonlight's Distributed Muon.

arXiv 2502.16982 §2.3, Algorithm 1, over the
:class:`~muonlab.optim.distributed.layouts.Zero1Layout` partition (whole matrices assigned to
owner ranks, AdamW elements filling each chunk). Per step:

1. ``g = reduce_scatter(G)``: the averaged gradient of this rank's chunk, in fp32;
2. the finite check and global-norm clipping over every rank's chunk (one all-reduce);
3. momentum and AdamW on the local chunk;
4. Newton–Schulz on each matrix's owner (pieces of a matrix that a chunk boundary splits travel
   to the owner in the Newton–Schulz dtype and back), then the local part of the update;
5. ``P = all_gather(p)``: every rank gets the updated parameters, in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..distributed.collectives import all_gather_flat, all_to_all_uneven, reduce_scatter_sum
from ..distributed.layouts import Zero1Layout
from ..gradients import check_and_clip_pieces
from ..state import FIELDS, momentum_dtype, new_state
from ..telemetry import UpdateTelemetry
from .base import Engine, Placement

__all__ = ["Zero1Engine"]


class Zero1Engine(Engine):
    """Moonlight's Distributed Muon over a whole-matrix ZeRO-1 partition (see the module docstring)."""

    partitioned_state = True

    def __init__(self, optimizer, policy, process_group) -> None:
        super().__init__(optimizer, policy, process_group)
        dtypes = {s.param.dtype for s in self.slots}
        if len(dtypes) > 1:
            raise ValueError(f"ZeRO-1 keeps one flat buffer of every parameter and needs one dtype; got "
                             f"{sorted(str(d) for d in dtypes)} (keep master weights in one dtype, e.g. fp32)")
        for slot in self.slots:
            if not slot.param.is_contiguous():
                raise ValueError(f"parameter {slot.name!r} is not contiguous; ZeRO-1 needs contiguous parameters")
        self.dtype = dtypes.pop() if dtypes else torch.float32
        self.grad_dtype = torch.promote_types(self.dtype, torch.float32)  # fp32 reduce-scatter (Algorithm 1)
        self.device = self.slots[0].param.device
        self.mats = {k: self.matrix_param(k) for k, s in enumerate(self.slots) if s.algorithm == "muon"}
        adamw = [(k, s.param.numel()) for k, s in enumerate(self.slots) if s.algorithm == "adamw"]
        self.layout = Zero1Layout(list(self.mats.values()), adamw, self.world_size)
        self.pieces = self.layout.pieces(self.rank)
        self.state: dict[int, dict[str, Any]] = {}  # piece position -> {"momentum_buffer"} or {"exp_avg", ...}
        self.steps: dict[int, torch.Tensor] = {}  # AdamW step count per parameter held here
        self.has_state: set[int] = set()  # parameters updated at least once

    def _piece_state(self, j: int) -> dict:
        if j not in self.state:
            k = self.pieces[j].segment.param
            slot = self.slots[k]
            fields = [f for f in FIELDS[slot.algorithm] if f != "step"]
            self.state[j] = {f: new_state(f, (self.pieces[j].numel,), slot.param.dtype, self.device) for f in fields}
            if slot.algorithm == "adamw":  # one step count per parameter, shared by its pieces here
                self.state[j]["step"] = self.steps.setdefault(k, new_state("step", (), slot.param.dtype, self.device))
        return self.state[j]

    def step(self, telemetry: UpdateTelemetry | None) -> None:
        W, C = self.world_size, self.layout.chunk
        chunk_grad = self._reduce_scatter_gradients()
        grad_of = {j: chunk_grad[piece.start : piece.start + piece.numel] for j, piece in enumerate(self.pieces)}
        # A parameter is updated if any rank had its gradient; parameters without one contribute zeros.
        counts = torch.tensor([s.param.grad is not None for s in self.slots], dtype=torch.float64, device=self.device)
        if not check_and_clip_pieces(
            [(piece.segment.param, grad_of[j]) for j, piece in enumerate(self.pieces)],
            self.describe,
            self.policy,
            self.opt.max_grad_norm,
            self.device,
            self.process_group,
            [self.update_limit(k) for k in range(len(self.slots))],
            counts,
        ):
            return
        present = set(torch.nonzero(counts).flatten().tolist())
        chunk = torch.cat([self.slots[piece.segment.param].param.detach().reshape(-1)[piece.lo : piece.hi]
                           for piece in self.pieces]
                          + [torch.zeros(C - sum(piece.numel for piece in self.pieces), dtype=self.dtype,
                                         device=self.device)])
        view = {j: chunk[piece.start : piece.start + piece.numel] for j, piece in enumerate(self.pieces)}
        mine = [j for j, piece in enumerate(self.pieces) if piece.segment.param in present]
        muon = []
        for g, group in enumerate(self.opt.param_groups):
            js = [j for j in mine if self.slots[self.pieces[j].segment.param].group_index == g]
            if not js:
                continue
            if group["algorithm"] == "adamw":
                self.adamw(group, [self.pieces[j].segment.param for j in js], [view[j] for j in js],
                           [grad_of[j] for j in js], [self._piece_state(j) for j in js], telemetry)
                continue
            muon += js
        self._muon(present, muon, grad_of, view, telemetry)
        self.has_state |= present
        flat_params = torch.empty(W * C, dtype=self.dtype, device=self.device)
        all_gather_flat(flat_params, chunk, self.process_group)
        targets = [self.slots[s.param].param.detach().view(-1)[s.lo : s.hi] for s in self.layout.segments]
        torch._foreach_copy_(targets, [flat_params[s.flat : s.flat + s.numel] for s in self.layout.segments])
        if telemetry is not None:
            telemetry.gather(self.process_group)

    def _reduce_scatter_gradients(self) -> torch.Tensor:
        """This rank's chunk of the gradient, summed over ranks in fp32 and averaged."""
        W, C = self.world_size, self.layout.chunk
        flat = [(p.grad.reshape(-1)[s.lo : s.hi] if p.grad is not None else torch.zeros(s.numel, device=self.device))
                for s in self.layout.segments for p in (self.slots[s.param].param,)]
        flat.append(torch.zeros(W * C - self.layout.total, device=self.device))
        flat_grad = torch.cat([t.to(self.grad_dtype) for t in flat])
        chunk_grad = torch.empty(C, dtype=self.grad_dtype, device=self.device)
        reduce_scatter_sum(chunk_grad, flat_grad, self.process_group)
        return chunk_grad.div_(W)

    def _muon(self, present: set[int], js: list[int], grad_of: dict, view: dict, telemetry) -> None:
        active = tuple(u for u, w in enumerate(self.layout.where) if w.param in present)
        if not active:
            return
        units = [self.layout.units[u] for u in active]
        executor = self.cached(active, lambda: self.executor(units))
        where = [self.layout.where[u] for u in active]
        position = {u: i for i, u in enumerate(active)}
        local = {position[self.pieces[j].segment.unit]: j for j in js}
        momenta = [(self.pieces[j].segment.param, grad_of[j], self._piece_state(j)["momentum_buffer"]) for j in js]
        self.muon_step(Placement(units, where, executor, momenta,
                                 lambda u: (grad_of[local[u]], self.state[local[u]]["momentum_buffer"]),
                                 lambda u: view[local[u]], self.device), telemetry)

    # ---- checkpoints: each parameter's state assembled on one rank, loadable at any world size

    def _save_owner(self, k: int) -> int:
        """The rank holding most of parameter k (ties: lowest); it writes k's state."""
        held = [0] * self.world_size
        C = self.layout.chunk
        for s in self.layout.segments:
            if s.param == k:
                for r in range(self.world_size):
                    held[r] += max(0, min(s.flat + s.numel, (r + 1) * C) - max(s.flat, r * C))
        return max(range(self.world_size), key=lambda r: (held[r], -r))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Full per-parameter state on each parameter's save owner (disjoint keys across ranks)."""
        out: dict[str, torch.Tensor] = {}
        saved = sorted(self.has_state)
        owners = {k: self._save_owner(k) for k in saved}
        self.sync_row_state(None)
        out.update({f"{self.slots[k].name}/normuon_v": v for k, v in self.row_states().items()
                    if owners.get(k) == self.rank})
        for algorithm, field in (("muon", "momentum_buffer"), ("adamw", "exp_avg"), ("adamw", "exp_avg_sq")):
            ks = [k for k in saved if self.slots[k].algorithm == algorithm]
            full = self._assemble(ks, owners, field)
            out.update({f"{self.slots[k].name}/{field}": t for k, t in full.items()})
        for k in saved:
            if self.slots[k].algorithm == "adamw" and owners[k] == self.rank:
                out[f"{self.slots[k].name}/step"] = self.steps[k]
        return out

    def _assemble(self, ks: list[int], owners: dict[int, int], field: str) -> dict[int, torch.Tensor]:
        """Send every piece of ``field`` for parameters ``ks`` to their save owners; return the owned full tensors."""
        me, W = self.rank, self.world_size
        dtype = momentum_dtype(self.dtype) if field == "momentum_buffer" else self.dtype
        send = [[] for _ in range(W)]
        for k in ks:
            for j, piece in enumerate(self.pieces):
                if piece.segment.param == k:
                    send[owners[k]].append(self.state[j][field])
        send_sizes = [sum(t.numel() for t in ts) for ts in send]
        recv_plan = [[] for _ in range(W)]  # per source: (k, lo, hi) in the order the source sends
        for k in ks:
            if owners[k] == me:
                for r in range(W):
                    recv_plan[r] += [(k, p.lo, p.hi) for p in self.layout.pieces(r) if p.segment.param == k]
        recv_sizes = [sum(hi - lo for _, lo, hi in plan) for plan in recv_plan]
        buffer = (torch.cat([t for ts in send for t in ts]) if any(send)
                  else torch.empty(0, dtype=dtype, device=self.device))
        work, received = all_to_all_uneven(buffer.to(dtype), send_sizes, recv_sizes, self.process_group)
        work.wait()
        full = {k: torch.empty(self.slots[k].param.numel(), dtype=dtype, device=self.device)
                for k in ks if owners[k] == me}
        offset = 0
        for plan in recv_plan:
            for k, lo, hi in plan:
                full[k][lo:hi] = received[offset : offset + hi - lo]
                offset += hi - lo
        return {k: t.view(self.slots[k].param.shape) for k, t in full.items()}

    def load_checkpoint_state(self, available, read) -> None:
        template = {}
        for k in sorted({piece.segment.param for piece in self.pieces}):
            slot = self.slots[k]
            fields = FIELDS[slot.algorithm]
            if all(f"{slot.name}/{f}" in available for f in fields):
                template.update({f"{slot.name}/{f}": new_state(f, slot.param.shape, slot.param.dtype, self.device)
                                 for f in fields})
        rows = self.row_state_template(available)
        read({**template, **rows})
        self.restore_row_state(rows)
        for j, piece in enumerate(self.pieces):
            slot = self.slots[piece.segment.param]
            fields = FIELDS[slot.algorithm]
            if f"{slot.name}/{fields[0]}" not in template:
                continue
            if slot.algorithm == "adamw":
                self.steps[piece.segment.param] = template[f"{slot.name}/step"]
                self.state.pop(j, None)
            state = self._piece_state(j)
            for f in fields:
                if f != "step":
                    state[f].copy_(template[f"{slot.name}/{f}"].reshape(-1)[piece.lo : piece.hi])
        loaded = torch.zeros(len(self.slots), dtype=torch.int32, device=self.device)
        for key in template:
            loaded[self.by_name[key.rsplit("/", 1)[0]]] = 1
        dist.all_reduce(loaded, group=self.process_group)
        self.has_state = set(torch.nonzero(loaded).flatten().tolist())

    def state_bytes(self) -> int:
        return (sum(t.numel() * t.element_size() for s in self.state.values() for f, t in s.items() if f != "step")
                + sum(t.numel() * t.element_size() for t in self.steps.values())
                + sum(v.numel() * v.element_size() for v in self.row_states().values()))
