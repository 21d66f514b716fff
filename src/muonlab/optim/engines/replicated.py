"""Replicated parameters: one process, or DDP — the fast single-process path is this engine at world size 1.

Every rank holds the whole (already averaged) gradient and the whole optimizer state, as with
any optimizer under DDP. The Muon step:

1. check and clip the gradient (:func:`~muonlab.optim.gradients.check_and_clip_whole`);
2. ``M ← G + μM`` for every Muon parameter, in one pass over ``M``;
3. Newton–Schulz: all same-shape matrices (an expert stack ``[E, A, B]`` counts as ``E``) form one
   ``[N, rows, cols]`` batch per bucket, the input ``G + μM`` written straight into it in the
   Newton–Schulz dtype. On N ranks the matrices are split among owner ranks by cost and each
   owner's results are shared (``replicated_units``), so no rank repeats another's work; with
   world size 1 every matrix is local and nothing is sent;
4. ``W ← W(1 − lr·λ) − lr·s·Õ``, then AdamW on the AdamW groups.
"""

from __future__ import annotations

import torch

from ..distributed.layouts import replicated_units
from ..gradients import check_and_clip_whole
from ..state import FIELDS, new_state
from ..telemetry import UpdateTelemetry
from .base import Engine, Placement

__all__ = ["ReplicatedEngine"]


class ReplicatedEngine(Engine):
    """Full state on every rank; Newton–Schulz split among owners; results shared (DDP)."""

    def step(self, telemetry: UpdateTelemetry | None) -> None:
        present = [k for k, s in enumerate(self.slots) if s.param.grad is not None]
        if not check_and_clip_whole([self.slots[k].param for k in present], lambda i: self.describe(present[i]),
                                    self.policy, self.opt.max_grad_norm, [self.update_limit(k) for k in present]):
            return
        muon = [k for k in present if self.slots[k].algorithm == "muon"]
        if muon:
            self._muon(muon, telemetry)
        self._adamw([k for k in present if self.slots[k].algorithm == "adamw"],
                    telemetry if self.rank == 0 else None)
        if telemetry is not None and self.world_size > 1:
            telemetry.gather(self.process_group)

    def _muon(self, ks: list[int], telemetry: UpdateTelemetry | None) -> None:
        mats = {k: self.matrix_param(k) for k in ks}
        units, where, executor = self.cached(tuple(mats.values()), lambda: self._plan(list(mats.values())))
        grads, bufs = {}, {}
        for k in ks:
            p = self.slots[k].param
            bufs[k] = self.state_of(k, p.shape)["momentum_buffer"]
            grads[k] = p.grad if p.grad.dtype == bufs[k].dtype else p.grad.to(bufs[k].dtype)

        def matrices(k: int, t: torch.Tensor, u: int) -> torch.Tensor:  # unit u's matrices of a whole tensor
            m = mats[k]
            return t.view(m.batch, m.rows, m.cols)[where[u].first : where[u].first + units[u].batch]

        def inputs(u: int) -> tuple[torch.Tensor, torch.Tensor]:
            k = where[u].param
            return matrices(k, grads[k].reshape(bufs[k].shape), u), matrices(k, bufs[k], u)

        def target(u: int) -> torch.Tensor:
            return matrices(where[u].param, self.slots[where[u].param].param, u)

        device = next(iter(bufs.values())).device
        momenta = [(k, grads[k], bufs[k]) for k in ks]
        self.muon_step(Placement(units, where, executor, momenta, inputs, target, device), telemetry)

    def _plan(self, mats):
        units, where = replicated_units(mats, self.world_size)
        return units, where, self.executor(units)

    def _adamw(self, ks: list[int], telemetry: UpdateTelemetry | None) -> None:
        for g, group in enumerate(self.opt.param_groups):
            mine = [k for k in ks if self.slots[k].group_index == g]
            if not mine:
                continue
            params = [self.slots[k].param for k in mine]
            states = [self.state_of(k, p.shape) for k, p in zip(mine, params)]
            self.adamw(group, mine, params, [p.grad for p in params], states, telemetry)

    def load_checkpoint_state(self, available, read) -> None:
        template = {}
        for slot in self.slots:
            for field in FIELDS[slot.algorithm]:
                key = f"{slot.name}/{field}"
                if key in available:
                    template[key] = new_state(field, slot.param.shape, slot.param.dtype, slot.param.device)
        rows = self.row_state_template(available)
        read({**template, **rows})
        self.restore_row_state(rows)
        for key, value in template.items():
            name, field = key.rsplit("/", 1)
            self.opt.state[self.slots[self.by_name[name]].param][field] = value
