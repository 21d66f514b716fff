"""The sharded checkpoint format: torch.distributed.checkpoint (DCP), loadable at any world size.

::

    step_0000N/
        trainer.json      # see muonlab.rundir.checkpoint.store, plus "optimizer" (param-group
                          # hyperparameters, skipped steps) and "world_size"
        state/            # DCP: .metadata + one file per rank
            model/<parameter or buffer name>          full logical shape
            optimizer/<parameter name>/<field>        momentum_buffer | exp_avg, exp_avg_sq, step

Every tensor is saved under its *logical* (unsharded) shape: FSDP2 parameters and their state
as DTensors, replicated tensors once (DCP de-duplicates them), ZeRO-1 state assembled per
parameter on one rank. DCP reads whatever part of each tensor the loading rank needs, so a
checkpoint written by N processes loads on M (and on one, without a process group) and continues
the same trajectory. The optimizer must be :class:`muonlab.optim.Muon` (its ``checkpoint_state``
and ``checkpoint_metadata``). Saving and loading are collectives when a process group is up.
Nothing is unpickled on load: tensors come from DCP, everything else from JSON.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ...parallel import unwrap
from .store import (
    SHARDED_FILES,
    SHARDED_STATE_DIR,
    CheckpointError,
    CorruptCheckpointError,
    finish_load,
    first_nonfinite,
    multi_process,
    read_trainer_record,
    write_checkpoint,
)

__all__ = ["is_sharded_checkpoint", "load_sharded_checkpoint", "save_sharded_checkpoint"]


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete checkpoint in this (DCP) format."""
    return all((Path(path) / f).is_file() for f in SHARDED_FILES)


@contextmanager
def _quiet_single_process():
    """DCP warns on every single-process call that it assumes one process; that is what we asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _tensors(model: torch.nn.Module, optimizer) -> dict[str, torch.Tensor]:
    state = {f"model/{k}": v for k, v in unwrap(model).state_dict().items()}
    if optimizer is not None:
        state.update({f"optimizer/{k}": v for k, v in optimizer.checkpoint_state().items()})
    return state


def save_sharded_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a sharded checkpoint for ``step`` from every rank (a collective) and return its directory.

    Same contract as ``save_checkpoint``: ``trainer_state`` is JSON (rank 0's is written), only
    the newest ``keep`` checkpoints are kept, and on a write error the partial checkpoint is
    removed, the previous one kept, and every rank raises ``OSError``.
    """
    import torch.distributed.checkpoint as dcp

    def write_state(path: Path) -> None:
        with _quiet_single_process():
            dcp.save(_tensors(model, optimizer), checkpoint_id=str(path), no_dist=not multi_process())

    fields = {
        "world_size": torch.distributed.get_world_size() if multi_process() else 1,
        "optimizer": optimizer.checkpoint_metadata() if optimizer is not None else None,
    }
    return write_checkpoint(run_dir, step, model, trainer_state, [(SHARDED_STATE_DIR, write_state)], keep, fields)


def load_sharded_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer=None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a DCP checkpoint into ``model`` (and ``optimizer``), at any world size; returns the trainer state.

    A collective when a process group is up. Raises ``CheckpointError`` for an incomplete or
    corrupt checkpoint, one saved for a different model, or optimizer state for other parameters.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"checkpoint {path} is incomplete or not a sharded checkpoint: it needs "
                              f"{' and '.join(SHARDED_FILES)}")
    record = read_trainer_record(path, model)
    state_dir = str(path / SHARDED_STATE_DIR)
    try:
        available = set(dcp.FileSystemReader(state_dir).read_metadata().state_dict_metadata)
    except Exception as e:
        raise CorruptCheckpointError(f"checkpoint metadata {state_dir}/.metadata is corrupt: {e}") from None

    def read(template: dict[str, torch.Tensor]) -> None:
        try:
            with _quiet_single_process():
                dcp.load(template, checkpoint_id=state_dir, no_dist=not multi_process())
        except Exception as e:  # DCP wraps per-rank failures (shape mismatch, truncated file) in its own type
            raise CorruptCheckpointError(f"checkpoint {path} could not be read into this model and optimizer: "
                                  f"{' '.join(str(e).split())[:500]}") from None

    module = unwrap(model)
    weights = {f"model/{k}": v for k, v in module.state_dict().items()}
    missing = sorted(k for k in weights if k not in available)
    if missing:
        raise CheckpointError(f"checkpoint {path} does not fit the model: it lacks {', '.join(missing[:5])}")
    read(weights)
    module.load_state_dict({k.removeprefix("model/"): v for k, v in weights.items()})
    bad = first_nonfinite(model)
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint {path} holds NaN/inf weights ({bad})")
    if optimizer is not None:
        if record.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        try:
            optimizer.load_checkpoint_metadata(record["optimizer"])
        except ValueError as e:
            raise CheckpointError(
                f"optimizer state in {path} does not fit this optimizer's param groups: {e}") from None
        prefix = "optimizer/"
        optimizer.load_checkpoint_state(
            {k.removeprefix(prefix) for k in available if k.startswith(prefix)},
            lambda template: read({prefix + k: v for k, v in template.items()}),
        )
    return finish_load(record, restore_rng)
