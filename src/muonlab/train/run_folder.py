"""The run-folder decision, taken before any tokenizer, dataset or model work.

A run folder holds one run (README "Training runs"): ``config.json``, ``metrics.jsonl`` and
``checkpoints/``, and muonlab's marker (:mod:`muonlab.rundir.ownership`). ``train(config)`` may
write into ``config.run_dir`` when the folder does not exist or is empty, or when it holds a run of
the same config and ``config.resume`` is on (the run then continues from its latest checkpoint).
Otherwise it stops at once — a folder with files muonlab did not write, another run, another
config — naming the folder and the first field that differs, instead of after minutes of
tokenizer training and data preparation; the folder is only read.

"The same config" compares the ``TrainConfig`` fields saved in ``config.json`` — and, on resume,
the ones saved inside the checkpoint (:func:`checkpoint_difference`), since ``config.json`` may be
edited or deleted — except ``RESUME_MAY_CHANGE``. ``batch_size`` and ``grad_accum`` may change with
the process count as long as the global batch (tokens per optimizer step) stays the same, so a run
saved on N processes continues on M.

While it trains, rank 0 holds the folder's writer lock (:func:`hold_run_folder`): a second writer
stops at once, naming the first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..rundir import holds_run, read_config
from ..rundir.layout import CheckpointError
from ..rundir.ownership import LOCK_FILE, MARKER_FILE, check_folder, claim_folder, folder_lock
from .config import TrainConfig

__all__ = ["BATCH_FIELDS", "RESUME_MAY_CHANGE", "RunFolderError", "check_run_folder", "checkpoint_difference",
           "first_config_difference", "hold_run_folder", "planned_dp_size", "run_config_record"]

RESUME_MAY_CHANGE = frozenset({
    "run_dir", "resume",  # the folder may be moved; resume is the decision itself
    "device", "threads", "compile", "parallel",  # where and how fast it runs (checkpoints load at any world size)
    "progress", "tensorboard", "checkpoint_every", "keep_checkpoints",  # what it shows and keeps
    "allow_new_data",  # the explicit consent to continue on a changed corpus, checked on its own
    "dp_shard", "tp", "ep",  # the mesh: the global batch is checked instead (BATCH_FIELDS)
})
"""TrainConfig fields a resumed run may change: they leave the model, data, optimizer, schedule and
metrics rows as they were."""


BATCH_FIELDS = ("batch_size", "grad_accum")
"""Per-process batch fields: they may change on resume when the global batch (``tokens_per_step``) does not."""


class RunFolderError(CheckpointError):
    """The run folder holds a run that this config may not write into (another config, or resume off)."""


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The record in ``<run_dir>/config.json``, or None when there is no such file."""
    try:
        return read_config(run_dir)
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise RunFolderError(f"{err}, so the run in {run_dir} cannot be checked or resumed; choose a new run_dir "
                             "(nothing was changed)") from None


def planned_dp_size(config: TrainConfig) -> int:
    """The data-parallel size this process will train at: torchrun's ``WORLD_SIZE`` (1 without it),
    over ``tp`` for a mesh (tensor-parallel peers read the same batch)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return max(1, world // config.tp) if config.parallel == "mesh" else world


def _global_batch_difference(saved: Any, config: TrainConfig, dp_size: int) -> str | None:
    now = config.tokens_per_step(dp_size)
    if not isinstance(saved, int) or saved == now:
        return None
    per_process = config.seq_len * config.grad_accum * dp_size
    hint = (f"batch_size={saved // per_process} keeps it at {dp_size} data-parallel processes"
            if saved % per_process == 0 else "keep batch_size × grad_accum × data-parallel processes equal")
    return f"the global batch is {saved:,} tokens per step there but {now:,} now ({hint})"


def first_config_difference(record: dict[str, Any], config: TrainConfig, dp_size: int | None = None) -> str | None:
    """``"<field> is <saved> there but <value> now"`` for the first TrainConfig field (in declaration
    order, ``RESUME_MAY_CHANGE`` left out) whose value in ``record`` differs from ``config``'s; None if none.

    A field the record lacks (a run started before the field existed) counts as its default: such a
    run continues when the config leaves the new field at its default. With ``dp_size`` (the
    data-parallel size the run continues at) the ``BATCH_FIELDS`` are compared as the global batch
    against the record's ``tokens_per_step`` instead, so the process count may change."""
    for field in dataclasses.fields(TrainConfig):
        if field.name in RESUME_MAY_CHANGE or (dp_size is not None and field.name in BATCH_FIELDS):
            continue
        value = getattr(config, field.name)
        if field.name not in record:
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            if value != default:
                return f"{field.name} is absent there (so {default!r}) but {value!r} now"
            continue
        if record[field.name] != value:
            return f"{field.name} is {record[field.name]!r} there but {value!r} now"
    return None if dp_size is None else _global_batch_difference(record.get("tokens_per_step"), config, dp_size)


def run_config_record(config: TrainConfig, dp_size: int) -> dict[str, Any]:
    """What a checkpoint keeps of the config, to check a resume against: the fields a resume may not
    change, and the global batch."""
    return {**{k: v for k, v in config.to_dict().items() if k not in RESUME_MAY_CHANGE},
            "tokens_per_step": config.tokens_per_step(dp_size)}


def checkpoint_difference(record: dict[str, Any], config: TrainConfig, dp_size: int) -> str | None:
    """How ``config`` differs from the config saved inside a checkpoint (its ``trainer.json`` ``record``),
    or None; checkpoints from before the config was saved there have nothing to compare."""
    saved = record.get("run_config")
    return first_config_difference(saved, config, dp_size) if isinstance(saved, dict) else None


def check_run_folder(config: TrainConfig) -> dict[str, Any] | None:
    """Decide whether ``config`` may write into ``config.run_dir``; return the ``config.json`` record
    of the run already there (None for a folder that holds no run yet).

    Raises ``FolderError`` for a folder muonlab may not write (an empty name, a file, files muonlab
    did not write), and ``RunFolderError`` naming the folder when it holds a run (a ``config.json``,
    a metrics log or a checkpoint) and ``config.resume`` is False, or when its ``config.json``
    differs from ``config`` in a field outside ``RESUME_MAY_CHANGE`` (or in the global batch).
    Reads only: nothing in the folder changes.
    """
    run_dir = check_folder(config.run_dir, "run", "run_dir")
    record = read_run_config(run_dir)
    if (record is not None or holds_run(run_dir)) and not config.resume:
        raise RunFolderError(f"run folder {run_dir} already holds a run; pass resume=True to continue it, "
                             "or choose a new run_dir (nothing was changed)")
    difference = None if record is None else first_config_difference(record, config, planned_dp_size(config))
    if difference is not None:
        raise RunFolderError(f"run folder {run_dir} holds a run with another config ({difference}); continue it "
                             "with the config it was started with, or choose a new run_dir (nothing was changed)")
    return record


@contextmanager
def hold_run_folder(config: TrainConfig, holder: str) -> Iterator[Path]:
    """Claim ``config.run_dir`` (create it with muonlab's marker) and hold its writer lock for the block.

    Only rank 0 of a torchrun launch (``RANK``) claims and locks: it writes everything but the
    checkpoint shards. Raises ``FolderError`` / ``FolderBusyError`` before anything is written. A run
    that fails before writing anything leaves no folder behind: the folders this call created are
    removed again when they hold nothing but muonlab's marker and lock.
    """
    if os.environ.get("RANK", "0") != "0":
        yield Path(config.run_dir)
        return
    created = _first_missing(Path(config.run_dir))
    run_dir = claim_folder(config.run_dir, "run", "run_dir")
    try:
        with folder_lock(run_dir, holder):
            yield run_dir
    except BaseException:
        if created is not None:
            _remove_unused(run_dir, created)
        raise


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None when ``folder`` exists)."""
    missing = None
    for path in (folder.absolute(), *folder.absolute().parents):
        if path.exists():
            return missing
        missing = path
    return missing


def _remove_unused(run_dir: Path, top: Path) -> None:
    """Remove ``run_dir`` and its parents up to ``top`` while they hold nothing but muonlab's marker and lock."""
    path = run_dir.absolute()
    try:
        if set(os.listdir(path)) - {MARKER_FILE, LOCK_FILE}:
            return
        for name in (MARKER_FILE, LOCK_FILE):
            (path / name).unlink(missing_ok=True)
        while True:
            path.rmdir()
            if path == top:
                return
            path = path.parent
    except OSError:
        return  # a folder something else wrote into meanwhile stays as it is
