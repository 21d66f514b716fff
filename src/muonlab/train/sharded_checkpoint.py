"""Checkpoints of a multi-process run, through torch.distributed.checkpoint (DCP), loadable at any world size.

Layout (beside the single-process layout of :mod:`muonlab.train.checkpoint`, in the same
``checkpoints/`` folder and with the same ``latest`` pointer)::

    step_0000N/
        trainer.json      # as in a single-process checkpoint, plus "optimizer" (param-group
                          # hyperparameters, skipped steps) and "world_size"
        state/            # DCP: .metadata + one file per rank
            model/<parameter or buffer name>          full logical shape
            optimizer/<parameter name>/<field>        momentum_buffer | exp_avg, exp_avg_sq, step

Every tensor is saved under its *logical* (unsharded) shape: FSDP2 parameters and their state
as DTensors, replicated tensors once (DCP de-duplicates them), ZeRO-1 state assembled per
parameter on one rank. DCP reads whatever part of each tensor the loading rank needs, so a
checkpoint written by N processes loads on M (and on one, without a process group) and continues
the same trajectory.

Atomicity as in the single-process format: all ranks write into ``.tmp-step_0000N-<pid of rank
0>/``, rank 0 adds ``trainer.json`` and renames the folder into place, then moves ``latest``.
Nothing is unpickled on load: tensors come from DCP, everything else from JSON.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .checkpoint import (
    FORMAT_VERSION,
    TRAINER_FILE,
    CheckpointError,
    _complete_checkpoints,
    _config_difference,
    _publish,
    _fsync_file,
    _json_roundtrip,
    _remove_stale_temp_dirs,
    _unwrap,
    _write_latest,
    capture_rng_state,
    checkpoint_dir_name,
    model_config_dict,
    restore_rng_state,
)

__all__ = ["SHARDED_STATE_DIR", "is_sharded_checkpoint", "load_sharded_checkpoint", "save_sharded_checkpoint"]

SHARDED_STATE_DIR = "state"
_RESERVED_KEYS = ("format", "rng", "model_config", "optimizer", "world_size")


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete checkpoint in this (DCP) format."""
    path = Path(path)
    return (path / TRAINER_FILE).is_file() and (path / SHARDED_STATE_DIR / ".metadata").is_file()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def _quiet_single_process():
    """DCP warns on every single-process call that it assumes one process; that is what we asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _from_rank0(value: Any) -> Any:
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _tensors(model: torch.nn.Module, optimizer) -> dict[str, torch.Tensor]:
    state = {f"model/{k}": v for k, v in _unwrap(model).state_dict().items()}
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
    """Write a checkpoint for ``step`` from every rank (a collective) and return its directory.

    Same contract as :func:`muonlab.train.checkpoint.save_checkpoint`: ``trainer_state`` is JSON
    (rank 0's is written), only the newest ``keep`` checkpoints are kept, and on a write error the
    partial checkpoint is removed, the previous one kept, and every rank raises ``OSError``.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the number of checkpoints to keep), got {keep}")
    clashes = [k for k in _RESERVED_KEYS if k in trainer_state]
    if clashes or trainer_state.get("step", step) != step:
        raise ValueError(f"trainer_state may not set {', '.join(clashes) or 'step'}: those are filled in here and "
                         f"'step' must equal the step argument ({step})")
    import torch.distributed.checkpoint as dcp

    rank0 = not _distributed() or dist.get_rank() == 0
    ckpt_root = Path(run_dir) / "checkpoints"
    name = checkpoint_dir_name(step)
    final = ckpt_root / name
    if rank0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_dirs(ckpt_root)
    tmp = ckpt_root / f".tmp-{name}-{_from_rank0(os.getpid())}"
    previous = _complete_checkpoints(ckpt_root) if rank0 else []
    record = {
        "format": FORMAT_VERSION,
        "step": step,
        **trainer_state,
        "world_size": dist.get_world_size() if _distributed() else 1,
        "optimizer": optimizer.checkpoint_metadata() if optimizer is not None else None,
        "model_config": model_config_dict(model),
        "rng": capture_rng_state(),
    }
    with _quiet_single_process():
        dcp.save(_tensors(model, optimizer), checkpoint_id=str(tmp / SHARDED_STATE_DIR), no_dist=not _distributed())
    error = None
    if rank0:
        target = tmp / TRAINER_FILE
        try:
            target.write_text(json.dumps(record, indent=1))
            _fsync_file(target)
            target = final
            _publish(tmp, final)
            _write_latest(ckpt_root, name)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            kept = f"the previous checkpoint {previous[-1]} is kept" if previous else "there is no previous checkpoint"
            error = (e.errno or errno.EIO, f"could not write checkpoint {target} ({e.strerror or e}); {kept}")
        if error is None:
            complete = _complete_checkpoints(ckpt_root)
            for stale in [p for p in complete if p != final][: max(0, len(complete) - keep)]:
                shutil.rmtree(stale, ignore_errors=True)
    error = _from_rank0(error)
    if error is not None:
        raise OSError(*error)
    return final


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
        raise CheckpointError(f"checkpoint {path} is incomplete or not a sharded checkpoint: it needs {TRAINER_FILE} "
                              f"and {SHARDED_STATE_DIR}/.metadata")
    try:
        record = json.loads((path / TRAINER_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {path / TRAINER_FILE} is corrupt: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint file {path / TRAINER_FILE} is not a muonlab checkpoint of format {FORMAT_VERSION}")
    saved_config, current_config = record.get("model_config"), model_config_dict(model)
    if saved_config is not None and current_config is not None:
        diffs = _config_difference(saved_config, _json_roundtrip(current_config))
        if diffs:
            raise CheckpointError(f"checkpoint {path} was saved for a different model: {'; '.join(diffs)}")
    state_dir = str(path / SHARDED_STATE_DIR)
    try:
        available = set(dcp.FileSystemReader(state_dir).read_metadata().state_dict_metadata)
    except Exception as e:
        raise CheckpointError(f"checkpoint metadata {state_dir}/.metadata is corrupt: {e}") from None

    def read(template: dict[str, torch.Tensor]) -> None:
        try:
            with _quiet_single_process():
                dcp.load(template, checkpoint_id=state_dir, no_dist=not _distributed())
        except Exception as e:  # DCP wraps per-rank failures (shape mismatch, truncated file) in its own type
            raise CheckpointError(f"checkpoint {path} could not be read into this model and optimizer: "
                                  f"{' '.join(str(e).split())[:500]}") from None

    module = _unwrap(model)
    weights = {f"model/{k}": v for k, v in module.state_dict().items()}
    missing = sorted(k for k in weights if k not in available)
    if missing:
        raise CheckpointError(f"checkpoint {path} does not fit the model: it lacks {', '.join(missing[:5])}")
    read(weights)
    module.load_state_dict({k.removeprefix("model/"): v for k, v in weights.items()})
    if optimizer is not None:
        if record.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        try:
            optimizer.load_checkpoint_metadata(record["optimizer"])
        except ValueError as e:
            raise CheckpointError(f"optimizer state in {path} does not fit this optimizer's param groups: {e}") from None
        prefix = "optimizer/"
        optimizer.load_checkpoint_state(
            {k.removeprefix(prefix) for k in available if k.startswith(prefix)},
            lambda template: read({prefix + k: v for k, v in template.items()}),
        )
    if restore_rng:
        restore_rng_state(record["rng"])
    for key in ("format", "optimizer", "world_size"):
        record.pop(key, None)
    return record
