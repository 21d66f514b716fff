"""What a :class:`~muonlab.optim.Muon` parameter group may hold, checked before it is used.

Every number that enters the update must be a finite real number in its range — a tensor, a bool, an
``inf`` or a NaN learning rate would otherwise fail half-way through a step or turn every weight to
NaN — and every option one of its named values. Each error is one sentence that names the group,
the option, the bad value and what would be valid.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ..hyperparameters import NS_DTYPES
from .blocks import parse_blocks
from .newton_schulz import NS_METHODS, get_coefficient_set
from .routing import ROLE_ALGORITHM, routed_role
from .scaling import SCALE_RULES, check_update_rms, logical_matrix_shape
from .state import FIELDS

__all__ = ["ALGORITHMS", "TP_MODES", "as_dtype", "check_group", "check_loadable", "check_number", "check_step_numbers"]

ALGORITHMS = ("muon", "adamw")
TP_MODES = ("exact", "blockwise")
_NS_DTYPES = {name: getattr(torch, name) for name in NS_DTYPES}


def as_dtype(value) -> torch.dtype:
    """A Newton–Schulz dtype from a ``torch.dtype`` or its name."""
    if isinstance(value, torch.dtype):
        return value
    try:
        return _NS_DTYPES[str(value).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown ns_dtype {value!r}; valid: {sorted(_NS_DTYPES)}") from None


def check_number(where: str, name: str, value: Any, low: float, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = True) -> None:
    """Raise unless ``value`` is a finite real number (not a bool or a tensor) in the given interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        kind = " (a tensor learning rate is not supported: pass a float, a scheduler changes it)" if isinstance(
            value, torch.Tensor) and name == "lr" else ""
        raise ValueError(f"{where}: {name} must be a finite number in {interval}, got {value!r}{kind}")


def _check_flag(where: str, group: dict[str, Any], name: str) -> None:
    if not isinstance(group.get(name, False), bool):
        raise ValueError(f"{where}: {name} must be True or False, got {group[name]!r}")


def _param_name(group: dict[str, Any], i: int) -> str:
    names = group.get("names")
    return repr(names[i]) if names else f"#{i}"


def check_group(group: dict[str, Any], index: int) -> None:
    """Check one parameter group in place (its ``ns_dtype`` becomes a ``torch.dtype``)."""
    where = f"parameter group {index}"
    algorithm = group["algorithm"]
    if algorithm not in ALGORITHMS:
        hint = "" if algorithm is not None else " (pass algorithm=... or use muonlab.optim.param_groups(model))"
        raise ValueError(f"{where} has algorithm {algorithm!r}; valid: {list(ALGORITHMS)}{hint}")
    names = group.get("names")
    if names is not None and len(names) != len(group["params"]):
        raise ValueError(f"{where} has {len(names)} names for {len(group['params'])} params")
    check_step_numbers(group, index)
    _check_flag(where, group, "cautious_wd")
    if algorithm == "adamw":
        return
    _check_muon_options(where, group)
    for i, p in enumerate(group["params"]):
        if p.ndim < 2:
            raise ValueError(f"parameter {_param_name(group, i)} of shape {tuple(p.shape)} is in a Muon group, but "
                             "Muon updates matrices only (2-D, 3-D expert stacks, or conv weights); route 1-D "
                             "parameters (norms, biases) to an 'adamw' group")
        if p.is_complex():
            raise ValueError(f"parameter {_param_name(group, i)} of shape {tuple(p.shape)} is complex; Muon supports "
                             "real parameters only")
        _warn_against_role(p)
        if p.numel() == 0:
            continue  # an empty matrix has nothing to update; the engines skip it
        try:
            parse_blocks(*logical_matrix_shape(tuple(p.shape), group.get("role") != "hidden",
                                               group.get("transposed", False)),
                         group.get("blocks", 1), group.get("col_blocks", 1))
        except ValueError as err:
            raise ValueError(f"{where}, parameter {_param_name(group, i)} of shape {tuple(p.shape)}: {err}") from None


def check_step_numbers(group: dict[str, Any], index: int) -> None:
    """Check the numbers a step reads from a group that may change between steps (a scheduler, a hand
    edit, a loaded state dict): ``lr``, ``weight_decay``, and ``momentum`` or AdamW's betas and eps.
    :class:`~muonlab.optim.Muon` checks every group before each step, so a bad value stops the step
    before any parameter changes."""
    where = f"parameter group {index}"
    check_number(where, "lr", group["lr"], 0.0)
    check_number(where, "weight_decay", group["weight_decay"], 0.0)
    if group["algorithm"] == "adamw":
        for name, beta in zip(("beta1", "beta2"), group["betas"]):
            check_number(where, f"AdamW {name}", beta, 0.0, 1.0)
        check_number(where, "AdamW eps", group["eps"], 0.0, low_open=True)
    else:
        check_number(where, "momentum", group["momentum"], 0.0, 1.0)


_WARNED: set[int] = set()


def _warn_against_role(p: torch.Tensor) -> None:
    """Warn once per parameter that ``param_groups`` routed to AdamW (an embedding, the LM head, …) but
    that sits in a Muon group: Moonlight keeps those on AdamW, and Muon's update of them is not the paper's."""
    routed = routed_role(p)
    if routed is None or ROLE_ALGORITHM[routed[1]] == "muon" or id(p) in _WARNED:
        return
    _WARNED.add(id(p))
    warnings.warn(f"parameter {routed[0]!r} is routed as {routed[1]!r} (an AdamW role) but is in a Muon group; "
                  "Moonlight keeps embeddings, the LM head, norms and biases on AdamW (use param_groups(model))",
                  UserWarning, stacklevel=4)


def _check_muon_options(where: str, group: dict[str, Any]) -> None:
    check_number(where, "eps", group["ns_eps"], 0.0, low_open=True)
    for flag in ("nesterov", "transposed", "normuon"):
        _check_flag(where, group, flag)
    check_number(where, "normuon_beta2", group["normuon_beta2"], 0.0, 1.0)
    check_number(where, "normuon_eps", group["normuon_eps"], 0.0, low_open=True)
    group["ns_dtype"] = as_dtype(group["ns_dtype"])
    if group["scale"] not in SCALE_RULES:
        raise ValueError(f"{where}: unknown scale rule {group['scale']!r}; valid: {sorted(SCALE_RULES)}")
    try:
        check_update_rms(group["scale"], group["update_rms"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if group["ns_method"] not in NS_METHODS:
        raise ValueError(f"{where}: unknown ns_method {group['ns_method']!r}; valid: {list(NS_METHODS)}")
    cset = get_coefficient_set(group["ns_coefficients"])
    if group["ns_method"] != "svd" and group["ns_dtype"] not in cset.safe_dtypes:
        raise ValueError(f"{where}: coefficient set {cset.name!r} is not numerically safe in {group['ns_dtype']}; "
                         f"use one of {[str(d) for d in cset.safe_dtypes]}")
    cset.schedule(group["ns_steps"])
    if group["tp_mode"] not in TP_MODES:
        raise ValueError(f"{where}: unknown tp_mode {group['tp_mode']!r}; valid: {list(TP_MODES)}")


def check_loadable(state_dict: dict[str, Any], param_groups: list[dict[str, Any]]) -> None:
    """Raise, naming the first difference, unless ``state_dict`` is a Muon state dict of these groups:
    as many groups, each with the same algorithm and number of parameters, and only the state
    fields of its algorithm (another optimizer's state dict, e.g. ``torch.optim.AdamW``'s, fails here,
    before anything is loaded)."""
    groups, state = state_dict.get("param_groups"), state_dict.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict):
        raise ValueError("this is not an optimizer state dict (it needs 'state' and 'param_groups'); pass what "
                         "Muon.state_dict() returned")
    if len(groups) != len(param_groups):
        raise ValueError(f"the state dict has {len(groups)} parameter groups and this optimizer {len(param_groups)}; "
                         "load one saved by a Muon built from the same parameter groups")
    for index, (saved, group) in enumerate(zip(groups, param_groups)):
        algorithm, count = saved.get("algorithm"), len(saved.get("params", ()))
        if algorithm != group["algorithm"] or count != len(group["params"]):
            raise ValueError(f"parameter group {index} holds {count} parameters of algorithm {algorithm!r} in the "
                             f"state dict but {len(group['params'])} of {group['algorithm']!r} here; load one saved "
                             "by a Muon built from the same parameter groups")
        allowed = set(FIELDS[algorithm]) | ({"normuon_v"} if algorithm == "muon" else set())
        for pid in saved["params"]:
            extra = sorted(set(state.get(pid, {})) - allowed)
            if extra:
                raise ValueError(f"parameter group {index} ({algorithm}) has state {extra} in the state dict, which "
                                 f"a {algorithm} group does not keep (valid: {sorted(allowed)}); it was saved by "
                                 "another optimizer")
