"""Transitional: the max-logit helpers moved to ``muonlab.analysis.logits`` (shared by several studies); this
module re-exports the two that ``studies/scaling`` imports from here, until it imports them from there."""

from .logits import max_logit_keys, plot_max_logits

__all__ = ["max_logit_keys", "plot_max_logits"]
