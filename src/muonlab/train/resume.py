"""Resuming a run honestly: from the newest intact checkpoint, only with the config and data it was saved with.

A checkpoint keeps what it was trained with (:func:`checkpoint_trainer_state`): the config fields a
resume may not change and the global batch (``run_folder.run_config_record``), the dataset's
fingerprint and the data-parallel size it was saved at. :func:`resume_run` compares them with the
run being started *before* loading anything — ``config.json`` can be edited or deleted, the
checkpoint cannot without failing its manifest — and refuses a mismatch, naming the field or the
corpus. A damaged checkpoint is skipped for the newest good one
(:func:`muonlab.rundir.checkpoint.fallback.load_newest_good`) and the run says which, on stderr and
in ``config.json``'s ``resumes`` list, which also records the process count of every resume.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import Dataset
from ..data.sft import SFTData
from ..parallel import Runtime
from ..rundir.checkpoint.fallback import load_newest_good
from .bookkeeping import Interval, Progress
from .config import TrainConfig
from .run_folder import RunFolderError, checkpoint_difference, run_config_record

__all__ = ["check_dataset_record", "checkpoint_trainer_state", "resume_run"]


def _fingerprint_changed(config: TrainConfig, saved: str, current: str, where: str) -> RunFolderError:
    return RunFolderError(f"the corpus {config.corpus!r} changed since {where} (fingerprint {saved[:12]} then, "
                          f"{current[:12]} now); restore it, or pass allow_new_data=true to continue on the new data "
                          "(nothing was changed)")


def check_dataset_record(previous: dict[str, Any] | None, config: TrainConfig, data: Dataset | SFTData) -> None:
    """Refuse to resume when ``config.json``'s dataset summary (``previous["dataset"]``) names another
    fingerprint than ``data``'s, unless ``config.allow_new_data``."""
    described = str((previous or {}).get("dataset", ""))
    if config.allow_new_data or "fingerprint " not in described:
        return
    saved = described.split("fingerprint ", 1)[1][:12]
    if not data.fingerprint.startswith(saved):
        raise _fingerprint_changed(config, saved, data.fingerprint, "the run in its config.json started")


def _checkpoint_check(config: TrainConfig, data: Dataset | SFTData, dp_size: int
                      ) -> Callable[[Path, dict[str, Any]], None]:
    def check(path: Path, record: dict[str, Any]) -> None:
        difference = checkpoint_difference(record, config, dp_size)
        if difference is not None:
            raise RunFolderError(f"checkpoint {path} was saved with another config ({difference}); continue with the "
                                 "config it was saved with, or choose a new run_dir (nothing was changed)")
        saved = record.get("data_fingerprint")
        if isinstance(saved, str) and saved != data.fingerprint and not config.allow_new_data:
            raise _fingerprint_changed(config, saved, data.fingerprint, f"checkpoint {path} was saved")

    return check


def checkpoint_trainer_state(config: TrainConfig, data: Dataset | SFTData, dp_size: int) -> dict[str, Any]:
    """What every checkpoint of this run keeps for :func:`resume_run`'s checks (beside the progress)."""
    return {"run_config": run_config_record(config, dp_size), "data_fingerprint": data.fingerprint,
            "dp_size": dp_size}


def resume_run(run_dir: Path, config: TrainConfig, training, runtime: Runtime, interval: Interval,
               previous: dict[str, Any] | None) -> tuple[Progress, dict[str, Any] | None]:
    """Load the newest intact checkpoint of ``run_dir`` into ``training`` (a ``loop.Training``), the data
    loader and the logging interval; return the progress and the ``resumes`` entry for ``config.json``
    (``Progress()`` and None when there is no checkpoint). ``previous`` is the run's ``config.json``
    record, whose dataset summary is checked when the checkpoint predates saved fingerprints."""
    found = load_newest_good(run_dir, training.model, training.optimizer,
                             _checkpoint_check(config, training.data, runtime.dp_size))
    if found.checkpoint is None:
        return Progress(), None
    state = found.state
    if "data_fingerprint" not in state:
        check_dataset_record(previous, config, training.data)
    if runtime.is_main and found.skipped:
        for line in found.skipped:
            print(f"muonlab: {line}", file=sys.stderr)
        print(f"muonlab: resuming from {found.checkpoint} (step {state['step']})", file=sys.stderr)
    loader_state = state["loader"]
    if config.allow_new_data and state.get("data_fingerprint") != training.data.fingerprint:
        loader_state = {**loader_state, "n_tokens": training.loader.state_dict()["n_tokens"]}
    training.loader.load_state_dict(loader_state)
    interval.load_state_dict(state)
    entry = {"step": state["step"], "checkpoint": found.checkpoint.name, "world_size": runtime.world_size,
             "dp_size": runtime.dp_size, "saved_dp_size": state.get("dp_size"), "skipped": found.skipped}
    return Progress(state["step"], state["tokens"], state["wall_s"]), entry
