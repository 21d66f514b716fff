"""The single-process checkpoint format: safetensors weights and a ``weights_only`` optimizer file.

::

    step_0000N/
        model.safetensors   # weights; tied (shared) tensors are stored once
        optimizer.pt        # optimizer.state_dict(), read back with torch.load(weights_only=True)
        trainer.json        # see muonlab.rundir.checkpoint.store

Works with any ``torch.optim.Optimizer``. Nothing is unpickled on load: weights come from
safetensors, the optimizer state from ``torch.load(..., weights_only=True)`` (so it may hold only
tensors, numbers, strings, bools, None, lists, tuples and dicts) and the rest from JSON.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ...parallel import unwrap
from .reshard import load_plain_on_group
from .store import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    PLAIN_FILES,
    CheckpointError,
    CorruptCheckpointError,
    finish_load,
    first_nonfinite,
    multi_process,
    read_trainer_record,
    write_checkpoint,
)

__all__ = ["load_plain_checkpoint", "save_plain_checkpoint"]


def save_plain_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Atomically write a plain checkpoint for ``step`` and return its directory (see ``save_checkpoint``)."""
    if multi_process():
        raise ValueError("this process is one of several: a multi-process run saves sharded checkpoints "
                         "(save_checkpoint chooses the sharded format by itself)")

    def write_weights(path: Path) -> None:
        safetensors.torch.save_model(unwrap(model), str(path), force_contiguous=True)

    def write_optimizer(path: Path) -> None:
        torch.save(optimizer.state_dict(), path)

    return write_checkpoint(run_dir, step, model, trainer_state,
                            [(MODEL_FILE, write_weights), (OPTIMIZER_FILE, write_optimizer)], keep)


def load_plain_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a plain checkpoint into ``model`` (and ``optimizer``); returns the trainer state.

    See ``load_checkpoint``. Under several processes every rank keeps its part of each tensor
    (:mod:`.reshard`), so a one-process run continues on any number of processes.
    """
    path = Path(path)
    missing = [f for f in PLAIN_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is incomplete or not a checkpoint: missing {', '.join(missing)} "
            f"(a checkpoint directory holds {', '.join(PLAIN_FILES)})"
        )
    record = read_trainer_record(path, model)
    if multi_process():  # a one-process run continued on several: every rank keeps its part
        load_plain_on_group(path, model, optimizer)
        return finish_load(record, restore_rng)
    try:
        safetensors.torch.load_model(unwrap(model), str(path / MODEL_FILE), strict=True)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatch
        detail = " ".join(str(e).split())
        raise CheckpointError(f"checkpoint weights {path / MODEL_FILE} do not fit the model: {detail}") from None
    except Exception as e:  # safetensors raises its own error type for a truncated or garbled file
        raise CorruptCheckpointError(f"checkpoint weights {path / MODEL_FILE} are corrupt or truncated: {e}") from None
    bad = first_nonfinite(model)
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint weights {path / MODEL_FILE} hold NaN/inf ({bad})")

    if optimizer is not None:
        try:
            optimizer_state = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, or an object weights_only refuses to unpickle
            raise CorruptCheckpointError(f"checkpoint file {path / OPTIMIZER_FILE} is corrupt or unsafe: {e}") from None
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"optimizer state {path / OPTIMIZER_FILE} does not fit this optimizer's param groups: {e}"
            ) from None
    return finish_load(record, restore_rng)
