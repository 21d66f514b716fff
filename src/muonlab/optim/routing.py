"""Route a model's parameters to Muon or AdamW by role, and show the routing.

Moonlight (arXiv 2502.16982 §2.2) applies Muon to the hidden weight matrices and keeps AdamW for
"non-matrix based parameters, like RMSNorm, LM head, and embedding parameters". Roles are
decided by module type and name — never by ``ndim`` alone, since an embedding and an LM head are
2-D yet belong to AdamW:

=============  =========  ===========================================================
role           algorithm  recognised as
=============  =========  ===========================================================
``hidden``     muon       ``nn.Linear`` weights (not the head), conv weights
``expert``     muon       3-D expert stacks ``[E, A, B]`` (declared by the module)
``router``     muon       MoE router matrices (declared by the module)
``embedding``  adamw      ``nn.Embedding`` / ``nn.EmbeddingBag`` weights
``head``       adamw      the output layer: an ``nn.Linear`` named one of ``head_names``
                          or whose weight is tied to an embedding
``norm``       adamw      parameters of normalisation layers (RMSNorm, LayerNorm, …)
``bias``       adamw      any parameter named ``bias``
``scalar``     adamw      any other 0-D or 1-D parameter (gains, gates, temperatures)
=============  =========  ===========================================================

A custom module declares its parameters' roles with a class or instance attribute
``muon_roles = {"param_name": "role"}``; a parameter no rule places raises an error that says how.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .scaling import update_scale

__all__ = ["ROLE_ALGORITHM", "RoutedParam", "param_groups", "route_parameters", "routing_table"]

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


@dataclass
class RoutedParam:
    """One parameter's routing decision. ``aliases`` lists other names of a tied parameter."""

    name: str
    param: nn.Parameter
    role: str
    aliases: tuple[str, ...] = ()

    @property
    def algorithm(self) -> str:
        return ROLE_ALGORITHM[self.role]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm")


def _role_of(module: nn.Module, module_name: str, param_name: str, param: torch.Tensor,
             embedding_ids: set[int], head_names: tuple[str, ...]) -> str | None:
    declared = getattr(module, "muon_roles", None) or {}
    if param_name in declared:
        role = declared[param_name]
        if role not in ROLE_ALGORITHM:
            raise ValueError(
                f"{type(module).__name__}.muon_roles gives {param_name!r} the role {role!r}; "
                f"valid roles: {sorted(ROLE_ALGORITHM)}"
            )
        return role
    if param_name == "bias":
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
    if param.ndim <= 1:
        return "scalar"
    return None


def route_parameters(model: nn.Module, head_names: Iterable[str] = DEFAULT_HEAD_NAMES) -> list[RoutedParam]:
    """Assign every trainable parameter of ``model`` a role (see the module docstring).

    Raises:
        ValueError: a parameter no rule places (with how to declare it), or a parameter shared
            between places that would send it to different algorithms.
    """
    head_names = tuple(head_names)
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    routed: dict[int, RoutedParam] = {}
    order: list[int] = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            if not param.requires_grad:
                continue
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            role = _role_of(module, module_name, param_name, param, embedding_ids, head_names)
            if role is None:
                raise ValueError(
                    f"cannot route parameter {full_name!r} of shape {tuple(param.shape)} in "
                    f"{type(module).__name__}: it is not a Linear/conv/embedding/norm weight, a bias, "
                    f"or 1-D; declare it with {type(module).__name__}.muon_roles = "
                    f"{{{param_name!r}: <role>}} using one of {sorted(ROLE_ALGORITHM)}"
                )
            seen = routed.get(id(param))
            if seen is None:
                routed[id(param)] = RoutedParam(full_name, param, role)
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


def param_groups(
    model: nn.Module,
    *,
    role_overrides: dict[str, dict[str, Any]] | None = None,
    head_names: Iterable[str] = DEFAULT_HEAD_NAMES,
    print_table: bool = False,
) -> list[dict[str, Any]]:
    """Parameter groups for :class:`muonlab.optim.Muon`, one per role present in ``model``.

    Every group carries ``algorithm``, ``role``, ``params`` and ``names``; optimizer defaults
    (lr, weight decay, …) apply unless ``role_overrides`` sets them per role, e.g.
    ``{"norm": {"weight_decay": 0.0}}``. By default weight decay applies to every parameter,
    RMSNorm gains included, as Moonlight does (its App. D found decaying the gains crucial).
    """
    role_overrides = dict(role_overrides or {})
    unknown = sorted(set(role_overrides) - set(ROLE_ALGORITHM))
    if unknown:
        raise ValueError(f"role_overrides names unknown roles {unknown}; valid roles: {sorted(ROLE_ALGORITHM)}")
    routed = route_parameters(model, head_names)
    if print_table:
        print(routing_table(routed))
    groups: dict[str, dict[str, Any]] = {}
    for rp in routed:
        group = groups.setdefault(rp.role, {"algorithm": rp.algorithm, "role": rp.role, "params": [], "names": [],
                                            **role_overrides.get(rp.role, {})})
        group["params"].append(rp.param)
        group["names"].append(rp.name)
    return [groups[role] for role in ROLE_ALGORITHM if role in groups]


def routing_table(model_or_routed: nn.Module | list[RoutedParam], scale: str = "moonlight") -> str:
    """A plain-text table: name, shape, role, algorithm, and Muon's update-scale factor."""
    routed = model_or_routed if isinstance(model_or_routed, list) else route_parameters(model_or_routed)
    rows = [("parameter", "shape", "role", "algorithm", f"scale ({scale})")]
    for rp in routed:
        name = rp.name + (f" (= {', '.join(rp.aliases)})" if rp.aliases else "")
        stacked = rp.role != "hidden"
        factor = f"{update_scale(scale, tuple(rp.param.shape), stacked):.3f}" if rp.algorithm == "muon" else "-"
        rows.append((name, "x".join(map(str, rp.param.shape)) or "scalar", rp.role, rp.algorithm, factor))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {alg: sum(rp.param.numel() for rp in routed if rp.algorithm == alg) for alg in ("muon", "adamw")}
    lines.append(f"muon: {counts['muon']:,} parameters; adamw: {counts['adamw']:,} parameters")
    return "\n".join(lines)
