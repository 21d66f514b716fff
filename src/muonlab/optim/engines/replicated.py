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

from collections import defaultdict

import torch

from ..distributed.layouts import replicated_units
from ..gradients import check_and_clip_whole
from ..state import FIELDS, new_state
from ..telemetry import UpdateTelemetry
from ..update_rule import momentum_, newton_schulz_input_
from .base import Engine

__all__ = ["ReplicatedEngine"]


class ReplicatedEngine(Engine):
    """Full state on every rank; Newton–Schulz split among owners; results shared (DDP)."""

    def step(self, telemetry: UpdateTelemetry | None) -> None:
        present = [k for k, s in enumerate(self.slots) if s.param.grad is not None]
        if not check_and_clip_whole([self.slots[k].param for k in present], lambda i: self.describe(present[i]),
                                    self.policy, self.opt.max_grad_norm):
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
            momentum_(bufs[k], grads[k], self.group(k)["momentum"])

        def write_input(u: int, out: torch.Tensor) -> None:
            w, unit = where[u], units[u]
            m, group = mats[w.param], self.group(w.param)
            rows = slice(w.first, w.first + unit.batch)
            newton_schulz_input_(
                out.view(unit.batch, m.rows, m.cols),
                grads[w.param].reshape(m.batch, m.rows, m.cols)[rows],
                bufs[w.param].view(m.batch, m.rows, m.cols)[rows],
                group["momentum"],
                group["nesterov"],
            )

        def apply(results: dict[int, torch.Tensor]) -> None:  # one bucket: every piece of its parameters
            parts: dict[int, list] = defaultdict(list)
            for u, piece in results.items():
                parts[where[u].param].append((where[u].first, piece))
            targets = []
            for k, found in parts.items():
                pieces = [t for _, t in sorted(found, key=lambda x: x[0])]
                p = self.slots[k].param
                targets.append((k, p, (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).view(p.shape)))
            self.apply_muon(targets, mats)

        device = next(iter(bufs.values())).device
        executor.run(write_input, self.orthogonalizer(units, where, telemetry), apply, device)

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
        read(template)
        for key, value in template.items():
            name, field = key.rsplit("/", 1)
            self.opt.state[self.slots[self.by_name[name]].param][field] = value
