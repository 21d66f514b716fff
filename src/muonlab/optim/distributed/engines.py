"""The step of :class:`~muonlab.optim.Muon` for each data-parallel layout.

An engine owns where the gradient, the optimizer state and the Newton–Schulz work live:

- :class:`ReplicatedEngine` — one process, or DDP (``mode="ddp"``). Gradients arrive already
  averaged and parameters are replicated, so the momentum and AdamW state are too (as with any
  optimizer under DDP); Newton–Schulz is split among owner ranks and the results shared, so no
  rank repeats another's work. With world size 1 nothing is ever sent.
- :class:`Zero1Engine` — ZeRO-1 (``mode="zero1"``), Moonlight's Distributed Muon (arXiv
  2502.16982 §2.3, Algorithm 1) over the :class:`~muonlab.optim.distributed.layouts.Zero1Layout`
  partition: fp32 reduce-scatter of the gradients, momentum and AdamW on the local chunk,
  Newton–Schulz on each matrix's owner (pieces of a matrix that a chunk boundary splits travel to
  the owner in the NS dtype and back), the local chunk of the update applied, fp32 all-gather of
  the parameters.
- :class:`ShardedEngine` — FSDP2 (``fully_shard``) parameters, DTensors with ``Shard(0)``. State
  is sharded like the parameters (DTensors, so torch.distributed.checkpoint reshards it); each
  2-D matrix is assembled on one owner with an all-to-all and its row blocks sent back; expert
  stacks are orthogonalized where their whole experts already are.

Every engine: validates and clips the *reduced* gradient (a global norm over the ranks where
it is sharded), then runs :mod:`muonlab.optim.functional` on the tensors it holds. Checkpoint
state is exposed per parameter (``"<name>/<field>"``, full logical shape) so that
torch.distributed.checkpoint can load it at any world size: :meth:`Engine.checkpoint_state` and
:meth:`Engine.load_checkpoint_state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from ..functional import adamw_, decoupled_update_, exchange_dtypes, muon_momentum_, orthogonalize_stack
from ..newton_schulz import choose_method, get_coefficient_set, ns_flops
from ..scaling import SCALE_RULES, logical_matrix_shape
from ..telemetry import UpdateTelemetry
from .collectives import all_gather_flat, all_to_all_uneven, reduce_scatter_sum
from .layouts import MatrixParam, Zero1Layout, chunk_rows, replicated_units, sharded_units
from .owners import OwnerCompute

__all__ = ["BucketKey", "Engine", "ReplicatedEngine", "ShardedEngine", "Zero1Engine", "momentum_dtype"]

MUON_FIELDS = ("momentum_buffer",)
ADAMW_FIELDS = ("exp_avg", "exp_avg_sq", "step")


def momentum_dtype(p: torch.Tensor) -> torch.dtype:
    """Momentum is kept in fp32 (or wider) whatever the parameter's dtype."""
    return torch.promote_types(p.dtype, torch.float32)


class BucketKey(NamedTuple):
    """Everything that makes two matrices' Newton–Schulz calls one batched call."""

    rows: int
    cols: int
    steps: int
    coefficients: str
    dtype: torch.dtype
    method: str
    eps: float
    in_dtype: torch.dtype  # of the pieces sent to the owner
    out_dtype: torch.dtype  # of the results sent back

    @property
    def cost(self) -> int:
        """Relative size, to run the largest buckets first."""
        return min(self.rows, self.cols) ** 2 * max(self.rows, self.cols)


class Engine:
    """Common bookkeeping: the optimizer's parameters in order, their names, shapes and buckets."""

    def __init__(self, optimizer, group=None) -> None:
        self.opt = optimizer
        self.group = group  # None: a single process, nothing is ever communicated
        self.rank = dist.get_rank(group) if group is not None else 0
        self.world_size = dist.get_world_size(group) if group is not None else 1
        self.entries: list[tuple[dict, int, torch.Tensor]] = [
            (g, i, p) for g in optimizer.param_groups for i, p in enumerate(g["params"])
        ]
        self.index = {id(p): k for k, (_, _, p) in enumerate(self.entries)}
        self._plans: dict[tuple, tuple] = {}  # matrix set -> (units, where, executor), see plan()

    # ---- descriptions

    def name(self, k: int) -> str:
        """Checkpoint/telemetry name of parameter k: its group's name for it, or ``group{g}.param{i}``."""
        group, i, _ = self.entries[k]
        names = group.get("names")
        if names:
            return names[i]
        return f"group{self.opt.param_groups.index(group)}.param{i}"

    def index_of(self, name: str) -> int:
        """The parameter index of a :meth:`name`."""
        if not hasattr(self, "_by_name"):
            self._by_name = {self.name(k): k for k in range(len(self.entries))}
        return self._by_name[name]

    def matrix_param(self, k: int, shape: tuple[int, ...]) -> MatrixParam:
        """The Muon view of parameter k (global ``shape``): batch of [rows, cols] matrices, bucket, cost."""
        group, _, p = self.entries[k]
        rows, cols = logical_matrix_shape(shape, stacked=group.get("role") != "hidden")
        batch = math.prod(shape) // (rows * cols)
        dtype, method = group["ns_dtype"], group["ns_method"]
        in_dtype, out_dtype = exchange_dtypes(dtype, method, momentum_dtype(p))
        key = BucketKey(rows, cols, group["ns_steps"], str(group["ns_coefficients"]), dtype, method, group["ns_eps"],
                        in_dtype, out_dtype)
        m, n = min(rows, cols), max(rows, cols)
        cset = get_coefficient_set(group["ns_coefficients"])
        chosen = choose_method(method, m, n, group["ns_steps"], dtype, cset)
        cost = ns_flops(m, n, group["ns_steps"], chosen if chosen != "svd" else "standard", cset)
        return MatrixParam(k, key, batch, rows, cols, float(cost))

    def plan(self, mats, split):
        """``(units, where, executor)`` for this set of matrices, built once by ``split`` and cached."""
        signature = tuple(mats)
        if signature not in self._plans:
            units, where = split(mats, self.world_size)
            self._plans[signature] = (units, where, self.executor(units))
        return self._plans[signature]

    def executor(self, units) -> OwnerCompute:
        return OwnerCompute(units, self.rank, self.world_size, self.group,
                            dtypes=lambda key: (key.in_dtype, key.out_dtype), order=lambda key: -key.cost)

    def compute(self, units, where, telemetry: UpdateTelemetry | None) -> Callable:
        """The owner's function: batched Newton–Schulz of a bucket, plus telemetry on whole results."""

        def run(key, unit_ids, mats):
            group = self.entries[where[unit_ids[0]].param][0]
            outs = orthogonalize_stack(mats, group["ns_coefficients"], key.steps, key.dtype, key.eps, key.method)
            if telemetry is not None:
                for position, (u, O) in enumerate(zip(unit_ids, outs)):
                    k = where[u].param
                    g = self.entries[k][0]
                    s = SCALE_RULES[g["scale"]](units[u].rows, units[u].cols)
                    telemetry.add("muon", k, _name_or_none(g, self.entries[k][1]), O, s)
                    if position == 0:
                        telemetry.add_sample(O[0], s)
            return outs

        return run

    # ---- gradient validation and clipping on sharded gradients

    def check_and_clip_sharded(self, grads: list[tuple[int, torch.Tensor]], device,
                               counts: torch.Tensor | None = None) -> bool:
        """Finite check and global-norm clipping when each rank holds part of the reduced gradient.

        ``grads``: ``(parameter index, local gradient piece)``. One all-reduce of ``Σ g²`` gives
        the global norm ``sqrt(Σ_ranks Σ g²)`` (as ``clip_grad_norm_`` over the whole gradient)
        and, being non-finite exactly when some entry is, the finite check; every rank then takes
        the same decision. ``counts`` (float64) are summed over ranks in the same all-reduce, in place.
        """
        opt = self.opt
        norms = torch._foreach_norm([g for _, g in grads]) if grads else []
        sumsq = torch.stack(norms).double().pow(2).sum() if norms else torch.zeros((), dtype=torch.float64, device=device)
        reduced = torch.cat([sumsq.reshape(1), counts if counts is not None else sumsq.new_empty(0)])
        dist.all_reduce(reduced, group=self.group)
        sumsq = reduced[0]
        if counts is not None:
            counts.copy_(reduced[1:])
        if not math.isfinite(float(sumsq)):
            bad = [k for k, g in grads if not bool(torch.isfinite(g).all())]
            first = torch.tensor(min(bad) if bad else len(self.entries), device=device)
            dist.all_reduce(first, op=dist.ReduceOp.MIN, group=self.group)
            if opt.nonfinite == "skip":
                opt.skipped_steps += 1
                return False
            group, i, _ = self.entries[int(first)]
            raise opt.nonfinite_error(group, i)
        if opt.max_grad_norm > 0:
            coef = opt.max_grad_norm / (math.sqrt(float(sumsq)) + 1e-6)
            if coef < 1.0:
                torch._foreach_mul_([g for _, g in grads], coef)
        return True

    # ---- checkpoints (engines that keep their state in ``optimizer.state``; ZeRO-1 overrides)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Per-parameter state tensors to save, keyed ``"<name>/<field>"``, at logical shape."""
        out = {}
        for k, (_, _, p) in enumerate(self.entries):
            for field, value in self.opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    out[f"{self.name(k)}/{field}"] = value
        return out

    def load_checkpoint_state(self, available: set[str], read: Callable[[dict[str, torch.Tensor]], None]) -> None:
        """Fill the state from a checkpoint: ``read(template)`` fills the given tensors in place."""
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank."""
        return sum(_local(v).numel() * v.element_size() for s in self.opt.state.values()
                   for v in s.values() if isinstance(v, torch.Tensor))


def _name_or_none(group: dict, i: int) -> str | None:
    names = group.get("names")
    return names[i] if names else None


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if hasattr(t, "_local_tensor") else t


# =============================================================================================
# Replicated parameters: one process or DDP


class ReplicatedEngine(Engine):
    """Full state on every rank; Newton–Schulz split among owners; results shared (DDP)."""

    def __init__(self, optimizer, group=None) -> None:
        super().__init__(optimizer, group)

    def step(self, telemetry: UpdateTelemetry | None) -> None:
        opt = self.opt
        if not opt._check_gradients():
            return
        if opt.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for _, _, p in self.entries if p.grad is not None], opt.max_grad_norm)
        mats, directions = [], {}
        for group in opt.param_groups:
            if group["algorithm"] != "muon":
                continue
            present = [(i, p) for i, p in enumerate(group["params"]) if p.grad is not None]
            if not present:
                continue
            bufs = [self._buffer(p) for _, p in present]
            dirs = muon_momentum_(bufs, [p.grad for _, p in present], group["momentum"], group["nesterov"])
            for (_, p), d in zip(present, dirs):
                k = self.index[id(p)]
                mats.append(self.matrix_param(k, tuple(p.shape)))
                directions[k] = d
        if mats:
            self._orthogonalize_and_apply(mats, directions, telemetry)
        self._adamw(telemetry if self.rank == 0 else None)
        if telemetry is not None and self.world_size > 1:
            telemetry.gather(self.group)

    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.opt.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=momentum_dtype(p), memory_format=torch.contiguous_format)
        return state["momentum_buffer"]

    def _orthogonalize_and_apply(self, mats, directions, telemetry) -> None:
        units, where, executor = self.plan(mats, replicated_units)
        by_index = {m.index: m for m in mats}
        pieces = {}
        for u, (unit, w) in enumerate(zip(units, where)):
            if unit.inputs[self.rank][1] > 0:
                m = by_index[w.param]
                view = directions[w.param].reshape(m.batch, m.rows, m.cols)[w.first : w.first + unit.batch]
                pieces[u] = view.reshape(-1).to(unit.key.in_dtype)
        device = next(iter(directions.values())).device
        results = executor.run(pieces, self.compute(units, where, telemetry), device)
        per_param: dict[int, list] = {}
        for u, w in enumerate(where):
            per_param.setdefault(w.param, []).append((w.first, results[u]))
        for group in self.opt.param_groups:
            if group["algorithm"] != "muon":
                continue
            params, updates, scales = [], [], []
            for i, p in enumerate(group["params"]):
                k = self.index[id(p)]
                if k not in per_param:
                    continue
                parts = [t for _, t in sorted(per_param[k], key=lambda x: x[0])]
                params.append(p)
                updates.append((parts[0] if len(parts) == 1 else torch.cat(parts)).view(p.shape))
                scales.append(SCALE_RULES[group["scale"]](by_index[k].rows, by_index[k].cols))
            decoupled_update_(params, updates, group["lr"], group["weight_decay"], scales)

    def _adamw(self, telemetry) -> None:
        for group in self.opt.param_groups:
            if group["algorithm"] != "adamw":
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._adamw_state(p) for p in params]
            updates = adamw_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                             [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                             beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"],
                             weight_decay=group["weight_decay"], eps=group["eps"], want_updates=telemetry is not None)
            if telemetry is not None:
                for p, u in zip(params, updates):
                    k = self.index[id(p)]
                    telemetry.add("adamw", k, _name_or_none(group, self.entries[k][1]), u)

    def _adamw_state(self, p: torch.Tensor) -> dict:
        state = self.opt.state[p]
        if "exp_avg" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def load_checkpoint_state(self, available, read) -> None:
        template = {}
        for k, (group, _, p) in enumerate(self.entries):
            fields = MUON_FIELDS if group["algorithm"] == "muon" else ADAMW_FIELDS
            for field in fields:
                key = f"{self.name(k)}/{field}"
                if key in available:
                    template[key] = _empty_state(p, field, full=True)
        read(template)
        for key, value in template.items():
            name, field = key.rsplit("/", 1)
            self.opt.state[self.entries[self.index_of(name)][2]][field] = value


def _empty_state(p: torch.Tensor, field: str, full: bool) -> torch.Tensor:
    if field == "step":
        return torch.zeros(())
    dtype = momentum_dtype(p) if field == "momentum_buffer" else p.dtype
    return torch.zeros(p.shape if full else _local(p).shape, dtype=dtype, device=_local(p).device)


# =============================================================================================
# FSDP2: DTensor parameters sharded on dim 0


class ShardedEngine(Engine):
    """``Shard(0)`` DTensor parameters (FSDP2): sharded state, all-to-all owner compute."""

    def __init__(self, optimizer) -> None:
        from torch.distributed.tensor import DTensor, Shard

        mesh = None
        for group in optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                where = f"parameter {_name_or_none(group, i) or i!r} of shape {tuple(p.shape)}"
                if not isinstance(p, DTensor):
                    raise ValueError(f"{where} is a plain tensor while others are FSDP2 DTensors; shard every "
                                     "parameter the optimizer updates (muonlab.parallel.parallelize(model, 'fsdp'))")
                if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
                    raise ValueError(f"{where} has placements {tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh; "
                                     "distributed Muon supports FSDP2's default (Shard(0),) on a 1-D mesh")
                if mesh is None:
                    mesh = p.device_mesh
                elif p.device_mesh != mesh:
                    raise ValueError(f"{where} lives on a different device mesh than the first parameter; "
                                     "shard the whole model over one mesh")
        if mesh is None:
            raise ValueError("the optimizer has no parameters")
        super().__init__(optimizer, mesh.get_group())
        for k, (group, i, p) in enumerate(self.entries):
            offset, count = chunk_rows(p.shape[0], self.world_size)[self.rank]
            if tuple(p._local_tensor.shape) != (count, *p.shape[1:]):
                raise ValueError(f"parameter {self.name(k)!r}: local shard {tuple(p._local_tensor.shape)} is not the "
                                 f"torch.chunk row block {(count, *p.shape[1:])} that Shard(0) implies")

    def _dtensor_like(self, p, local: torch.Tensor):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())

    def _state(self, p, fields) -> dict:
        state = self.opt.state[p]
        if fields[0] not in state:
            for field in fields:
                local = _empty_state(p, field, full=False)
                state[field] = local if field == "step" else self._dtensor_like(p, local)
        return state

    def step(self, telemetry: UpdateTelemetry | None) -> None:
        opt = self.opt
        grads = [(k, p.grad._local_tensor) for k, (_, _, p) in enumerate(self.entries) if p.grad is not None]
        if not grads:
            return
        device = grads[0][1].device
        if not self.check_and_clip_sharded(grads, device):
            return
        local_grad = dict(grads)
        mats, directions = [], {}
        for group in opt.param_groups:
            present = [(self.index[id(p)], p) for p in group["params"] if self.index[id(p)] in local_grad]
            if not present:
                continue
            if group["algorithm"] == "adamw":
                self._adamw(group, present, local_grad, telemetry)
                continue
            bufs = [self._state(p, MUON_FIELDS)["momentum_buffer"]._local_tensor for _, p in present]
            dirs = muon_momentum_(bufs, [local_grad[k] for k, _ in present], group["momentum"], group["nesterov"])
            for (k, p), d in zip(present, dirs):
                mats.append(self.matrix_param(k, tuple(p.shape)))
                directions[k] = d
        if mats:
            self._orthogonalize_and_apply(mats, directions, telemetry, device)
        if telemetry is not None:
            telemetry.gather(self.group)

    def _adamw(self, group, present, local_grad, telemetry) -> None:
        states = [self._state(p, ADAMW_FIELDS) for _, p in present]
        updates = adamw_([p._local_tensor for _, p in present], [local_grad[k] for k, _ in present],
                         [s["exp_avg"]._local_tensor for s in states], [s["exp_avg_sq"]._local_tensor for s in states],
                         [s["step"] for s in states], beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"],
                         weight_decay=group["weight_decay"], eps=group["eps"], want_updates=telemetry is not None)
        if telemetry is not None:
            for (k, _), u in zip(present, updates):
                telemetry.add("adamw", k, _name_or_none(group, self.entries[k][1]), u)

    def _orthogonalize_and_apply(self, mats, directions, telemetry, device) -> None:
        units, where, executor = self.plan(mats, sharded_units)
        by_index = {m.index: m for m in mats}
        pieces = {}
        for u, (unit, w) in enumerate(zip(units, where)):
            if unit.inputs[self.rank][1] > 0:
                pieces[u] = self._local_view(by_index[w.param], directions[w.param], w.first, unit.batch).to(unit.key.in_dtype)
        results = executor.run(pieces, self.compute(units, where, telemetry), device)
        updates: dict[int, list] = {}
        for u, w in enumerate(where):
            if u in results:
                updates.setdefault(w.param, []).append((w.first, results[u]))
        for group in self.opt.param_groups:
            if group["algorithm"] != "muon":
                continue
            params, outs, scales = [], [], []
            for p in group["params"]:
                k = self.index[id(p)]
                if k in updates:
                    parts = [t for _, t in sorted(updates[k], key=lambda x: x[0])]
                    params.append(p._local_tensor)
                    outs.append((parts[0] if len(parts) == 1 else torch.cat(parts)).view(p._local_tensor.shape))
                    scales.append(SCALE_RULES[group["scale"]](by_index[k].rows, by_index[k].cols))
            decoupled_update_(params, outs, group["lr"], group["weight_decay"], scales)

    def _local_view(self, m: MatrixParam, d: torch.Tensor, first: int, batch: int) -> torch.Tensor:
        """This rank's flat input piece of a unit: its row block, or its whole experts."""
        if m.batch == 1:
            return d.reshape(-1)
        offset, _ = chunk_rows(m.batch, self.world_size)[self.rank]
        return d.reshape(-1, m.rows, m.cols)[first - offset : first - offset + batch].reshape(-1)

    def load_checkpoint_state(self, available, read) -> None:
        template = {}
        for k, (group, _, p) in enumerate(self.entries):
            fields = MUON_FIELDS if group["algorithm"] == "muon" else ADAMW_FIELDS
            if all(f"{self.name(k)}/{f}" in available for f in fields):
                state = self._state(p, fields)
                template.update({f"{self.name(k)}/{f}": state[f] for f in fields})
        read(template)


# =============================================================================================
# ZeRO-1: replicated parameters, partitioned optimizer state (Moonlight Algorithm 1)


class Zero1Engine(Engine):
    """Moonlight's Distributed Muon over a whole-matrix ZeRO-1 partition (see the module docstring)."""

    def __init__(self, optimizer, group=None) -> None:
        super().__init__(optimizer, group)
        dtypes = {p.dtype for _, _, p in self.entries}
        if len(dtypes) > 1:
            raise ValueError(f"ZeRO-1 keeps one flat buffer of every parameter and needs one dtype; got "
                             f"{sorted(str(d) for d in dtypes)} (keep master weights in one dtype, e.g. fp32)")
        for k, (_, _, p) in enumerate(self.entries):
            if not p.is_contiguous():
                raise ValueError(f"parameter {self.name(k)!r} is not contiguous; ZeRO-1 needs contiguous parameters")
        self.dtype = dtypes.pop() if dtypes else torch.float32
        self.grad_dtype = torch.promote_types(self.dtype, torch.float32)  # fp32 reduce-scatter (Algorithm 1)
        mats, adamw = [], []
        for k, (group, _, p) in enumerate(self.entries):
            if group["algorithm"] == "muon":
                mats.append(self.matrix_param(k, tuple(p.shape)))
            else:
                adamw.append((k, p.numel()))
        self.mats = {m.index: m for m in mats}
        self.layout = Zero1Layout(mats, adamw, self.world_size)
        self.pieces = self.layout.pieces(self.rank)
        self.state: dict[int, dict[str, Any]] = {}  # piece position -> {"momentum_buffer"} or {"exp_avg", ...}
        self.steps: dict[int, torch.Tensor] = {}  # AdamW step count per parameter held here
        self.has_state: set[int] = set()  # parameters updated at least once
        self._executors: dict[frozenset, OwnerCompute] = {}

    def _piece_state(self, position: int) -> dict:
        if position not in self.state:
            piece = self.pieces[position]
            group, _, p = self.entries[piece.segment.param]
            n, device = piece.numel, p.device
            if group["algorithm"] == "muon":
                self.state[position] = {"momentum_buffer": torch.zeros(n, dtype=momentum_dtype(p), device=device)}
            else:
                self.state[position] = {"exp_avg": torch.zeros(n, dtype=p.dtype, device=device),
                                        "exp_avg_sq": torch.zeros(n, dtype=p.dtype, device=device)}
                self.steps.setdefault(piece.segment.param, torch.tensor(0.0))
        return self.state[position]

    def step(self, telemetry: UpdateTelemetry | None) -> None:
        opt, W, C = self.opt, self.world_size, self.layout.chunk
        device = self.entries[0][2].device
        # 1. g = reduce_scatter(G): the averaged gradient of this rank's chunk, in fp32.
        present_local = [p.grad is not None for _, _, p in self.entries]
        flat = [(p.grad.reshape(-1)[s.lo : s.hi] if p.grad is not None else torch.zeros(s.numel, device=device))
                for s in self.layout.segments for p in (self.entries[s.param][2],)]
        flat.append(torch.zeros(W * C - self.layout.total, device=device))
        flat_grad = torch.cat([t.to(self.grad_dtype) for t in flat])
        chunk_grad = torch.empty(C, dtype=self.grad_dtype, device=device)
        reduce_scatter_sum(chunk_grad, flat_grad, self.group)
        del flat, flat_grad
        chunk_grad.div_(W)
        # The norm over every local piece (parameters without a gradient anywhere contribute zeros),
        # and how many ranks had each parameter's gradient: a parameter is updated if any rank had one.
        grad_of = {j: chunk_grad[piece.start : piece.start + piece.numel] for j, piece in enumerate(self.pieces)}
        present = torch.tensor(present_local, dtype=torch.float64, device=device)
        if not self.check_and_clip_sharded([(piece.segment.param, grad_of[j]) for j, piece in enumerate(self.pieces)],
                                           device, present):
            return
        present = set(torch.nonzero(present).flatten().tolist())
        positions = [j for j, piece in enumerate(self.pieces) if piece.segment.param in present]
        chunk = torch.cat([self.entries[piece.segment.param][2].detach().reshape(-1)[piece.lo : piece.hi] for piece in self.pieces]
                          + [torch.zeros(C - sum(piece.numel for piece in self.pieces), dtype=self.dtype, device=device)])
        # 2. momentum and AdamW on the local chunk.
        directions = {}
        for group in opt.param_groups:
            mine = [j for j in positions if self.entries[self.pieces[j].segment.param][0] is group]
            if not mine:
                continue
            views = [chunk[self.pieces[j].start : self.pieces[j].start + self.pieces[j].numel] for j in mine]
            g = [grad_of[j] for j in mine]
            if group["algorithm"] == "adamw":
                self._adamw(group, mine, views, g, telemetry)
            else:
                bufs = [self._piece_state(j)["momentum_buffer"] for j in mine]
                dirs = muon_momentum_(bufs, g, group["momentum"], group["nesterov"])
                directions.update(zip(mine, zip(views, dirs)))
        # 3. Newton–Schulz on each matrix's owner; 4. apply the local part of the update.
        self._orthogonalize_and_apply(present, directions, telemetry, device)
        self.has_state |= present
        # 5. P = all_gather(p): every rank gets the updated parameters, in fp32.
        flat_params = torch.empty(W * C, dtype=self.dtype, device=device)
        all_gather_flat(flat_params, chunk, self.group)
        targets = [self.entries[s.param][2].detach().view(-1)[s.lo : s.hi] for s in self.layout.segments]
        torch._foreach_copy_(targets, [flat_params[s.flat : s.flat + s.numel] for s in self.layout.segments])
        if telemetry is not None:
            telemetry.gather(self.group)

    def _adamw(self, group, mine, views, grads, telemetry) -> None:
        states = [self._piece_state(j) for j in mine]
        params = [self.pieces[j].segment.param for j in mine]
        updates = adamw_(views, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                         [self.steps[k] for k in params], beta1=group["betas"][0], beta2=group["betas"][1],
                         lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                         want_updates=telemetry is not None)
        if telemetry is not None:
            for k, u in zip(params, updates):
                telemetry.add("adamw", k, _name_or_none(group, self.entries[k][1]), u)

    def _orthogonalize_and_apply(self, present: set[int], directions: dict, telemetry, device) -> None:
        units = self.layout.units
        active = frozenset(u for u, w in enumerate(self.layout.where) if w.param in present)
        if not active:
            return
        if active not in self._executors:
            self._executors[active] = self.executor([units[u] for u in sorted(active)])
        executor = self._executors[active]
        order = sorted(active)
        position = {u: i for i, u in enumerate(order)}
        local = {position[self.pieces[j].segment.unit]: (j, view, d) for j, (view, d) in directions.items()}
        pieces = {u: d.to(executor.units[u].key.in_dtype) for u, (_, _, d) in local.items()}
        where = [self.layout.where[u] for u in order]
        results = executor.run(pieces, self.compute(executor.units, where, telemetry), device)
        for group in self.opt.param_groups:
            if group["algorithm"] != "muon":
                continue
            params, outs, scales = [], [], []
            for u, (j, view, _) in local.items():
                k = self.pieces[j].segment.param
                if self.entries[k][0] is group:
                    m = self.mats[k]
                    params.append(view)
                    outs.append(results[u])
                    scales.append(SCALE_RULES[group["scale"]](m.rows, m.cols))
            decoupled_update_(params, outs, group["lr"], group["weight_decay"], scales)

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
        for algorithm, field in (("muon", "momentum_buffer"), ("adamw", "exp_avg"), ("adamw", "exp_avg_sq")):
            ks = [k for k in saved if self.entries[k][0]["algorithm"] == algorithm]
            full = self._assemble(ks, owners, field)
            out.update({f"{self.name(k)}/{field}": t for k, t in full.items()})
        for k in saved:
            if self.entries[k][0]["algorithm"] == "adamw" and owners[k] == self.rank:
                out[f"{self.name(k)}/step"] = self.steps[k]
        return out

    def _assemble(self, ks: list[int], owners: dict[int, int], field: str) -> dict[int, torch.Tensor]:
        """Send every piece of ``field`` for parameters ``ks`` to their save owners; return the owned full tensors."""
        me, W = self.rank, self.world_size
        mine = {k: [(j, piece) for j, piece in enumerate(self.pieces) if piece.segment.param == k] for k in ks}
        device = self.entries[0][2].device
        dtype = momentum_dtype(self.entries[0][2]) if field == "momentum_buffer" else self.dtype
        send = [[] for _ in range(W)]
        for k in ks:
            for j, piece in mine[k]:
                send[owners[k]].append(self.state[j][field])
        send_sizes = [sum(t.numel() for t in ts) for ts in send]
        recv_plan = [[] for _ in range(W)]  # per source: (k, lo, hi) in the order the source sends
        for k in ks:
            if owners[k] == me:
                for r in range(W):
                    for piece in self._pieces_of(k, r):
                        recv_plan[r].append((k, piece.lo, piece.hi))
        recv_sizes = [sum(hi - lo for _, lo, hi in plan) for plan in recv_plan]
        buffer = torch.cat([t for ts in send for t in ts]) if any(send) else torch.empty(0, dtype=dtype, device=device)
        work, received = all_to_all_uneven(buffer.to(dtype), send_sizes, recv_sizes, self.group)
        work.wait()
        full = {k: torch.empty(self.entries[k][2].numel(), dtype=dtype, device=device) for k in ks if owners[k] == me}
        offset = 0
        for plan in recv_plan:
            for k, lo, hi in plan:
                full[k][lo:hi] = received[offset : offset + hi - lo]
                offset += hi - lo
        return {k: t.view(self.entries[k][2].shape) for k, t in full.items()}

    def _pieces_of(self, k: int, rank: int):
        return [piece for piece in self.layout.pieces(rank) if piece.segment.param == k]

    def load_checkpoint_state(self, available, read) -> None:
        held = sorted({piece.segment.param for piece in self.pieces})
        template = {}
        for k in held:
            group, _, p = self.entries[k]
            fields = MUON_FIELDS if group["algorithm"] == "muon" else ADAMW_FIELDS
            if all(f"{self.name(k)}/{f}" in available for f in fields):
                template.update({f"{self.name(k)}/{f}": _empty_state(p, f, full=True) for f in fields})
        read(template)
        for j, piece in enumerate(self.pieces):
            k = piece.segment.param
            group = self.entries[k][0]
            fields = MUON_FIELDS if group["algorithm"] == "muon" else ADAMW_FIELDS
            if f"{self.name(k)}/{fields[0]}" not in template:
                continue
            state = self._piece_state(j)
            for f in fields:
                value = template[f"{self.name(k)}/{f}"]
                if f == "step":
                    self.steps[k] = value
                else:
                    state[f].copy_(value.reshape(-1)[piece.lo : piece.hi])
        loaded = torch.zeros(len(self.entries), dtype=torch.int32, device=self.entries[0][2].device)
        for key in template:
            loaded[self.index_of(key.rsplit("/", 1)[0])] = 1
        dist.all_reduce(loaded, group=self.group)
        self.has_state = set(torch.nonzero(loaded).flatten().tolist())

    def state_bytes(self) -> int:
        return (sum(t.numel() * t.element_size() for s in self.state.values() for t in s.values())
                + sum(t.numel() * t.element_size() for t in self.steps.values()))
