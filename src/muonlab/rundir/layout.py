"""Where things are in a run folder, and which checkpoints in it are complete — no torch needed.

The names here are the run folder's layout (see :mod:`muonlab.rundir`); the checkpoint store
(:mod:`muonlab.rundir.checkpoint.store`) writes what they name. Kept free of torch so that deciding
whether a folder already holds a run (``holds_run``) costs milliseconds, not a torch import.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHECKPOINTS_DIR", "LATEST_FILE", "MODEL_FILE", "OPTIMIZER_FILE", "PLAIN_FILES", "SHARDED_FILES",
           "SHARDED_METADATA", "SHARDED_STATE_DIR", "TRAINER_FILE", "CheckpointError", "checkpoint_dir_name",
           "is_complete", "latest_checkpoint"]

CHECKPOINTS_DIR = "checkpoints"
TRAINER_FILE = "trainer.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SHARDED_STATE_DIR = "state"
PLAIN_FILES = (MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE)
SHARDED_METADATA = f"{SHARDED_STATE_DIR}/.metadata"  # DCP writes it last
SHARDED_FILES = (TRAINER_FILE, SHARDED_METADATA)
LATEST_FILE = "latest"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt, or saved for a different model."""


def checkpoint_dir_name(step: int) -> str:
    """The directory name of the checkpoint taken after ``step`` optimizer steps."""
    return f"step_{step:08d}"



def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def is_complete(path: Path) -> bool:
    """Whether ``path`` holds every file of a plain checkpoint or of a sharded one."""
    return any(all((path / f).is_file() for f in files) for files in (PLAIN_FILES, SHARDED_FILES))


def _complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest step first. Temp dirs never match ``step_*``."""
    found = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            step = _step_of(p)
            if step is not None and p.is_dir() and is_complete(p):
                found.append((step, p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None if there is none.

    Trusts the ``latest`` pointer when it names a complete checkpoint, otherwise takes the highest
    complete ``step_*`` directory. Temp directories of interrupted saves are ignored.
    """
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    pointer = ckpt_root / LATEST_FILE
    if pointer.is_file():
        candidate = ckpt_root / pointer.read_text().strip()
        if _step_of(candidate) is not None and is_complete(candidate):
            return candidate
    complete = _complete_checkpoints(ckpt_root)
    return complete[-1] if complete else None
