"""A named device mesh and the parallelism it applies to an unmodified model: FSDP2 × TP × EP.

::

    mesh = init_mesh("cpu", dp_shard=2, ep=2)     # dims ("dp_shard", "ep", "tp"), any of size 1
    parallelize(model, mesh)                      # TP on "tp", EP on "ep", then FSDP2 on the data-parallel ranks

Tensor parallelism (Megatron-LM, Shoeybi et al. 2019) with torch's own
``torch.distributed.tensor.parallel``: in every block, the attention's ``wq``, ``wk``, ``wv`` (MLA:
the per-head ``wq_nope``, ``wq_rope``, ``wk_up``, ``wv_up``) and the MLP's input projections
(``w_gate``, ``w_up`` / ``w_in``, an MoE layer's shared experts included) are column-wise
(``Shard(0)`` of the weight: each rank computes a slice of the heads / hidden units), the output
projections ``wo``, ``w_down`` / ``w_out`` row-wise (``Shard(1)``: partial sums, all-reduced). The
attention modules read their local head counts off the projections' outputs, so the model is
unchanged. MLA's low-rank projections (``wq_down``, ``wkv_down``, their norms) and its shared rotary
key ``wk_rope`` stay whole on every tensor-parallel rank; ``wk_rope``'s output feeds every local
head, so its gradient is all-reduced over ``tp`` (each rank's heads contribute a part; the other
replicated inputs reach column-wise layers, whose input gradients torch all-reduces). Embedding,
norms, LM head, MoE router and routed experts stay whole on every tensor-parallel rank (marked
``"replicated"``: tensor-parallel ranks see the same batch and compute the same gradient for them)
unless FSDP2 or EP shards them.

Expert parallelism (:mod:`.experts`): every MoE layer's routed expert stacks are split on the
expert dim over ``dp_shard × ep`` ranks, and tokens travel to their experts by all-to-all over
``ep``. Ranks that differ in their ``dp_shard`` or ``ep`` coordinate read different data (the
data-parallel size is ``dp_shard · ep``, :func:`data_parallel_rank`); FSDP2 shards every other
parameter over those ranks together (:func:`data_parallel_mesh`). Ranks that differ only in their
``tp`` coordinate read the same data.

Mesh and model must fit — ``tp`` dividing every attention's (and MLA's) heads and every MLP's
hidden width, ``dp_shard · ep`` dividing every MoE layer's routed experts when ``ep`` > 1 — or every
rank fails with one sentence before any communication (:func:`check_model_fits`).
"""

from __future__ import annotations

import math
import os

import torch.distributed as dist
from torch import nn

from ..models import MLA, Attention, GeluMLP, MoE, SwiGLU
from ..optim.distributed import mark_data_parallel
from .experts import ExpertParallel

__all__ = ["EXPERT_STACKS", "MESH_DIMS", "check_model_fits", "data_parallel_group", "data_parallel_mesh",
           "data_parallel_rank", "data_parallel_size", "init_mesh", "parallelize_on_mesh"]

MESH_DIMS = ("dp_shard", "ep", "tp")
"""Named dims of a muonlab mesh, outermost first (tensor parallelism innermost: the fastest links)."""

EXPERT_STACKS = ("w_gate", "w_up", "w_down")
"""An MoE layer's routed expert stacks, split over ``dp_shard × ep`` under expert parallelism."""


def init_mesh(device_type: str, dp_shard: int = 1, tp: int = 1, ep: int = 1):
    """The ``(dp_shard, ep, tp)`` device mesh over every process; their product must be the world size."""
    sizes = {"dp_shard": dp_shard, "ep": ep, "tp": tp}
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and launched > 1:
        raise ValueError(f"this is one of {launched} processes (WORLD_SIZE) but it has not joined their process group; "
                         "call muonlab.parallel.init_runtime('mesh', mesh_shape=...) (or "
                         "torch.distributed.init_process_group()) before init_mesh")
    if any(n < 1 for n in sizes.values()) or math.prod(sizes.values()) != world:
        raise ValueError(f"mesh {sizes} needs dp_shard × ep × tp = {math.prod(sizes.values())} processes but "
                         f"{world} are running; choose sizes ≥ 1 whose product is the world size")
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, tuple(sizes[d] for d in MESH_DIMS), mesh_dim_names=MESH_DIMS)


def _size(mesh, dim: str) -> int:
    return mesh[dim].size() if dim in (mesh.mesh_dim_names or ()) else 1


def data_parallel_mesh(mesh):
    """The 1-D mesh of the ranks that read different data and share the FSDP2 shards: ``dp_shard``, or
    with expert parallelism ``dp_shard`` and ``ep`` flattened (``"dp"``, ``dp_shard`` outer)."""
    if _size(mesh, "ep") == 1:
        return mesh["dp_shard"]
    if _size(mesh, "dp_shard") == 1:
        return mesh["ep"]
    return mesh["dp_shard", "ep"]._flatten("dp")


def data_parallel_rank(mesh) -> int:
    """Which data shard this rank reads: its coordinate on :func:`data_parallel_mesh` (tensor-parallel
    peers read the same)."""
    return data_parallel_mesh(mesh).get_local_rank() if data_parallel_size(mesh) > 1 else 0


def data_parallel_size(mesh) -> int:
    """How many different data shards the mesh reads per step: ``dp_shard · ep``."""
    return _size(mesh, "dp_shard") * _size(mesh, "ep")


def data_parallel_group(mesh):
    """The process group of :func:`data_parallel_mesh` (per-step statistics are summed over it), or
    None when every rank reads the same data."""
    return data_parallel_mesh(mesh).get_group() if data_parallel_size(mesh) > 1 else None


def _tp_problems(model: nn.Module, tp: int) -> list[str]:
    """What in ``model`` a tensor-parallel degree ``tp`` cannot split, one phrase each."""
    problems = []
    for name, module in model.named_modules():
        if isinstance(module, Attention) and (module.n_heads % tp or module.n_kv_heads % tp):
            problems.append(f"{name} has {module.n_heads} query and {module.n_kv_heads} key/value heads")
        elif isinstance(module, MLA) and module.n_heads % tp:
            problems.append(f"{name} has {module.n_heads} heads")
        elif isinstance(module, SwiGLU | GeluMLP):
            hidden = (module.w_up if isinstance(module, SwiGLU) else module.w_in).out_features
            if hidden % tp:
                problems.append(f"{name} has hidden width {hidden}")
    return problems


def _ep_problem(model: nn.Module, dp_shard: int, ep: int) -> str | None:
    """Why expert parallelism over ``ep`` (with ``dp_shard``) cannot split ``model``'s experts, or None."""
    moes = [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]
    where = f"expert parallelism over ep={ep}" + (f" with dp_shard={dp_shard}" if dp_shard > 1 else "")
    if not moes:
        return f"{where} needs MoE layers, but {type(model).__name__} has none; use ep=1"
    for name, moe in moes:
        if moe.n_experts % (dp_shard * ep):
            return (f"{where} splits every MoE layer's routed experts into dp_shard × ep = {dp_shard * ep} equal "
                    f"parts, but {name} has {moe.n_experts}; choose sizes whose product divides {moe.n_experts}")
    return None


def check_model_fits(model: nn.Module, mesh) -> None:
    """Raise ``ValueError`` (on every rank alike, before any communication) if ``mesh`` cannot split ``model``."""
    names = tuple(mesh.mesh_dim_names or ())
    if not set(names) <= set(MESH_DIMS) or not names:
        raise ValueError(f"a muonlab mesh names its dims among {list(MESH_DIMS)}, got {list(names)}; "
                         "build it with muonlab.parallel.init_mesh")
    ep_problem = _ep_problem(model, _size(mesh, "dp_shard"), _size(mesh, "ep")) if _size(mesh, "ep") > 1 else None
    if ep_problem:
        raise ValueError(ep_problem)
    tp = _size(mesh, "tp")
    problems = _tp_problems(model, tp) if tp > 1 else []
    if problems:
        raise ValueError(f"tensor parallelism over tp={tp} ranks needs every attention's heads and every MLP's "
                         f"hidden width divisible by {tp}, but {'; '.join(problems[:3])}"
                         f"{'; …' if len(problems) > 3 else ''}")


def _tp_plan(block: nn.Module) -> dict:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {}
    for name, module in block.named_modules():
        if isinstance(module, Attention):
            plan.update({f"{name}.{w}": ColwiseParallel() for w in ("wq", "wk", "wv")})
            plan[f"{name}.wo"] = RowwiseParallel()
        elif isinstance(module, MLA):
            plan.update({f"{name}.{w}": ColwiseParallel() for w in ("wq_nope", "wq_rope", "wk_up", "wv_up")})
            plan[f"{name}.wo"] = RowwiseParallel()
        elif isinstance(module, SwiGLU):
            plan.update({f"{name}.w_gate": ColwiseParallel(), f"{name}.w_up": ColwiseParallel(),
                         f"{name}.w_down": RowwiseParallel()})
        elif isinstance(module, GeluMLP):
            plan.update({f"{name}.w_in": ColwiseParallel(), f"{name}.w_out": RowwiseParallel()})
    return plan


def _all_reduce_gradient_over(tp_mesh):
    """A forward hook: the module's output unchanged, its gradient summed over ``tp_mesh`` in backward
    (for a replicated layer whose output each tensor-parallel rank's heads use in part)."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    def hook(module, inputs, output):
        return DTensor.from_local(output, tp_mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])

    return hook


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of every top-level ``nn.ModuleList`` (the transformer blocks)."""
    return [block for child in model.children() if isinstance(child, nn.ModuleList) for block in child]


def _apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    from torch.distributed.tensor.parallel import parallelize_module

    for block in _blocks(model):
        parallelize_module(block, tp_mesh, _tp_plan(block))
        for module in block.modules():
            if isinstance(module, MLA):
                module.wk_rope.register_forward_hook(_all_reduce_gradient_over(tp_mesh))


def _apply_expert_parallel(model: nn.Module, mesh) -> list[nn.Parameter]:
    """Split every MoE layer's expert stacks over ``dp_shard × ep`` and route its tokens by all-to-all
    (:mod:`.experts`); returns the split stacks."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    placements = [Replicate() if dim == "tp" else Shard(0) for dim in mesh.mesh_dim_names]
    dp_shard = _size(mesh, "dp_shard")
    stacks = []
    for module in model.modules():
        if isinstance(module, MoE):
            for name in EXPERT_STACKS:
                weight = getattr(module, name)
                split = distribute_tensor(weight.detach(), mesh, placements, src_data_rank=None)
                setattr(module, name, nn.Parameter(split, requires_grad=weight.requires_grad))
                stacks.append(getattr(module, name))
            module.experts_fn = ExpertParallel(module.n_experts, mesh["ep"].get_group(),
                                               mesh["dp_shard"].get_group() if dp_shard > 1 else None,
                                               data_parallel_size(mesh))
    return stacks


def parallelize_on_mesh(model: nn.Module, mesh) -> nn.Module:
    """Tensor parallelism over ``mesh["tp"]``, expert parallelism over ``mesh["ep"]``, then FSDP2 over the
    data-parallel ranks (:func:`data_parallel_mesh`), in place; returns ``model``.

    Call :func:`check_model_fits` first (``muonlab.parallel.parallelize`` does) and start every
    rank from the same weights.
    """
    if _size(mesh, "tp") > 1:
        _apply_tensor_parallel(model, mesh["tp"])
    experts = set(_apply_expert_parallel(model, mesh)) if _size(mesh, "ep") > 1 else set()
    if data_parallel_size(mesh) > 1:
        from torch.distributed.fsdp import fully_shard

        dp_mesh = data_parallel_mesh(mesh)
        for block in _blocks(model):
            fully_shard(block, mesh=dp_mesh, ignored_params=experts & set(block.parameters()))
        fully_shard(model, mesh=dp_mesh, ignored_params=experts)
    else:
        from torch.distributed.tensor import DTensor

        mark_data_parallel([p for p in model.parameters() if not isinstance(p, DTensor)], "replicated")
    return model
