"""Expert parallelism (EP): each MoE layer's routed experts split over the mesh dim ``ep``; tokens reach
their experts by all-to-all and come back the same way (GShard, Lepikhin et al. 2020; DeepSeek-V3).

Placement. An expert stack ``[E, f, d]`` becomes a DTensor on the ``(dp_shard, ep, tp)`` mesh with
``(Shard(0), Shard(0), Replicate())``: E splits into ``dp_shard · ep`` chunks of ``c = E / (dp_shard ·
ep)`` whole experts, and rank ``(i, j, ·)`` holds chunk ``i · ep + j``. The ``ep`` rank j serves the
experts of chunks ``{i · ep + j : i}``: before each forward it all-gathers them over ``dp_shard``
(the backward reduce-scatters their gradient), as FSDP2 does for the other parameters. Muon finds
whole experts on every rank and orthogonalizes them where they are (``muonlab.optim.engines.sharded``).

Dispatch, for the N tokens of this rank, each routed to k experts (``ExpertParallel.__call__``)::

    rows      the N·k (token, expert) pairs ordered by (destination ep rank, expert there)
    send      [x_t ; g_tj] per row (the gate weight rides along as one more column), all-to-all over ep
    compute   the received rows regrouped by expert, one grouped GEMM (models.moe.grouped_expert_ffn)
    return    the outputs all-to-all back, summed into their tokens

Gradients. On its rank, an expert's weight gradient sums the contributions of every token sent to
it by the ``ep`` peers and, after the reduce-scatter, by the ``dp_shard`` peers: ``Σ_r ∇L_r`` over the
``D = dp_shard · ep`` data shards, each ``L_r`` the mean loss over that shard's tokens. One process
on the global batch gets ``(1/D) Σ_r ∇L_r`` — what FSDP2's averaging gives every other parameter —
so the backward of the gather multiplies by ``1/D``. Tensor-parallel peers read the same tokens and
compute the same expert outputs and gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..models.moe import compute_dtype, grouped_expert_ffn

__all__ = ["ExpertParallel", "all_to_all", "gather_experts"]

# torch 2.13 renamed the tensor collectives (the old names warn); torch 2.9-2.12 have only the old ones.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = rows.new_empty((sum(out_splits), *rows.shape[1:]))
        dist.all_to_all_single(out, rows.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


def all_to_all(rows: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
    """Send ``rows`` [sum(in_splits), …] in blocks of ``in_splits`` rows to the ranks of ``group`` and
    receive ``out_splits`` rows from each; differentiable (the gradient takes the way back)."""
    return _AllToAll.apply(rows, out_splits, in_splits, group)


class _GatherExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor, group, scale: float) -> Tensor:
        ctx.group, ctx.scale = group, scale
        if group is None:
            return local.clone()
        out = local.new_empty((dist.get_world_size(group) * local.shape[0], *local.shape[1:]))
        _ALL_GATHER(out, local.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.group is None:
            return grad * ctx.scale, None, None
        local = grad.new_empty((grad.shape[0] // dist.get_world_size(ctx.group), *grad.shape[1:]))
        _REDUCE_SCATTER(local, grad.contiguous(), group=ctx.group)
        return local * ctx.scale, None, None


def gather_experts(local: Tensor, group, scale: float) -> Tensor:
    """This rank's expert chunk ``local`` all-gathered over ``group`` (None: no gather) along dim 0; the
    gradient is reduce-scattered (summed) back and multiplied by ``scale``."""
    return _GatherExperts.apply(local, group, scale)


def _local(w: Tensor) -> Tensor:
    from torch.distributed.tensor import DTensor

    return w.to_local() if isinstance(w, DTensor) else w


class ExpertParallel:
    """A drop-in ``MoE.experts_fn`` (same arguments as ``models.moe.moe_experts``) for experts split over
    ``ep_group`` and ``gather_group`` (module docstring).

    Args:
        n_experts: E, the routed experts of the layer.
        ep_group: the ``ep`` process group (its size divides E).
        gather_group: the ``dp_shard`` group the chunks are gathered over, or None when ``dp_shard`` is 1.
        data_shards: D = dp_shard · ep; expert gradients are multiplied by 1/D.
    """

    def __init__(self, n_experts: int, ep_group, gather_group, data_shards: int) -> None:
        self.ep_group, self.gather_group, self.data_shards = ep_group, gather_group, data_shards
        self.ep = dist.get_world_size(ep_group)
        gathered = dist.get_world_size(gather_group) if gather_group is not None else 1
        self.n_experts, self.per_rank, self.chunk = n_experts, n_experts // self.ep, n_experts // (self.ep * gathered)

    def _destination_order(self, experts: Tensor) -> Tensor:
        """Per (token, slot) pair: ``destination · (E / ep) + its expert's index there``."""
        chunk = experts // self.chunk
        return (chunk % self.ep) * self.per_rank + (chunk // self.ep) * self.chunk + experts % self.chunk

    def __call__(self, x: Tensor, experts: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                 backend: str = "auto", bucket: bool | None = None) -> Tensor:
        """x [N, d], experts and weights [N, k], this rank's chunks of the stacks -> [N, d]. ``bucket`` is
        not used (received groups change size every step anyway)."""
        N, d = x.shape
        k, dtype = experts.shape[1], compute_dtype(x)
        key = self._destination_order(experts.reshape(-1))
        slot_of_row = key.argsort(stable=True)
        counts = torch.bincount(key, minlength=self.n_experts)  # rows per (destination, expert there)
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts, group=self.ep_group)  # [source, my expert]
        send = counts.view(self.ep, self.per_rank).sum(1).tolist()
        arrive = received.view(self.ep, self.per_rank).sum(1).tolist()
        gate = weights.reshape(-1).index_select(0, slot_of_row).to(dtype)
        rows = torch.cat([x.to(dtype).index_select(0, slot_of_row // k), gate[:, None]], dim=1)
        arrived = all_to_all(rows, arrive, send, self.ep_group)
        expert_of_row = torch.arange(self.per_rank, device=x.device).repeat(self.ep).repeat_interleave(received)
        by_expert = expert_of_row.argsort(stable=True)
        grouped = arrived.index_select(0, by_expert)
        scale = 1.0 / self.data_shards
        w = [gather_experts(_local(t), self.gather_group, scale) for t in (w_gate, w_up, w_down)]
        xs, gates = grouped[:, :d].contiguous(), grouped[:, d]  # the grouped GEMM wants 16-byte aligned strides
        ys = grouped_expert_ffn(xs, received.view(self.ep, self.per_rank).sum(0), gates, *w, backend)
        back = torch.empty_like(ys).index_copy(0, by_expert, ys)  # in arrival order again
        returned = all_to_all(back, send, arrive, self.ep_group)
        return returned.new_zeros(N, d).index_add(0, slot_of_row // k, returned)
