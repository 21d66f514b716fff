"""FSDP2 parameters: DTensors with ``Shard(0)`` on a 1-D mesh; state sharded like them.

State is kept as DTensors in ``optimizer.state`` (so torch.distributed.checkpoint reshards it).
Each 2-D matrix's row blocks meet on one owner in an all-to-all (bf16 with bf16 Newton–Schulz),
and go back orthogonalized; expert stacks ``[E, A, B]`` are sharded on E, so whole experts are
orthogonalized where they already are (``sharded_units``). The gradient check and clipping use
the global norm over every rank's shard.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..distributed import layouts
from ..gradients import check_and_clip_pieces
from ..state import FIELDS
from ..telemetry import UpdateTelemetry
from ..update_rule import momentum_, newton_schulz_input_
from .base import Engine, _local

__all__ = ["ShardedEngine"]


def _fsdp_mesh(optimizer):
    """The one 1-D mesh every parameter is ``Shard(0)`` on; a clear error otherwise."""
    from torch.distributed.tensor import DTensor, Shard

    mesh = None
    for group in optimizer.param_groups:
        names = group.get("names")
        for i, p in enumerate(group["params"]):
            where = f"parameter {names[i] if names else i!r} of shape {tuple(p.shape)}"
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
    return mesh


class ShardedEngine(Engine):
    """``Shard(0)`` DTensor parameters (FSDP2): sharded state, all-to-all owner compute."""

    def __init__(self, optimizer, policy) -> None:
        super().__init__(optimizer, policy, _fsdp_mesh(optimizer).get_group())
        for slot in self.slots:
            p = slot.param
            offset, count = layouts.chunk_rows(p.shape[0], self.world_size)[self.rank]
            if tuple(p._local_tensor.shape) != (count, *p.shape[1:]):
                raise ValueError(f"parameter {slot.name!r}: local shard {tuple(p._local_tensor.shape)} is not the "
                                 f"torch.chunk row block {(count, *p.shape[1:])} that Shard(0) implies")

    def _sharded_state(self, k: int) -> dict:
        p = self.slots[k].param

        def as_dtensor(local: torch.Tensor):
            from torch.distributed.tensor import DTensor

            return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                      stride=p.stride())

        return self.state_of(k, p._local_tensor.shape, as_dtensor)

    def step(self, telemetry: UpdateTelemetry | None) -> None:
        grads = {k: s.param.grad._local_tensor for k, s in enumerate(self.slots) if s.param.grad is not None}
        if not grads:
            return
        device = next(iter(grads.values())).device
        if not check_and_clip_pieces(list(grads.items()), self.describe, self.policy, self.opt.max_grad_norm, device,
                                     self.process_group):
            return
        muon = []
        for group in self.opt.param_groups:
            ks = [self.index[id(p)] for p in group["params"] if self.index[id(p)] in grads]
            if not ks:
                continue
            if group["algorithm"] == "adamw":
                states = [{f: _local(v) for f, v in self._sharded_state(k).items()} for k in ks]
                self.adamw(group, ks, [self.slots[k].param._local_tensor for k in ks], [grads[k] for k in ks],
                           states, telemetry)
                continue
            for k in ks:
                momentum_(self._sharded_state(k)["momentum_buffer"]._local_tensor, grads[k], group["momentum"])
            muon += ks
        if muon:
            self._orthogonalize_and_apply(muon, grads, telemetry, device)
        if telemetry is not None:
            telemetry.gather(self.process_group)

    def _orthogonalize_and_apply(self, ks: list[int], grads: dict, telemetry, device) -> None:
        mats = {k: self.matrix_param(k) for k in ks}
        units, where, executor = self.cached(tuple(mats.values()), lambda: self._plan(list(mats.values())))

        def write_input(u: int, out: torch.Tensor) -> None:
            w, unit = where[u], units[u]
            m, group = mats[w.param], self.group(w.param)
            buf = self.opt.state[self.slots[w.param].param]["momentum_buffer"]._local_tensor
            newton_schulz_input_(out, self._local_rows(m, grads[w.param], w.first, unit.batch),
                                 self._local_rows(m, buf, w.first, unit.batch), group["momentum"], group["nesterov"])

        def apply(results: dict[int, torch.Tensor]) -> None:  # one bucket: this rank's rows of its parameters
            parts: dict[int, list] = defaultdict(list)
            for u, piece in results.items():
                parts[where[u].param].append((where[u].first, piece))
            targets = []
            for k, found in parts.items():
                local = self.slots[k].param._local_tensor
                pieces = [t for _, t in sorted(found, key=lambda x: x[0])]
                targets.append((k, local, (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).view(local.shape)))
            self.apply_muon(targets, mats)

        executor.run(write_input, self.orthogonalizer(units, where, telemetry), apply, device)

    def _plan(self, mats):
        # Looked up at call time, so a test can swap in a deliberately wrong plan.
        units, where = layouts.sharded_units(mats, self.world_size)
        return units, where, self.executor(units)

    def _local_rows(self, m, local: torch.Tensor, first: int, batch: int) -> torch.Tensor:
        """This rank's part of a unit, flat: its row block, or its whole experts [first, first + batch)."""
        if m.batch == 1:
            return local.reshape(-1)
        offset, _ = layouts.chunk_rows(m.batch, self.world_size)[self.rank]
        return local.reshape(-1, m.rows, m.cols)[first - offset : first - offset + batch].reshape(-1)

    def load_checkpoint_state(self, available, read) -> None:
        template = {}
        for k, slot in enumerate(self.slots):
            fields = FIELDS[slot.algorithm]
            if all(f"{slot.name}/{f}" in available for f in fields):
                state = self._sharded_state(k)
                template.update({f"{slot.name}/{f}": state[f] for f in fields})
        read(template)

