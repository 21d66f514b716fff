"""Where things are in a run folder, and which checkpoints in it are complete — no torch needed.

The names here are the run folder's layout (see :mod:`muonlab.rundir`); the checkpoint store
(:mod:`muonlab.rundir.checkpoint.store`) writes what they name. Kept free of torch so that deciding
whether a folder already holds a run (``holds_run``) costs milliseconds, not a torch import.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHECKPOINTS_DIR", "LATEST_FILE", "MANIFEST_FILE", "MODEL_FILE", "OPTIMIZER_FILE", "PLAIN_FILES",
           "SHARDED_FILES", "SHARDED_METADATA", "SHARDED_STATE_DIR", "TRAINER_FILE", "CheckpointError",
           "CorruptCheckpointError", "checkpoint_dir_name", "checkpoints_newest_first", "is_complete",
           "latest_checkpoint"]

CHECKPOINTS_DIR = "checkpoints"
TRAINER_FILE = "trainer.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SHARDED_STATE_DIR = "state"
PLAIN_FILES = (MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE)
SHARDED_METADATA = f"{SHARDED_STATE_DIR}/.metadata"  # DCP writes it last
SHARDED_FILES = (TRAINER_FILE, SHARDED_METADATA)
LATEST_FILE = "latest"
MANIFEST_FILE = "manifest.json"  # a checksum per file, written last (muonlab.rundir.checkpoint.manifest)


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt, or saved for a different model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files are damaged (manifest mismatch, unreadable, non-finite weights): resuming
    skips it in favour of an older good one, where a :class:`CheckpointError` of another kind stops."""


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


def _pointed(ckpt_root: Path) -> Path | None:
    """The complete checkpoint the ``latest`` pointer names, or None. The pointer may only hold a bare
    ``step_N`` name: a path (``../elsewhere/step_N``, ``/abs/step_N``) names nothing inside the folder."""
    try:
        name = (ckpt_root / LATEST_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    candidate = ckpt_root / name
    if "/" in name or "\\" in name or _step_of(candidate) is None or not is_complete(candidate):
        return None
    return candidate


def checkpoints_newest_first(run_dir: str | os.PathLike) -> list[Path]:
    """The run's complete checkpoint directories, the one ``latest`` names first, then by step, newest first."""
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    ordered = _complete_checkpoints(ckpt_root)[::-1]
    pointed = _pointed(ckpt_root)
    return [pointed, *[p for p in ordered if p != pointed]] if pointed is not None else ordered


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None if there is none.

    Trusts the ``latest`` pointer when it names a complete checkpoint inside the folder, otherwise
    takes the highest complete ``step_*`` directory. Temp directories of interrupted saves are
    ignored. Whether its files are intact is for the loader to check (its manifest).
    """
    newest = checkpoints_newest_first(run_dir)
    return newest[0] if newest else None
