"""muonlab.optim: the Muon optimizer (Moonlight's variant) for PyTorch. Depends on torch only.

Quick use::

    from muonlab.optim import Muon, param_groups
    optimizer = Muon(param_groups(model), lr=3e-4, weight_decay=0.1)   # AdamW's lr and wd

See :class:`Muon` for the update rule and :func:`param_groups` for how parameters are routed.
"""

from .muon import ALGORITHMS, NONFINITE_POLICIES, Muon, NonFiniteGradientError
from .newton_schulz import COEFFICIENT_SETS, CoefficientSet, get_coefficient_set, ns_flops, orthogonalize
from .qk_clip import QKClip
from .routing import ROLE_ALGORITHM, RoutedParam, param_groups, route_parameters, routing_table
from .scaling import SCALE_RULES, logical_matrix_shape, update_scale

__all__ = [
    "ALGORITHMS",
    "COEFFICIENT_SETS",
    "NONFINITE_POLICIES",
    "ROLE_ALGORITHM",
    "SCALE_RULES",
    "CoefficientSet",
    "Muon",
    "NonFiniteGradientError",
    "QKClip",
    "RoutedParam",
    "get_coefficient_set",
    "logical_matrix_shape",
    "ns_flops",
    "orthogonalize",
    "param_groups",
    "route_parameters",
    "routing_table",
    "update_scale",
]
