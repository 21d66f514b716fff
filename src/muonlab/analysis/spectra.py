"""SVD entropy by matrix type (Moonlight, arXiv 2502.16982 §3.4, Figure 4).

The entropy of one matrix, ``H(σ)``, and of every matrix of a model are :mod:`muonlab.spectra`.
Moonlight's Figure 4 groups the matrices by type and macro-averages each group over layers:
AttnQO (query and output projections), AttnKV (key and value projections), Experts (routed experts;
the paper samples 3 of 64 per layer, here all are used), SharedExperts, Router, and Dense (the
dense MLP of the first layer; every dense MLP here). ``matrix_group`` maps this package's
parameter names (the ``svd_entropy/<name>[/<expert>]`` keys logged by training) to those groups.
"""

from __future__ import annotations

__all__ = ["MATRIX_GROUPS", "group_means", "layer_of", "matrix_group"]

MATRIX_GROUPS = ("AttnQO", "AttnKV", "Experts", "SharedExperts", "Router", "Dense")
"""Moonlight Figure 4's matrix groups, in its order."""

# Attention projections by leaf name: MHA (wq, wk, wv, wo) and MLA (see muonlab.models.mla).
_ATTN_QO = frozenset({"wq", "wo", "wq_down", "wq_nope", "wq_rope"})
_ATTN_KV = frozenset({"wk", "wv", "wkv_down", "wk_rope", "wk_up", "wv_up"})


def matrix_group(name: str) -> str | None:
    """The Figure-4 group of a matrix, from its parameter name, or None for matrices outside the groups.

    ``name`` is a parameter name with an optional ``/<expert>`` suffix, with or without the
    ``svd_entropy/`` prefix: ``layers.3.attn.wq.weight`` -> AttnQO, ``layers.3.attn.wk_up.weight``
    -> AttnKV, ``layers.3.mlp.w_gate/17`` -> Experts, ``layers.3.mlp.shared.w_up.weight`` ->
    SharedExperts, ``layers.3.mlp.router`` -> Router, ``layers.0.mlp.w_down.weight`` -> Dense.
    """
    base, _, expert = name.removeprefix("svd_entropy/").partition("/")
    parts = base.split(".")
    if parts[-1] == "weight":
        parts = parts[:-1]
    leaf = parts[-1]
    if "attn" in parts:
        return "AttnQO" if leaf in _ATTN_QO else "AttnKV" if leaf in _ATTN_KV else None
    if "mlp" in parts:
        if leaf == "router":
            return "Router"
        if "shared" in parts:
            return "SharedExperts"
        return "Experts" if expert else "Dense"
    return None


def layer_of(name: str) -> int | None:
    """The block index in a ``layers.<i>.…`` parameter name (with or without the ``svd_entropy/`` prefix)."""
    parts = name.removeprefix("svd_entropy/").split(".")
    if len(parts) > 1 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1])
    return None


def group_means(entropies: dict[str, float]) -> dict[str, float]:
    """Per group of ``MATRIX_GROUPS`` present, the macro average over layers (Moonlight Figure 4):
    the mean over layers of each layer's mean entropy within the group. Names without a group are
    left out; a matrix outside ``layers.<i>`` counts as a layer of its own.
    """
    by_group: dict[str, dict[int | str, list[float]]] = {}
    for name, value in entropies.items():
        group = matrix_group(name)
        if group is not None:
            layer = layer_of(name)
            by_group.setdefault(group, {}).setdefault(name if layer is None else layer, []).append(value)
    means = {}
    for group in MATRIX_GROUPS:
        if group in by_group:
            layer_means = [sum(v) / len(v) for v in by_group[group].values()]
            means[group] = sum(layer_means) / len(layer_means)
    return means
