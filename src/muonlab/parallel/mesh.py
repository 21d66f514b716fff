"""A named device mesh and the parallelism it applies to an unmodified model: FSDP2 × tensor parallelism.

::

    mesh = init_mesh("cpu", dp_shard=2, tp=2)     # dims ("dp_shard", "ep", "tp"), any of size 1
    parallelize(model, mesh)                      # TP on "tp", then FSDP2 fully_shard on "dp_shard"

Tensor parallelism (Megatron-LM, Shoeybi et al. 2019) with torch's own
``torch.distributed.tensor.parallel``: in every block, the attention's ``wq``, ``wk``, ``wv`` and
the MLP's input projections (``w_gate``, ``w_up`` / ``w_in``) are column-wise (``Shard(0)`` of the
weight: each rank computes a slice of the heads / hidden units), the output projections ``wo``,
``w_down`` / ``w_out`` row-wise (``Shard(1)``: partial sums, all-reduced). The attention module
reads its local head counts off the projections' outputs, so the model is unchanged. Embedding,
norms and LM head stay whole on every rank (marked ``"replicated"``: tensor-parallel ranks see
the same batch and compute the same gradient for them) unless FSDP2 shards them over
``dp_shard``. Ranks that differ only in their ``tp`` coordinate read the same data
(:func:`data_parallel_rank`).

Mesh and model must fit — ``tp`` dividing every attention's query and key/value heads and every
MLP's hidden width, no tensor parallelism for MLA or MoE layers yet, ``ep`` 1 — or every rank
fails with one sentence before any communication (:func:`check_model_fits`).
"""

from __future__ import annotations

import math

import torch.distributed as dist
from torch import nn

from ..models import MLA, Attention, GeluMLP, MoE, SwiGLU
from ..optim.distributed import mark_data_parallel

__all__ = ["MESH_DIMS", "check_model_fits", "data_parallel_rank", "data_parallel_size", "init_mesh",
           "parallelize_on_mesh"]

MESH_DIMS = ("dp_shard", "ep", "tp")
"""Named dims of a muonlab mesh, outermost first (tensor parallelism innermost: the fastest links)."""


def init_mesh(device_type: str, dp_shard: int = 1, tp: int = 1, ep: int = 1):
    """The ``(dp_shard, ep, tp)`` device mesh over every process; their product must be the world size."""
    sizes = {"dp_shard": dp_shard, "ep": ep, "tp": tp}
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if any(n < 1 for n in sizes.values()) or math.prod(sizes.values()) != world:
        raise ValueError(f"mesh {sizes} needs dp_shard × ep × tp = {math.prod(sizes.values())} processes but "
                         f"{world} are running; choose sizes ≥ 1 whose product is the world size")
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, tuple(sizes[d] for d in MESH_DIMS), mesh_dim_names=MESH_DIMS)


def _size(mesh, dim: str) -> int:
    return mesh[dim].size() if dim in (mesh.mesh_dim_names or ()) else 1


def data_parallel_rank(mesh) -> int:
    """Which data shard this rank reads: its ``dp_shard`` coordinate (tensor-parallel peers read the same)."""
    return mesh["dp_shard"].get_local_rank() if _size(mesh, "dp_shard") > 1 else 0


def data_parallel_size(mesh) -> int:
    """How many different data shards the mesh reads per step."""
    return _size(mesh, "dp_shard")


def _tp_problems(model: nn.Module, tp: int) -> list[str]:
    """What in ``model`` a tensor-parallel degree ``tp`` cannot split, one phrase each."""
    problems = []
    for name, module in model.named_modules():
        if isinstance(module, Attention) and (module.n_heads % tp or module.n_kv_heads % tp):
            problems.append(f"{name} has {module.n_heads} query and {module.n_kv_heads} key/value heads")
        elif isinstance(module, SwiGLU | GeluMLP):
            hidden = (module.w_up if isinstance(module, SwiGLU) else module.w_in).out_features
            if hidden % tp:
                problems.append(f"{name} has hidden width {hidden}")
        elif isinstance(module, MLA | MoE):
            problems.append(f"{name} is {type(module).__name__}, which has no tensor-parallel plan yet")
    return problems


def check_model_fits(model: nn.Module, mesh) -> None:
    """Raise ``ValueError`` (on every rank alike, before any communication) if ``mesh`` cannot split ``model``."""
    names = tuple(mesh.mesh_dim_names or ())
    if not set(names) <= set(MESH_DIMS) or not names:
        raise ValueError(f"a muonlab mesh names its dims among {list(MESH_DIMS)}, got {list(names)}; "
                         "build it with muonlab.parallel.init_mesh")
    if _size(mesh, "ep") > 1:
        raise ValueError(f"expert parallelism (ep={_size(mesh, 'ep')}) is not implemented yet; use ep=1")
    tp = _size(mesh, "tp")
    problems = _tp_problems(model, tp) if tp > 1 else []
    if problems:
        raise ValueError(f"tensor parallelism over tp={tp} ranks needs every attention's heads and every MLP's "
                         f"hidden width divisible by {tp} (and dense attention and MLPs), but "
                         f"{'; '.join(problems[:3])}{'; …' if len(problems) > 3 else ''}")


def _tp_plan(block: nn.Module) -> dict:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {}
    for name, module in block.named_modules():
        if isinstance(module, Attention):
            plan.update({f"{name}.{w}": ColwiseParallel() for w in ("wq", "wk", "wv")})
            plan[f"{name}.wo"] = RowwiseParallel()
        elif isinstance(module, SwiGLU):
            plan.update({f"{name}.w_gate": ColwiseParallel(), f"{name}.w_up": ColwiseParallel(),
                         f"{name}.w_down": RowwiseParallel()})
        elif isinstance(module, GeluMLP):
            plan.update({f"{name}.w_in": ColwiseParallel(), f"{name}.w_out": RowwiseParallel()})
    return plan


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of every top-level ``nn.ModuleList`` (the transformer blocks)."""
    return [block for child in model.children() if isinstance(child, nn.ModuleList) for block in child]


def parallelize_on_mesh(model: nn.Module, mesh) -> nn.Module:
    """Tensor parallelism over ``mesh["tp"]``, then FSDP2 over ``mesh["dp_shard"]``, in place; returns ``model``.

    Call :func:`check_model_fits` first (``muonlab.parallel.parallelize`` does) and start every
    rank from the same weights.
    """
    if _size(mesh, "tp") > 1:
        from torch.distributed.tensor.parallel import parallelize_module

        for block in _blocks(model):
            parallelize_module(block, mesh["tp"], _tp_plan(block))
    if _size(mesh, "dp_shard") > 1:
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block, mesh=mesh["dp_shard"])
        fully_shard(model, mesh=mesh["dp_shard"])
    else:
        from torch.distributed.tensor import DTensor

        mark_data_parallel([p for p in model.parameters() if not isinstance(p, DTensor)], "replicated")
    return model
