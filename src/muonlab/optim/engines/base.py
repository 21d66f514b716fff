"""What every engine shares: the parameter records, the plan cache, Newton–Schulz on owners, the
Muon and AdamW tails, and checkpoint-state naming.

Glossary of the planning records (defined in :mod:`muonlab.optim.distributed`):

- :class:`ParamSlot` (here): one parameter of the optimizer — its group, its position there, the
  tensor, and its name.
- ``MatrixParam``: a Muon parameter as Newton–Schulz sees it — ``batch`` matrices ``[rows, cols]``,
  its bucket key and the Newton–Schulz FLOPs of one matrix.
- ``BucketKey`` (here): everything that makes two matrices' Newton–Schulz calls one batched call.
- ``Unit``: a batch of same-key matrices orthogonalized on one owner rank, with the flat range each
  rank contributes and the range each rank needs back; ``UnitOf`` says which matrices of which
  parameter a unit holds.
- ``OwnerCompute``: runs a batch function once per unit on its owner and moves the pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import torch

from ..blocks import Blocks, parse_blocks
from ..distributed.layouts import MatrixParam, UnitOf
from ..distributed.owners import OwnerCompute, Unit
from ..fused import fused_cautious_update_, fused_normuon_
from ..gradients import NonFinitePolicy, update_limit
from ..newton_schulz import choose_method, get_coefficient_set, ns_flops, orthogonalize
from ..scaling import SCALE_RULES, stored_matrix_shape
from ..state import FIELDS, momentum_dtype, new_state
from ..telemetry import UpdateTelemetry
from ..update_rule import (
    adamw_,
    cautious_mask,
    decoupled_update_,
    exchange_dtypes,
    holder_scale,
    momentum_,
    newton_schulz_input_,
    normuon_,
    unit_rms_,
)

__all__ = ["BucketKey", "Engine", "ParamSlot", "Placement"]


class ParamSlot(NamedTuple):
    """One parameter of the optimizer, in the order of its groups and their params."""

    group_index: int  # its group is optimizer.param_groups[group_index], looked up live (a loaded
    # state dict replaces the group dicts, and schedulers change their lr)
    index: int  # position within the group
    param: torch.Tensor
    algorithm: str
    name: str  # the group's name for it, or "group{g}.param{i}"; keys checkpoint state
    label: str | None  # the group's name for it, if the group names its parameters (telemetry keys)

    def describe(self) -> str:
        """For error messages: the quoted name, or the position and shape."""
        return repr(self.label) if self.label else f"#{self.index} of shape {tuple(self.param.shape)}"


class BucketKey(NamedTuple):
    """Everything that makes two matrices' Newton–Schulz calls one batched call.

    ``rows``, ``cols`` are the stored matrix (how pieces travel between ranks); ``transposed`` and
    ``blocks`` say how the owner turns it into the matrices it orthogonalizes: the logical matrix
    ``[out, in]`` (the stored one, or its transpose), cut into the grid of :class:`Blocks`.
    """

    rows: int
    cols: int
    steps: int
    coefficients: str
    dtype: torch.dtype
    method: str
    eps: float
    in_dtype: torch.dtype  # of the Newton–Schulz input (and of pieces sent to the owner)
    out_dtype: torch.dtype  # of the results (and of pieces sent back)
    transposed: bool
    blocks: Blocks

    @property
    def logical_shape(self) -> tuple[int, int]:
        """``[out, in]`` of the logical matrix (before it is cut into blocks)."""
        return (self.cols, self.rows) if self.transposed else (self.rows, self.cols)

    @property
    def cost(self) -> int:
        """Relative size, to run the largest buckets first."""
        return sum(min(r[1] - r[0], c[1] - c[0]) ** 2 * max(r[1] - r[0], c[1] - c[0])
                   for _, _, r, c in self.blocks.grid())

    def restrict(self, rows: tuple[int, int], cols: tuple[int, int]) -> BucketKey | None:
        """The key of the stored region ``rows × cols`` orthogonalized where it lies, if it is a union
        of whole blocks of a plain (not transposed) matrix; else None."""
        blocks = None if self.transposed else self.blocks.restrict(rows, cols)
        if blocks is None:
            return None
        return self._replace(rows=rows[1] - rows[0], cols=cols[1] - cols[0], blocks=blocks)

    def region(self, rows: tuple[int, int], cols: tuple[int, int]) -> BucketKey:
        """The key of the stored region ``rows × cols``: its whole blocks (:meth:`restrict`), or, for a
        region that cuts a block (``tp_mode="blockwise"``'s approximation), the region as one block."""
        exact = self.restrict(rows, cols)
        if exact is not None:
            return exact
        return self._replace(rows=rows[1] - rows[0], cols=cols[1] - cols[0],
                             blocks=Blocks.whole(rows[1] - rows[0], cols[1] - cols[0]))

    def to_logical(self, batch: torch.Tensor) -> torch.Tensor:
        """A stored batch ``[N, rows, cols]`` as the logical matrices ``[N, out, in]``."""
        return batch.mT.contiguous() if self.transposed else batch

    def to_stored(self, logical: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_logical`."""
        return logical.mT.contiguous() if self.transposed else logical


class Placement(NamedTuple):
    """Where one step's Muon pieces live on this rank — all an engine tells :meth:`Engine.muon_step`.

    ``units``/``where``/``executor``: the owner-compute plan (:mod:`muonlab.optim.distributed`);
    ``momenta``: ``(parameter, gradient piece, momentum piece)`` for every piece this rank holds;
    ``inputs(u)``: ``(gradient, momentum)`` pieces that are this rank's input region of unit ``u``;
    ``target(u)``: the parameter piece that receives this rank's output region of unit ``u``.
    """

    units: list
    where: list
    executor: OwnerCompute
    momenta: list[tuple[int, torch.Tensor, torch.Tensor]]
    inputs: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    target: Callable[[int], torch.Tensor]
    device: torch.device


def param_slots(optimizer) -> list[ParamSlot]:
    """Every parameter the optimizer updates; empty ones (no element) have nothing to update and are skipped."""
    slots = []
    for g, group in enumerate(optimizer.param_groups):
        names = group.get("names")
        for i, p in enumerate(group["params"]):
            if p.numel() == 0:
                continue
            slots.append(ParamSlot(g, i, p, group["algorithm"], names[i] if names else f"group{g}.param{i}",
                                   names[i] if names else None))
    return slots


class Engine:
    """Bookkeeping common to every layout; subclasses implement ``step`` and the checkpoint state.

    Args:
        optimizer: the :class:`~muonlab.optim.Muon` whose groups the engine steps.
        policy: the optimizer's non-finite policy (owner of ``skipped_steps``).
        process_group: None on one process, where nothing is ever communicated.
    """

    partitioned_state = False  # True where optimizer.state does not hold this rank's state (ZeRO-1)

    def __init__(self, optimizer, policy: NonFinitePolicy, process_group=None) -> None:
        import torch.distributed as dist

        self.opt = optimizer
        self.policy = policy
        self.process_group = process_group
        self.rank = dist.get_rank(process_group) if process_group is not None else 0
        self.world_size = dist.get_world_size(process_group) if process_group is not None else 1
        self.slots = param_slots(optimizer)
        self.index = {id(s.param): k for k, s in enumerate(self.slots)}
        self.by_name = {s.name: k for k, s in enumerate(self.slots)}
        self._plans: dict[Hashable, Any] = {}
        self._row_plan: Placement | None = None  # the plan whose owners hold the current NorMuon rows

    def group(self, k: int) -> dict[str, Any]:
        """The current parameter group of parameter k."""
        return self.opt.param_groups[self.slots[k].group_index]

    # ---- planning

    def matrix_param(self, k: int) -> MatrixParam:
        """The Muon view of parameter k: a batch of [rows, cols] matrices, its bucket, its cost."""
        slot = self.slots[k]
        group, shape = self.group(k), tuple(slot.param.shape)
        rows, cols = stored_matrix_shape(shape, stacked=group.get("role") != "hidden")
        transposed = bool(group.get("transposed", False))
        out_features, in_features = (cols, rows) if transposed else (rows, cols)
        blocks = parse_blocks(out_features, in_features, group.get("blocks", 1), group.get("col_blocks", 1))
        dtype, method = group["ns_dtype"], group["ns_method"]
        in_dtype, out_dtype = exchange_dtypes(dtype, method, momentum_dtype(slot.param.dtype))
        key = BucketKey(rows, cols, group["ns_steps"], str(group["ns_coefficients"]), dtype, method, group["ns_eps"],
                        in_dtype, out_dtype, transposed, blocks)
        cset = get_coefficient_set(group["ns_coefficients"])
        cost = 0
        for _, _, r, c in blocks.grid():
            m, n = sorted((r[1] - r[0], c[1] - c[0]))
            chosen = choose_method(method, m, n, group["ns_steps"], dtype, cset)
            cost += ns_flops(m, n, group["ns_steps"], chosen if chosen != "svd" else "standard", cset)
        return MatrixParam(k, key, math.prod(shape) // (rows * cols), rows, cols, float(cost))

    def cached(self, signature: Hashable, build: Callable[[], Any]) -> Any:
        """The plan for ``signature`` (e.g. which matrices have gradients), built once by ``build``."""
        if signature not in self._plans:
            self._plans[signature] = build()
        return self._plans[signature]

    def executor(self, units: list[Unit]) -> OwnerCompute:
        return OwnerCompute(units, self.rank, self.world_size, self.process_group,
                            dtypes=lambda key: (key.in_dtype, key.out_dtype), order=lambda key: -key.cost)

    # ---- the Muon step

    def muon_step(self, place: Placement, telemetry: UpdateTelemetry | None) -> None:
        """One Muon step of every matrix this rank holds a piece of, in the papers' order::

            M ← μM + G                                   momentum_            (every holder, its pieces)
            X = G + μM (Nesterov) or M                   newton_schulz_input_ (sent to the owner)
            O_b = NS(X_b) for each block b               orthogonalize        (owner: whole blocks)
            O_b ← NorMuon(O_b, v_b)                      normuon_             (owner, if normuon)
                                                         or fused_normuon_ (normuon, compile: two compiled passes)
            O_b ← O_b / RMS(O_b)                         unit_rms_            (owner, scale="update_norm")
            U_b = s(shape of b) · O_b                    scale_rule           (owner if blocks differ in shape)
            W ← W − lr·(U + λ·𝟙(U⊙W ≥ 0)⊙W)              decoupled_update_    (every holder; mask if cautious_wd)
                                                         or fused_cautious_update_ (cautious_wd, compile: one pass)

        ``place`` (the engine) says only where the pieces, owners and state are; the math is the
        pure functions of :mod:`muonlab.optim.update_rule`, the same on every engine and mesh.
        """
        units, where = place.units, place.where
        for k, grad, buf in place.momenta:
            momentum_(buf, grad, self.group(k)["momentum"])
        self.sync_row_state(place)

        def write_input(u: int, out: torch.Tensor) -> None:
            group = self.group(where[u].param)
            grad, buf = place.inputs(u)
            newton_schulz_input_(out.view(grad.shape), grad, buf, group["momentum"], group["nesterov"])

        def on_owner(key: BucketKey, owned: list[int], batch: torch.Tensor) -> torch.Tensor:
            group = self.group(where[owned[0]].param)
            parts = [orthogonalize(x, group["ns_coefficients"], key.steps, key.dtype, key.eps, key.method)
                     for x in key.blocks.split(key.to_logical(batch))]
            first = 0
            for u in owned:
                self.post_orthogonalize(key, u, place, [p[first * n : (first + units[u].batch) * n]
                                                         for p, n in zip(parts, self.blocks_per_shape(key))],
                                        telemetry, sample=u == owned[0])
                first += units[u].batch
            return key.to_stored(key.blocks.merge(parts, batch.shape[0]))

        def apply(results: dict[int, torch.Tensor]) -> None:
            for u, piece in results.items():
                k, target = where[u].param, place.target(u)
                group, update = self.group(k), piece.view(target.shape)
                scale, cautious = holder_scale(units[u].key, group), group.get("cautious_wd")
                if (cautious and telemetry is None and self.opt.compile and group["weight_decay"] != 0.0
                        and fused_cautious_update_(target, update, group["lr"], group["weight_decay"], scale)):
                    continue  # one compiled pass; telemetry steps keep the eager mask to count it
                mask = cautious_mask(update, target) if cautious else None
                if telemetry is not None and mask is not None:
                    telemetry.add_decayed("muon", mask)
                decoupled_update_(target, update, group["lr"], group["weight_decay"], scale, mask)

        place.executor.run(write_input, on_owner, apply, place.device)

    @staticmethod
    def blocks_per_shape(key: BucketKey) -> list[int]:
        """How many blocks of each distinct shape one matrix of ``key`` has (``Blocks.split`` order)."""
        grid = [(r[1] - r[0], c[1] - c[0]) for _, _, r, c in key.blocks.grid()]
        return [grid.count(shape) for shape in key.blocks.shapes()]

    def post_orthogonalize(self, key: BucketKey, u: int, place: Placement, parts: list[torch.Tensor],
                           telemetry: UpdateTelemetry | None, sample: bool) -> None:
        """On the owner, unit ``u``'s orthogonalized blocks (one batch per block shape, in place):
        NorMuon's row normalization, the RMS normalization of ``scale="update_norm"``, and each
        block's own scale where the blocks' shapes differ; telemetry on the results (``sample``:
        also the Newton–Schulz quality of its first block, one per bucket and owner)."""
        k, group = place.where[u].param, self.group(place.where[u].param)
        rule = SCALE_RULES[group["scale"]]
        folded = key.blocks.uniform is None
        index = self.row_index(key, place.where[u]) if group.get("normuon") else None
        for p, O in enumerate(parts):
            s = rule(*O.shape[-2:], group["update_rms"])
            if telemetry is not None and p == 0 and sample:  # before normalizing: the update is (s / RMS(O₀))·O₀
                rms = float(O[0].double().pow(2).mean().sqrt()) if rule.normalizes else 1.0
                telemetry.add_sample(O[0], s / max(rms, 1e-30))
            if telemetry is not None and p == 0 and index is not None:
                telemetry.add_row_spread("before", O)
            if index is not None:
                first, batch = place.where[u].first, place.units[u].batch
                state = self.row_state(k)[first : first + batch]
                rows = state[:, index[p]].reshape(O.shape[0], O.shape[1])
                if not (self.opt.compile and fused_normuon_(O, rows, group["normuon_beta2"], group["normuon_eps"])):
                    normuon_(O, rows, group["normuon_beta2"], group["normuon_eps"])
                state[:, index[p]] = rows.view(batch, *index[p].shape)
                if telemetry is not None and p == 0:
                    telemetry.add_row_spread("after", O)
            if rule.normalizes:
                unit_rms_(O)
            if folded:
                O.mul_(s)
            if telemetry is not None:
                telemetry.add("muon", k, self.slots[k].label, O, 1.0 if folded else s)
                if key.blocks.count > 1:
                    telemetry.add_blocks(self.slots[k].label, O, 1.0 if folded else s)

    def row_index(self, key: BucketKey, unit_of: UnitOf) -> list[torch.Tensor]:
        """Where the rows of each block shape of a unit lie in its parameter's NorMuon row state."""
        k, (row0, col0) = unit_of.param, unit_of.origin
        signature = ("rows", k, key, row0, col0)
        if signature not in self._plans:
            whole = self.matrix_param(k).key.blocks
            self._plans[signature] = key.blocks.row_index(row0, whole.col_block_of(col0), whole.shape[0])
        return self._plans[signature]

    # ---- NorMuon's row state: one vector per matrix, updated by the matrix's owner

    def row_state(self, k: int) -> torch.Tensor:
        """Parameter k's NorMuon second moment ``[matrices, column blocks · out]`` (fp32), held whole
        on every rank; each step only the owner of a matrix updates its rows (:meth:`sync_row_state`)."""
        state = self.opt.state[self.slots[k].param]
        if "normuon_v" not in state:
            state["normuon_v"] = self.new_row_state(k)
        return state["normuon_v"]

    def new_row_state(self, k: int) -> torch.Tensor:
        m = self.matrix_param(k)
        return torch.zeros(m.batch, len(m.key.blocks.cols) * m.key.blocks.shape[0], dtype=torch.float32,
                           device=_local(self.slots[k].param).device)

    def row_states(self) -> dict[int, torch.Tensor]:
        """Every NorMuon row state that exists, by parameter."""
        return {k: self.opt.state[s.param]["normuon_v"] for k, s in enumerate(self.slots)
                if "normuon_v" in self.opt.state.get(s.param, {})}

    def sync_row_state(self, place: Placement | None) -> None:
        """Make every rank's NorMuon row states equal before the owners change (a new plan) or a
        checkpoint (``place=None``): each row from the rank that owned it under the last plan,
        rows nobody owned from this rank (they are already equal). One small all-reduce."""
        last = self._row_plan
        if place is not None:
            if last is not None and place.executor is last.executor:
                return
            self._row_plan = place
        if self.world_size == 1 or last is None:
            return
        # every rank, the same parameters in the same order (rows a rank never owned start at zero)
        states = {k: self.row_state(k) for k, s in enumerate(self.slots)
                  if s.algorithm == "muon" and self.group(k).get("normuon")}
        if not states:
            return
        mine = {k: torch.zeros_like(v) for k, v in states.items()}
        for unit, unit_of in zip(last.units, last.where):
            if unit.owner == self.rank and unit_of.param in mine and self.group(unit_of.param).get("normuon"):
                index = torch.cat([i.reshape(-1) for i in self.row_index(unit.key, unit_of)])
                mine[unit_of.param][unit_of.first : unit_of.first + unit.batch, index] = 1.0
        flat = torch.cat([torch.cat([(v * mine[k]).reshape(-1), mine[k].reshape(-1)]) for k, v in states.items()])
        import torch.distributed as dist

        dist.all_reduce(flat, group=self.process_group)
        offset = 0
        for v in states.values():
            n = v.numel()
            owned, total = flat[offset : offset + n], flat[offset + n : offset + 2 * n]
            v.copy_(torch.where(total.view(v.shape) > 0, owned.view(v.shape), v))
            offset += 2 * n

    # ---- AdamW on whatever this engine holds of each parameter

    def adamw(self, group: dict[str, Any], ks: list[int], params: list[torch.Tensor], grads: list[torch.Tensor],
              states: list[dict[str, torch.Tensor]], telemetry: UpdateTelemetry | None) -> None:
        """One AdamW step of ``group`` on ``params`` (whole parameters or pieces) of parameters ``ks``."""
        updates, masks = adamw_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                [s["step"] for s in states], beta1=group["betas"][0], beta2=group["betas"][1],
                                lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                                want_updates=telemetry is not None, cautious=bool(group.get("cautious_wd")))
        if telemetry is not None:
            for k, u in zip(ks, updates):
                telemetry.add("adamw", k, self.slots[k].label, u)
            for mask in masks or []:
                telemetry.add_decayed("adamw", mask)

    def update_limit(self, k: int) -> float:
        """The gradient norm at and past which parameter k's update may not be finite (``gradients.update_limit``)."""
        return update_limit(self.slots[k].algorithm, self.group(k).get("momentum", 0.0))

    def describe(self, k: int) -> str:
        """Parameter k for an error message (any k: an index past the end names no parameter)."""
        return self.slots[k].describe() if 0 <= k < len(self.slots) else "(unknown)"

    # ---- state kept in optimizer.state (replicated and FSDP2; ZeRO-1 overrides)

    def state_of(self, k: int, shape, wrap: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict:
        """Parameter k's state in ``optimizer.state``, created with :func:`new_state` on first use."""
        slot = self.slots[k]
        state = self.opt.state[slot.param]
        fields = FIELDS[slot.algorithm]
        if fields[0] not in state:
            device = _local(slot.param).device
            for field in fields:
                value = new_state(field, shape, slot.param.dtype, device)
                state[field] = value if field == "step" else wrap(value)
        return state

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Per-parameter state tensors to save, keyed ``"<name>/<field>"``, at logical shape."""
        self.sync_row_state(None)
        out = {}
        for slot in self.slots:
            for field, value in self.opt.state.get(slot.param, {}).items():
                if isinstance(value, torch.Tensor):
                    out[f"{slot.name}/{field}"] = value
        return out

    def load_checkpoint_state(self, available: set[str], read: Callable[[dict[str, torch.Tensor]], None]) -> None:
        """Fill the state from a checkpoint: ``read(template)`` fills the given tensors in place."""
        raise NotImplementedError

    def row_state_template(self, available: set[str]) -> dict[str, torch.Tensor]:
        """Tensors for the NorMuon row states a checkpoint holds (whole, on every rank)."""
        return {f"{s.name}/normuon_v": self.new_row_state(k) for k, s in enumerate(self.slots)
                if s.algorithm == "muon" and f"{s.name}/normuon_v" in available}

    def restore_row_state(self, template: dict[str, torch.Tensor]) -> None:
        """Keep the row states ``read`` filled into :meth:`row_state_template`'s tensors."""
        for key, value in template.items():
            name, field = key.rsplit("/", 1)
            if field == "normuon_v":
                self.opt.state[self.slots[self.by_name[name]].param]["normuon_v"] = value
        self._row_plan = None  # every rank now holds the same rows

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank."""
        return sum(_local(v).numel() * v.element_size() for s in self.opt.state.values()
                   for v in s.values() if isinstance(v, torch.Tensor))


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; any other tensor itself."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t
