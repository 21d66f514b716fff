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
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

import torch

from ..distributed.layouts import MatrixParam, UnitOf
from ..distributed.owners import OwnerCompute, Unit
from ..gradients import NonFinitePolicy
from ..newton_schulz import choose_method, get_coefficient_set, ns_flops, orthogonalize
from ..scaling import SCALE_RULES, block_shape, stored_matrix_shape
from ..state import FIELDS, momentum_dtype, new_state
from ..telemetry import UpdateTelemetry
from ..update_rule import adamw_, decoupled_update_, exchange_dtypes, unit_rms_

__all__ = ["BucketKey", "Engine", "ParamSlot"]


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
    ``blocks`` say how the owner turns it into the logical matrices it orthogonalizes
    (:func:`~muonlab.optim.scaling.block_shape`): each stored ``[rows, cols]`` becomes ``blocks``
    matrices of :attr:`logical_shape`.
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
    transposed: bool = False
    blocks: int = 1

    @property
    def logical_shape(self) -> tuple[int, int]:
        """``[out, in]`` of each matrix orthogonalized (one block of a fused projection)."""
        return block_shape(self.rows, self.cols, self.transposed, self.blocks)

    @property
    def cost(self) -> int:
        """Relative size, to run the largest buckets first."""
        rows, cols = self.logical_shape
        return self.blocks * min(rows, cols) ** 2 * max(rows, cols)

    def to_logical(self, batch: torch.Tensor) -> torch.Tensor:
        """A stored batch ``[N, rows, cols]`` as the ``[N·blocks, *logical_shape]`` matrices to orthogonalize."""
        if self.transposed:
            batch = batch.mT.contiguous()
        return batch.reshape(-1, *self.logical_shape)

    def to_stored(self, logical: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_logical`: ``[N·blocks, *logical_shape]`` back to ``[N, rows, cols]``."""
        rows, cols = (self.cols, self.rows) if self.transposed else (self.rows, self.cols)
        batch = logical.reshape(-1, rows, cols)
        return batch.mT.contiguous() if self.transposed else batch


def param_slots(optimizer) -> list[ParamSlot]:
    slots = []
    for g, group in enumerate(optimizer.param_groups):
        names = group.get("names")
        for i, p in enumerate(group["params"]):
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

    def group(self, k: int) -> dict[str, Any]:
        """The current parameter group of parameter k."""
        return self.opt.param_groups[self.slots[k].group_index]

    # ---- planning

    def matrix_param(self, k: int) -> MatrixParam:
        """The Muon view of parameter k: a batch of [rows, cols] matrices, its bucket, its cost."""
        slot = self.slots[k]
        group, shape = self.group(k), tuple(slot.param.shape)
        rows, cols = stored_matrix_shape(shape, stacked=group.get("role") != "hidden")
        dtype, method = group["ns_dtype"], group["ns_method"]
        in_dtype, out_dtype = exchange_dtypes(dtype, method, momentum_dtype(slot.param.dtype))
        key = BucketKey(rows, cols, group["ns_steps"], str(group["ns_coefficients"]), dtype, method, group["ns_eps"],
                        in_dtype, out_dtype, bool(group.get("transposed", False)), group.get("blocks", 1))
        m, n = sorted(key.logical_shape)
        cset = get_coefficient_set(group["ns_coefficients"])
        chosen = choose_method(method, m, n, group["ns_steps"], dtype, cset)
        cost = key.blocks * ns_flops(m, n, group["ns_steps"], chosen if chosen != "svd" else "standard", cset)
        return MatrixParam(k, key, math.prod(shape) // (rows * cols), rows, cols, float(cost))

    def cached(self, signature: Hashable, build: Callable[[], Any]) -> Any:
        """The plan for ``signature`` (e.g. which matrices have gradients), built once by ``build``."""
        if signature not in self._plans:
            self._plans[signature] = build()
        return self._plans[signature]

    def executor(self, units: list[Unit]) -> OwnerCompute:
        return OwnerCompute(units, self.rank, self.world_size, self.process_group,
                            dtypes=lambda key: (key.in_dtype, key.out_dtype), order=lambda key: -key.cost)

    # ---- the Muon update: Newton–Schulz on owners, then the decoupled update on every holder

    def orthogonalizer(self, units: list[Unit], where: list[UnitOf], telemetry: UpdateTelemetry | None):
        """The owner's batch function: Newton–Schulz of a bucket's batch (on its logical matrices,
        ``BucketKey.to_logical``); under a normalizing scale rule (``"update_norm"``) each logical
        matrix divided by its RMS; plus telemetry on whole results."""

        def run(key: BucketKey, owned: list[int], batch: torch.Tensor) -> torch.Tensor:
            group = self.group(where[owned[0]].param)
            out = orthogonalize(key.to_logical(batch), group["ns_coefficients"], key.steps, key.dtype, key.eps,
                                key.method)
            offset = 0
            for position, u in enumerate(owned):
                O = out[offset : offset + units[u].batch * key.blocks]
                offset += units[u].batch * key.blocks
                k = where[u].param
                settings = self.group(k)
                rule = SCALE_RULES[settings["scale"]]
                s = rule(*key.logical_shape, settings["update_rms"])
                if telemetry is not None and position == 0:  # before normalizing: O₀'s update is (s / RMS(O₀))·O₀
                    rms = float(O[0].double().pow(2).mean().sqrt()) if rule.normalizes else 1.0
                    telemetry.add_sample(O[0], s / max(rms, 1e-30))
                if rule.normalizes:
                    unit_rms_(O)
                if telemetry is not None:
                    telemetry.add("muon", k, self.slots[k].label, O, s)
            return key.to_stored(out)

        return run

    def apply_muon(self, targets: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
                   mats: dict[int, MatrixParam]) -> None:
        """``W ← W(1 − lr·λ) − lr·s·Õ`` for each ``(parameter k, W or a piece of it, Õ of that piece)``."""
        for k, target, update in targets:
            group, m = self.group(k), mats[k]
            scale = SCALE_RULES[group["scale"]](*m.key.logical_shape, group["update_rms"])
            decoupled_update_(target, update, group["lr"], group["weight_decay"], scale)

    # ---- AdamW on whatever this engine holds of each parameter

    def adamw(self, group: dict[str, Any], ks: list[int], params: list[torch.Tensor], grads: list[torch.Tensor],
              states: list[dict[str, torch.Tensor]], telemetry: UpdateTelemetry | None) -> None:
        """One AdamW step of ``group`` on ``params`` (whole parameters or pieces) of parameters ``ks``."""
        updates = adamw_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                         [s["step"] for s in states], beta1=group["betas"][0], beta2=group["betas"][1],
                         lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                         want_updates=telemetry is not None)
        if telemetry is not None:
            for k, u in zip(ks, updates):
                telemetry.add("adamw", k, self.slots[k].label, u)

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
        out = {}
        for slot in self.slots:
            for field, value in self.opt.state.get(slot.param, {}).items():
                if isinstance(value, torch.Tensor):
                    out[f"{slot.name}/{field}"] = value
        return out

    def load_checkpoint_state(self, available: set[str], read: Callable[[dict[str, torch.Tensor]], None]) -> None:
        """Fill the state from a checkpoint: ``read(template)`` fills the given tensors in place."""
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank."""
        return sum(_local(v).numel() * v.element_size() for s in self.opt.state.values()
                   for v in s.values() if isinstance(v, torch.Tensor))


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; any other tensor itself."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t
