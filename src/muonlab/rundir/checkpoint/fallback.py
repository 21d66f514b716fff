"""Resume from the newest checkpoint that verifies, skipping damaged ones and saying which.

A checkpoint whose files do not match its manifest, cannot be read, or hold NaN/inf weights
(:class:`~muonlab.rundir.layout.CorruptCheckpointError`) is skipped in favour of the next older
one; any other :class:`~muonlab.rundir.layout.CheckpointError` (a checkpoint of another model or
config) stops, because an older checkpoint of the same run would not fit either. When every
checkpoint of the run is damaged, resuming stops too rather than silently starting over.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..layout import CheckpointError, CorruptCheckpointError, checkpoints_newest_first
from . import load_checkpoint
from .store import checkpoint_problem, checkpoint_record, from_rank0, multi_process

__all__ = ["Resumed", "load_newest_good"]


@dataclass
class Resumed:
    """What :func:`load_newest_good` found: the checkpoint loaded (None: there was none), its trainer
    state, and one sentence per newer checkpoint that was skipped."""

    checkpoint: Path | None
    state: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _rank0() -> bool:
    return not multi_process() or torch.distributed.get_rank() == 0


def load_newest_good(
    run_dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    check: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Resumed:
    """Load the newest intact checkpoint of ``run_dir`` into ``model`` and ``optimizer`` (RNGs restored).

    ``check(path, record)`` sees each candidate's verified ``trainer.json`` record before anything is
    loaded and may raise (e.g. a config that differs from the one the checkpoint was saved with).
    Under several processes a collective: rank 0 verifies, every rank loads the same checkpoint.

    Raises ``CheckpointError`` when the run has checkpoints but none of them is intact.
    """
    candidates = from_rank0(checkpoints_newest_first(run_dir) if _rank0() else None)
    skipped: list[str] = []
    for path in candidates:
        problem = from_rank0(checkpoint_problem(path) if _rank0() else None)
        try:
            if problem is not None:
                raise CorruptCheckpointError(f"checkpoint {path} is damaged: {problem}")
            if check is not None:
                check(path, checkpoint_record(path))
            state = load_checkpoint(path, model, optimizer, verify=False)
        except CorruptCheckpointError as err:
            skipped.append(f"{err}; skipped it")
            continue
        return Resumed(path, state, skipped)
    if skipped:
        raise CheckpointError(f"every checkpoint of {run_dir} is damaged ({' '.join(skipped)}); nothing was loaded "
                              "or changed: move the damaged checkpoints aside to start over, or choose a new run_dir")
    return Resumed(None)
