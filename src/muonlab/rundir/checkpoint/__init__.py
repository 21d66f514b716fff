"""Atomic, resumable checkpoints in a run folder's ``checkpoints/``: one store, two formats.

::

    path = save_checkpoint(run_dir, step, model, optimizer, {"tokens": ..., "loader": ...})
    state = load_checkpoint(latest_checkpoint(run_dir), model, optimizer)   # state["step"], state["tokens"], ...

Modules: :mod:`.store` (folder layout, atomic publish, ``latest``, pruning, ``trainer.json`` and
its checks), :mod:`.manifest` (a checksum per file, written last), :mod:`.fallback` (resume from the
newest checkpoint that verifies), :mod:`.rng` (global RNG states as JSON), and one module per format:

- :mod:`.plain` — ``model.safetensors`` + ``optimizer.pt`` (``torch.load(weights_only=True)``):
  one process, any ``torch.optim.Optimizer``; the weights file is readable by any safetensors tool.
- :mod:`.sharded` — torch.distributed.checkpoint (``state/``): written by every rank of a
  multi-process run, each tensor at its logical shape, loadable at any world size (also on one).

Why two formats rather than DCP always: the sharded format stores optimizer state through
:class:`muonlab.optim.Muon`'s ``checkpoint_state``, so DCP-always would need a second optimizer
path for plain torch optimizers (e.g. ``torch.optim.AdamW``) — not simpler — and it would give up
the single-file safetensors weights. Both formats share the store, so they have the same
guarantees: a ``step_*`` directory is complete or absent (SIGKILL, ENOSPC), its files verify against
its manifest before anything is loaded, weights holding NaN/inf are never saved, resume is exact
(RNG states included), nothing is unpickled, and a checkpoint of another model fails naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .plain import load_plain_checkpoint, save_plain_checkpoint
from .rng import capture_rng_state, restore_rng_state
from .sharded import is_sharded_checkpoint, load_sharded_checkpoint, save_sharded_checkpoint
from .store import (
    SHARDED_METADATA,
    CheckpointError,
    CorruptCheckpointError,
    checkpoint_dir_name,
    checkpoint_problem,
    checkpoint_record,
    checkpoint_step,
    first_nonfinite,
    from_rank0,
    latest_checkpoint,
    model_config_dict,
    multi_process,
)

__all__ = ["CheckpointError", "CorruptCheckpointError", "NonFiniteWeightsError", "capture_rng_state",
           "checkpoint_dir_name", "checkpoint_problem", "checkpoint_record", "checkpoint_step", "is_sharded_checkpoint",
           "latest_checkpoint", "load_checkpoint", "load_plain_checkpoint", "load_sharded_checkpoint",
           "model_config_dict", "restore_rng_state", "save_checkpoint", "save_plain_checkpoint",
           "save_sharded_checkpoint"]


class NonFiniteWeightsError(FloatingPointError):
    """The weights hold NaN/inf, so they were not saved as a checkpoint."""


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
    sharded: bool | None = None,
) -> Path:
    """Atomically write a checkpoint for ``step`` into ``<run_dir>/checkpoints/`` and return its directory.

    ``trainer_state`` is whatever the loop needs to resume (e.g. ``tokens`` and the data loader's
    state); it must be JSON-serializable and may not use the keys ``format``, ``rng``,
    ``model_config``, ``optimizer`` or ``world_size``, which are filled in (RNG states from
    ``capture_rng_state()``, the model config from ``model.config``). Only the newest ``keep``
    checkpoints are kept; the one just written is never deleted. Saving the same step twice
    replaces the older copy.

    ``sharded``: the format; by default sharded (a collective: call on every rank) when this
    process is one of several, plain otherwise. ``sharded=True`` on one process writes a sharded
    checkpoint too (it needs a :class:`muonlab.optim.Muon`).

    On any write error (e.g. ``ENOSPC``, disk full) the partial checkpoint is removed, the previous
    checkpoint is left as it was, and an ``OSError`` names the failed path. Weights holding NaN or
    inf are not saved: ``NonFiniteWeightsError`` names the first such tensor.
    """
    bad = first_nonfinite(model)
    if bad is not None:
        kept = latest_checkpoint(run_dir)
        raise NonFiniteWeightsError(f"step {step}: the weights hold NaN/inf ({bad}), so they were not saved; "
                                    + (f"the checkpoint {kept} is kept" if kept else "there is no earlier checkpoint"))
    save = save_sharded_checkpoint if (multi_process() if sharded is None else sharded) else save_plain_checkpoint
    return save(run_dir, step, model, optimizer, trainer_state, keep)


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint directory (either format, told apart by its files) into ``model`` and ``optimizer``.

    Returns the ``trainer_state`` given to ``save_checkpoint`` plus ``step``, ``rng`` and
    ``model_config``. With ``restore_rng`` (the default) the global RNGs are restored too, so
    call this after building the model and optimizer and right before training resumes. Pass
    ``optimizer=None`` to load only the weights (evaluation, fine-tuning). A sharded checkpoint
    loads at any world size; so does a plain one written by :class:`muonlab.optim.Muon` (:mod:`.reshard`).

    With ``verify`` (the default) every file is first checked against the checkpoint's manifest (by
    rank 0 under several processes). Raises ``CorruptCheckpointError`` if a file does not match, is
    unreadable or holds non-finite weights, and ``CheckpointError`` if the directory is incomplete or
    was saved for a model whose config differs from ``model.config``.
    """
    path = Path(path)
    if verify:
        problem = from_rank0(checkpoint_problem(path) if not multi_process() or torch.distributed.get_rank() == 0
                             else None)
        if problem is not None:
            raise CorruptCheckpointError(f"checkpoint {path} is damaged: {problem}")
    load = load_sharded_checkpoint if (path / SHARDED_METADATA).is_file() else load_plain_checkpoint
    return load(path, model, optimizer, restore_rng)
