"""Route a model's parameters to Muon or AdamW by role, and show the routing.

Moonlight (arXiv 2502.16982 §2.2) applies Muon to the hidden weight matrices and keeps AdamW for
"non-matrix based parameters, like RMSNorm, LM head, and embedding parameters". Roles are
decided by module type and name — never by ``ndim`` alone, since an embedding and an LM head are
2-D yet belong to AdamW:

=============  =========  ===========================================================
role           algorithm  recognised as
=============  =========  ===========================================================
``hidden``     muon       ``nn.Linear`` weights (not the head), conv weights, Hugging
                          Face ``Conv1D`` weights (GPT-2; stored ``[in, out]``)
``expert``     muon       3-D expert stacks ``[E, ·, ·]``: declared by the module, or
                          Hugging Face experts modules, which state ``is_transposed``
``router``     muon       MoE router matrices ``[E, d]``: declared, or a module whose
                          class name ends in ``Router`` with ``num_experts`` rows
``embedding``  adamw      ``nn.Embedding`` / ``nn.EmbeddingBag`` weights
``head``       adamw      the output layer: an ``nn.Linear`` named one of ``head_names``
                          or whose weight is tied to an embedding
``norm``       adamw      parameters of normalisation layers (RMSNorm, LayerNorm, …)
``bias``       adamw      any parameter named ``bias`` or ``*_bias``
``scalar``     adamw      any other 0-D or 1-D parameter (gains, gates, temperatures)
=============  =========  ===========================================================

Hugging Face classes are recognised by duck typing (class names and the attributes their modules
set), so this module imports torch only.

**Layout.** Muon orthogonalizes and scales the *logical* matrix ``[out, in]``. A matrix stored
``[in, out]`` — HF ``Conv1D``, experts with ``is_transposed=True`` — is routed ``transposed``, so
its update equals that of an ``nn.Linear`` holding the transpose under every scale rule. A fused
projection — GPT-2's ``c_attn`` = ``[q|k|v]`` (its attention's ``split_size`` says so), a fused
``gate_up_proj`` = ``[gate|up]`` — is one matrix by default, as in the paper; with
``param_groups(model, split_fused=True)`` each of its equal blocks is orthogonalized and scaled on
its own, exactly as if the blocks were separate parameters.

A custom module declares its parameters' roles with a class or instance attribute
``muon_roles = {"param_name": "role"}``, and, for a matrix stored ``[in, out]`` or holding fused
projections, ``muon_layouts = {"param_name": {"transposed": True, "fused": 3}}``; a parameter no
rule places raises an error that says how.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .blocks import parse_blocks
from .heads import head_blocks
from .scaling import SCALE_RULES, logical_matrix_shape, update_scale

__all__ = ["ORTHOGONALIZE", "ROLE_ALGORITHM", "RoutedParam", "param_groups", "route_parameters", "routed_role",
           "routing_table"]

ROLE_ALGORITHM = {
    "hidden": "muon",
    "expert": "muon",
    "router": "muon",
    "embedding": "adamw",
    "head": "adamw",
    "norm": "adamw",
    "bias": "adamw",
    "scalar": "adamw",
}
DEFAULT_HEAD_NAMES = ("lm_head", "output", "head", "embed_out", "classifier")
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
_LAYOUT_KEYS = ("transposed", "fused", "heads", "col_heads")
ORTHOGONALIZE = ("matrix", "per_head")


ROUTED_ATTR = "_muonlab_routed"  # set on each parameter route_parameters places: (name, role)


def routed_role(param: torch.Tensor) -> tuple[str, str] | None:
    """``(name, role)`` that :func:`route_parameters` gave ``param``, if it routed it."""
    return getattr(param, ROUTED_ATTR, None)


@dataclass
class RoutedParam:
    """One parameter's routing decision. ``aliases`` lists other names of a tied parameter.

    Layout (Muon roles only): ``transposed`` — stored ``[in, out]``; ``fused`` — the output rows
    hold this many equal projections, concatenated, or ``interleaved`` row by row (which
    ``split_fused`` cannot split); ``heads``, ``col_heads`` — its per-head row and column blocks
    (:mod:`muonlab.optim.heads`; used with ``orthogonalize="per_head"``).
    """

    name: str
    param: nn.Parameter
    role: str
    aliases: tuple[str, ...] = ()
    transposed: bool = False
    fused: int = 1
    interleaved: bool = False
    heads: Any = 1
    col_heads: Any = 1

    @property
    def algorithm(self) -> str:
        return ROLE_ALGORITHM[self.role]

    @property
    def stacked(self) -> bool:
        """Whether a 3-D parameter is a stack of matrices (experts), not one conv weight."""
        return self.role != "hidden"


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm")


def _is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT, GPT-2): a Linear with ``nf`` outputs whose weight is stored ``[nx, nf]``."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (getattr(module, "nx", None), getattr(module, "nf", None)))


def _is_router(module: nn.Module, param_name: str, param: torch.Tensor) -> bool:
    """An MoE router (HF ``MixtralTopKRouter``, ``Qwen2MoeTopKRouter``, ``DeepseekV3TopkRouter``): a 2-D
    ``weight`` with one row per expert in a module whose class name ends in ``Router``."""
    return (param_name == "weight" and param.ndim == 2 and type(module).__name__.lower().endswith("router")
            and getattr(module, "num_experts", param.shape[0]) == param.shape[0])


def _is_expert_stack(module: nn.Module, param: torch.Tensor) -> bool:
    """A 3-D parameter of an experts module that states its layout, as HF 5.x's ``use_experts_implementation``
    makes every experts class do (``is_transposed``; ``num_experts`` = the leading dimension)."""
    return (param.ndim == 3 and isinstance(getattr(module, "is_transposed", None), bool)
            and getattr(module, "num_experts", None) == param.shape[0])


def _declared(module: nn.Module, attribute: str, param_name: str) -> Any:
    return (getattr(module, attribute, None) or {}).get(param_name)


def _role_of(module: nn.Module, module_name: str, param_name: str, param: torch.Tensor,
             embedding_ids: set[int], head_names: tuple[str, ...]) -> str | None:
    role = _declared(module, "muon_roles", param_name)
    if role is not None:
        if role not in ROLE_ALGORITHM:
            raise ValueError(
                f"{type(module).__name__}.muon_roles gives {param_name!r} the role {role!r}; "
                f"valid roles: {sorted(ROLE_ALGORITHM)}"
            )
        return role
    if param_name == "bias" or param_name.endswith("_bias"):
        return "bias"
    if _is_norm(module):
        return "norm"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.Linear) and param_name == "weight":
        is_head = module_name.rsplit(".", 1)[-1] in head_names or id(param) in embedding_ids
        return "head" if is_head else "hidden"
    if isinstance(module, nn.modules.conv._ConvNd) and param_name == "weight":
        return "hidden"
    if _is_conv1d(module) and param_name == "weight":
        return "hidden"
    if _is_router(module, param_name, param):
        return "router"
    if _is_expert_stack(module, param):
        return "expert"
    if param.ndim <= 1:
        return "scalar"
    return None


def _layout_of(module: nn.Module, parent: nn.Module | None, module_name: str, param_name: str,
               param: torch.Tensor) -> tuple[bool, int, bool]:
    """``(transposed, fused, interleaved)`` of a Muon parameter, read from its module (see the module docstring)."""
    declared = _declared(module, "muon_layouts", param_name)
    if declared is not None:
        unknown = sorted(set(declared) - set(_LAYOUT_KEYS))
        if unknown:
            raise ValueError(f"{type(module).__name__}.muon_layouts[{param_name!r}] has unknown keys {unknown}; "
                             f"valid keys: {list(_LAYOUT_KEYS)}")
        return bool(declared.get("transposed", False)), declared.get("fused", 1), False
    if _is_conv1d(module) and param_name == "weight":
        split = getattr(parent, "split_size", None)  # GPT-2 attention: c_attn(x).split(split_size)
        fused = module.nf // split if isinstance(split, int) and split > 0 and module.nf % split == 0 else 1
        return True, fused, False
    if _is_expert_stack(module, param):
        gated = param_name == "gate_up_proj" and getattr(module, "has_gate", True)
        return module.is_transposed, 2 if gated else 1, gated and not getattr(module, "is_concatenated", True)
    if isinstance(module, nn.Linear) and module_name.rsplit(".", 1)[-1] == "gate_up_proj":
        return False, 2, False  # a dense fused [gate|up] (e.g. Phi-3), split in half by its forward
    return False, 1, False


def _unroutable(full_name: str, param: torch.Tensor, module: nn.Module, param_name: str) -> ValueError:
    cls = type(module).__name__
    return ValueError(
        f"cannot route parameter {full_name!r} of shape {tuple(param.shape)} in {cls}: it is not a "
        f"Linear/Conv1D/conv/embedding/norm weight, a bias, an MoE router or expert stack, or 1-D; declare it "
        f"with {cls}.muon_roles = {{{param_name!r}: <role>}} using one of {sorted(ROLE_ALGORITHM)} (and, if it "
        f"is stored [in, out] or fuses projections, {cls}.muon_layouts = "
        f"{{{param_name!r}: {{'transposed': True, 'fused': 2}}}})"
    )


def route_parameters(model: nn.Module, head_names: Iterable[str] = DEFAULT_HEAD_NAMES) -> list[RoutedParam]:
    """Assign every trainable parameter of ``model`` a role and, for Muon, a layout (see the module docstring).

    Raises:
        ValueError: a parameter no rule places (with how to declare it), or a parameter shared
            between places that would send it to different algorithms.
    """
    head_names = tuple(head_names)
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    modules = dict(model.named_modules(remove_duplicate=False))
    routed: dict[int, RoutedParam] = {}
    order: list[int] = []
    for module_name, module in modules.items():
        for param_name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            if not param.requires_grad:
                continue
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            role = _role_of(module, module_name, param_name, param, embedding_ids, head_names)
            if role is None:
                raise _unroutable(full_name, param, module, param_name)
            seen = routed.get(id(param))
            if seen is None:
                layout, heads = (False, 1, False), (1, 1)
                if ROLE_ALGORITHM[role] == "muon":
                    parent = modules.get(module_name.rpartition(".")[0]) if module_name else None
                    layout = _layout_of(module, parent, module_name, param_name, param)
                    if role == "hidden":
                        heads = head_blocks(module, parent, module_name, param_name,
                                            _declared(module, "muon_layouts", param_name))
                routed[id(param)] = RoutedParam(full_name, param, role, (), *layout, *heads)
                setattr(param, ROUTED_ATTR, (full_name, role))
                order.append(id(param))
            elif full_name != seen.name and full_name not in seen.aliases:
                if ROLE_ALGORITHM[role] != seen.algorithm:
                    raise ValueError(
                        f"parameter {seen.name!r} is shared with {full_name!r}, which would route it "
                        f"to both {seen.algorithm} (as {seen.role!r}) and {ROLE_ALGORITHM[role]} (as "
                        f"{role!r}); untie them or declare one role with muon_roles"
                    )
                seen.aliases += (full_name,)
    return [routed[i] for i in order]


def _blocks(rp: RoutedParam, split_fused: bool, orthogonalize: str = "matrix") -> tuple[Any, Any]:
    """``(row blocks, column blocks)`` each stored matrix of ``rp`` is orthogonalized as (checked
    against its shape): per head with ``orthogonalize="per_head"`` where it has heads, else its
    fused projections with ``split_fused``, else whole. Lists become tuples (a group key)."""
    if rp.algorithm != "muon":
        return 1, 1
    rows, cols = (rp.heads, rp.col_heads) if orthogonalize == "per_head" else (1, 1)
    if (rows, cols) == (1, 1):
        rows = rp.fused if split_fused else 1
        if rows != 1 and rp.interleaved:
            raise ValueError(f"split_fused cannot split {rp.name!r}: its {rp.fused} fused projections are "
                             "interleaved row by row (is_concatenated=False); use split_fused=False for this model")
    try:
        parse_blocks(*logical_matrix_shape(tuple(rp.param.shape), rp.stacked, rp.transposed), rows, cols)
    except ValueError as err:
        raise ValueError(f"parameter {rp.name!r} of shape {tuple(rp.param.shape)} cannot be laid out as declared: "
                         f"{err}") from None
    return tuple(rows) if isinstance(rows, list) else rows, tuple(cols) if isinstance(cols, list) else cols


def _block_note(rows: Any, cols: Any) -> list[str]:
    count = lambda spec: spec if isinstance(spec, int) else len(spec)  # noqa: E731
    return ([f"{count(rows)} blocks"] if rows != 1 else []) + ([f"{count(cols)} column blocks"] if cols != 1 else [])


def param_groups(
    model: nn.Module,
    *,
    role_overrides: dict[str, dict[str, Any]] | None = None,
    head_names: Iterable[str] = DEFAULT_HEAD_NAMES,
    split_fused: bool = False,
    orthogonalize: str = "matrix",
    print_table: bool = False,
) -> list[dict[str, Any]]:
    """Parameter groups for :class:`muonlab.optim.Muon`, one per role (and Muon layout) present in ``model``.

    Every group carries ``algorithm``, ``role``, ``params`` and ``names``; groups of matrices stored
    ``[in, out]`` carry ``transposed=True`` and, with ``split_fused``, groups of fused projections
    ``blocks=n`` (see the module docstring). ``orthogonalize="per_head"`` orthogonalizes each
    attention head's block of the q/k/v (row blocks) and output (column blocks) projections on its
    own (:mod:`muonlab.optim.heads`; ``"matrix"``, the default, keeps whole matrices as the paper).
    Optimizer defaults (lr, weight decay, …) apply unless ``role_overrides`` sets them per role,
    e.g. ``{"norm": {"weight_decay": 0.0}}``. By default weight decay applies to every parameter,
    RMSNorm gains included, as Moonlight does (its App. D found decaying the gains crucial).
    """
    if orthogonalize not in ORTHOGONALIZE:
        raise ValueError(f"orthogonalize={orthogonalize!r} is not one of {list(ORTHOGONALIZE)}")
    role_overrides = dict(role_overrides or {})
    unknown = sorted(set(role_overrides) - set(ROLE_ALGORITHM))
    if unknown:
        raise ValueError(f"role_overrides names unknown roles {unknown}; valid roles: {sorted(ROLE_ALGORITHM)}")
    routed = route_parameters(model, head_names)
    if print_table:
        print(routing_table(routed, split_fused=split_fused, orthogonalize=orthogonalize))
    groups: dict[tuple, dict[str, Any]] = {}
    for rp in routed:
        rows, cols = _blocks(rp, split_fused, orthogonalize)
        key = (rp.role, rp.transposed, rows, cols)
        if key not in groups:
            layout = {"transposed": True} if rp.transposed else {}
            layout.update({"blocks": list(rows) if isinstance(rows, tuple) else rows} if rows != 1 else {})
            layout.update({"col_blocks": list(cols) if isinstance(cols, tuple) else cols} if cols != 1 else {})
            groups[key] = {"algorithm": rp.algorithm, "role": rp.role, "params": [], "names": [], **layout,
                           **role_overrides.get(rp.role, {})}
        groups[key]["params"].append(rp.param)
        groups[key]["names"].append(rp.name)
    order = list(ROLE_ALGORITHM)
    return [groups[key] for key in sorted(groups, key=lambda key: order.index(key[0]))]


def routing_table(model_or_routed: nn.Module | list[RoutedParam], scale: str = "moonlight",
                  split_fused: bool = False, orthogonalize: str = "matrix") -> str:
    """A plain-text table: name, shape, role (with its layout), algorithm, and Muon's update-scale
    factor (one per distinct block shape)."""
    routed = model_or_routed if isinstance(model_or_routed, list) else route_parameters(model_or_routed)
    rows = [("parameter", "shape", "role", "algorithm", f"scale ({scale})")]
    for rp in routed:
        name = rp.name + (f" (= {', '.join(rp.aliases)})" if rp.aliases else "")
        block_rows, block_cols = _blocks(rp, split_fused, orthogonalize)
        notes = (["transposed"] if rp.transposed else []) + _block_note(block_rows, block_cols)
        role = rp.role + (f" ({', '.join(notes)})" if notes else "")
        factor = "-"
        if rp.algorithm == "muon":
            update_scale(scale, tuple(rp.param.shape), rp.stacked, rp.transposed)  # checks the rule's name
            shape = logical_matrix_shape(tuple(rp.param.shape), rp.stacked, rp.transposed)
            shapes = parse_blocks(*shape, block_rows, block_cols).shapes()
            factor = "/".join(f"{SCALE_RULES[scale](*s):.3f}" for s in shapes)
            factor += "·O/RMS(O)" if SCALE_RULES[scale].normalizes else ""
        rows.append((name, "x".join(map(str, rp.param.shape)) or "scalar", role, rp.algorithm, factor))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {alg: sum(rp.param.numel() for rp in routed if rp.algorithm == alg) for alg in ("muon", "adamw")}
    lines.append(f"muon: {counts['muon']:,} parameters; adamw: {counts['adamw']:,} parameters")
    return "\n".join(lines)
