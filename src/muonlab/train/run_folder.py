"""The run-folder decision, taken before any tokenizer, dataset or model work.

A run folder holds one run (README "Training runs"): ``config.json``, ``metrics.jsonl`` and
``checkpoints/``. ``train(config)`` may write into ``config.run_dir`` when the folder holds no run
yet, or when it holds a run of the same config and ``config.resume`` is on (the run then continues
from its latest checkpoint). Otherwise it stops at once, naming the folder and the first field that
differs, instead of after minutes of tokenizer training and data preparation; the folder is only
read.

"The same config" compares the ``TrainConfig`` fields saved in ``config.json`` (not the derived
fields or the ``command`` stored beside them), except ``RESUME_MAY_CHANGE``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..rundir import holds_run, read_config
from ..rundir.layout import CheckpointError
from .config import TrainConfig

__all__ = ["RESUME_MAY_CHANGE", "RunFolderError", "check_run_folder", "first_config_difference"]

RESUME_MAY_CHANGE = frozenset({
    "run_dir", "resume",  # the folder may be moved; resume is the decision itself
    "device", "threads", "compile", "parallel",  # where and how fast it runs (checkpoints load at any world size)
    "progress", "tensorboard", "checkpoint_every", "keep_checkpoints",  # what it shows and keeps
})
"""TrainConfig fields a resumed run may change: they leave the model, data, optimizer, schedule and
metrics rows as they were."""


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


def first_config_difference(record: dict[str, Any], config: TrainConfig) -> str | None:
    """``"<field> is <saved> there but <value> now"`` for the first TrainConfig field (in declaration
    order, ``RESUME_MAY_CHANGE`` left out) whose value in ``record`` differs from ``config``'s; None if none.

    A field the record lacks (a run started before the field existed) counts as its default: such a
    run continues when the config leaves the new field at its default."""
    for field in dataclasses.fields(TrainConfig):
        if field.name in RESUME_MAY_CHANGE:
            continue
        value = getattr(config, field.name)
        if field.name not in record:
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            if value != default:
                return f"{field.name} is absent there (so {default!r}) but {value!r} now"
            continue
        if record[field.name] != value:
            return f"{field.name} is {record[field.name]!r} there but {value!r} now"
    return None


def check_run_folder(config: TrainConfig) -> dict[str, Any] | None:
    """Decide whether ``config`` may write into ``config.run_dir``; return the ``config.json`` record
    of the run already there (None for a folder that holds no run: absent, empty, or other files only).

    Raises ``RunFolderError`` naming the folder when it holds a run (a ``config.json``, a metrics log
    or a checkpoint) and ``config.resume`` is False, or when its ``config.json`` differs from
    ``config`` in a field outside ``RESUME_MAY_CHANGE``. Reads only: nothing in the folder changes.
    """
    run_dir = Path(config.run_dir)
    record = read_run_config(run_dir)
    if (record is not None or holds_run(run_dir)) and not config.resume:
        raise RunFolderError(f"run folder {run_dir} already holds a run; pass resume=True to continue it, "
                             "or choose a new run_dir (nothing was changed)")
    difference = None if record is None else first_config_difference(record, config)
    if difference is not None:
        raise RunFolderError(f"run folder {run_dir} holds a run with another config ({difference}); continue it "
                             "with the config it was started with, or choose a new run_dir (nothing was changed)")
    return record
