"""``transformers.Trainer`` with muonlab's Muon, in one line::

    from muonlab.integrations.hf_trainer import muon_trainer_optimizers

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizers=muon_trainer_optimizers(model, args))

The optimizer is :class:`muonlab.optim.Muon` over :func:`muonlab.optim.param_groups` (Muon on the
hidden, router and expert matrices, AdamW on embeddings, the head, norms and biases) with the
Trainer's ``learning_rate``, ``weight_decay``, ``adam_beta1``/``adam_beta2`` and ``adam_epsilon``;
the scheduler slot is left empty, so the Trainer builds its own from ``lr_scheduler_type`` and
the warmup settings, over every group of this optimizer — both algorithms follow one schedule,
as Moonlight shares AdamW's lr. The Trainer clips gradients (``max_grad_norm``) itself.

Weight decay: ``args.weight_decay`` applies to every parameter, norm gains and biases included,
as in Moonlight (App. D found decaying the gains crucial) and :func:`param_groups`; the Trainer's
own AdamW exempts biases and norms, which ``role_overrides={"bias": {"weight_decay": 0.0},
"norm": {"weight_decay": 0.0}}`` reproduces. Keyword arguments reach :class:`Muon` (e.g.
``momentum``, ``scale``, ``ns_dtype``, and the refinements ``normuon=True``, ``cautious_wd=True``);
``orthogonalize="per_head"`` orthogonalizes each attention head's block on its own (read from the
model's attention modules and config, :mod:`muonlab.optim.heads`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..optim import Muon, param_groups

__all__ = ["muon_trainer_optimizers"]


def muon_trainer_optimizers(model: nn.Module, args: Any, *, role_overrides: dict[str, dict[str, Any]] | None = None,
                            split_fused: bool = False, orthogonalize: str = "matrix",
                            **muon_kwargs: Any) -> tuple[Muon, None]:
    """The ``optimizers=`` pair for ``transformers.Trainer``: ``(Muon for model, None)``; see the module docstring.

    Args:
        model: the model the Trainer trains (any ``nn.Module``; Hugging Face layers route by themselves).
        args: the Trainer's ``TrainingArguments``.
        role_overrides, split_fused, orthogonalize: as :func:`muonlab.optim.param_groups`.
        muon_kwargs: further :class:`~muonlab.optim.Muon` options; they override the values taken from ``args``.
    """
    options = dict(lr=args.learning_rate, weight_decay=args.weight_decay,
                   adamw_betas=(args.adam_beta1, args.adam_beta2), adamw_eps=args.adam_epsilon)
    options.update(muon_kwargs)
    groups = param_groups(model, role_overrides=role_overrides, split_fused=split_fused, orthogonalize=orthogonalize)
    return Muon(groups, **options), None
