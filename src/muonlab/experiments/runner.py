"""Run a list of training configs: in this process, or as parallel ``muonlab train`` processes.

On a CPU, small models use two cores poorly (a 4-layer d=192 model trained 1.6× faster on two
threads than on one, not 2×), so several single-threaded runs side by side finish a study sooner
than the same runs one after another. Every run is an ordinary run folder that resumes from its
checkpoint: ``run_configs`` skips finished runs and continues interrupted ones, so re-running a
study after a kill continues where it stopped.

The training processes die with this one (``muonlab.experiments.child``; off Linux they are
terminated when this process exits normally or on Ctrl-C), so a killed study never leaves a
process writing into a run folder that the next invocation resumes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from ..rundir.checkpoint import checkpoint_step, latest_checkpoint
from ..train.config import TrainConfig
from ..train.loop import train
from ..train.run_folder import check_run_folder

__all__ = ["RunFailedError", "RunObserver", "child_command", "command_for", "is_finished", "run_configs", "steps_done",
           "threads_per_run"]


class RunFailedError(RuntimeError):
    """A training subprocess exited with an error; its log is named in the message."""


class RunObserver(Protocol):
    """Told when a run starts and ends (``muonlab.experiments.progress.StudyProgress`` is one)."""

    def on_start(self, run_dir: str) -> None: ...

    def on_finish(self, run_dir: str, ok: bool = True) -> None: ...


def command_for(config: TrainConfig) -> list[str]:
    """``muonlab train --key value ...`` for the fields that differ from the defaults."""
    defaults = TrainConfig().to_dict()
    flags = []
    for key, value in config.to_dict().items():
        if value != defaults[key] and key not in ("progress", "threads"):
            flags += [f"--{key}", str(value)]
    return ["muonlab", "train", *flags]


def steps_done(config: TrainConfig) -> int:
    """The step of the run folder's latest complete checkpoint (0 without one): where training resumes."""
    checkpoint = latest_checkpoint(config.run_dir)
    return 0 if checkpoint is None else checkpoint_step(checkpoint)


def is_finished(config: TrainConfig) -> bool:
    """Whether ``config.run_dir`` holds this run trained to its last step.

    Raises ``RunFolderError`` when the folder holds a run of another config (nothing is changed).
    """
    check_run_folder(config)
    return steps_done(config) >= config.total_steps()


def child_command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` started through ``muonlab.experiments.child``: it dies with this process."""
    return [sys.executable, "-m", "muonlab.experiments.child", str(os.getpid()), module, *args]


def threads_per_run(config: TrainConfig, workers: int) -> int:
    """``config.threads`` when set, else the cores shared out: cores // workers (at least 1)."""
    return config.threads or max(1, (os.cpu_count() or workers) // workers)


def _start(config: TrainConfig, threads: int) -> tuple[subprocess.Popen, Path]:
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "train.log"
    argv = command_for(config)[2:] + ["--threads", str(threads), "--progress", "false"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(child_command("muonlab.cli", "train", *argv), stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def run_configs(configs: list[TrainConfig], workers: int = 1, observer: RunObserver | None = None) -> None:
    """Train every config that is not finished yet; with ``workers > 1``, that many at a time as
    ``muonlab train`` processes, each on ``threads_per_run`` threads.

    ``observer`` (optional) is told when each run starts and ends. A failed run stops the others
    and raises ``RunFailedError`` naming its log; finished checkpoints are kept.
    """
    pending = [c for c in configs if not is_finished(c)]
    if workers <= 1:
        for config in pending:
            if observer is not None:
                observer.on_start(config.run_dir)
            try:
                train(config, command=shlex.join(command_for(config)))
            except BaseException:
                if observer is not None:
                    observer.on_finish(config.run_dir, ok=False)
                raise
            if observer is not None:
                observer.on_finish(config.run_dir)
        return
    _run_in_processes(pending, workers, observer)


def _run_in_processes(pending: list[TrainConfig], workers: int, observer: RunObserver | None) -> None:
    running: list[tuple[TrainConfig, subprocess.Popen, Path]] = []
    try:
        while pending or running:
            while pending and len(running) < workers:
                config = pending.pop(0)
                proc, log = _start(config, threads_per_run(config, workers))
                running.append((config, proc, log))
                if observer is not None:
                    observer.on_start(config.run_dir)
            time.sleep(0.5)
            for entry in list(running):
                config, proc, log = entry
                code = proc.poll()
                if code is None:
                    continue
                running.remove(entry)
                if observer is not None:
                    observer.on_finish(config.run_dir, ok=code == 0)
                if code != 0:
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
                    raise RunFailedError(f"run {config.run_dir} failed (exit code {code}): {tail[0]} — "
                                         f"full log: {log}")
    finally:
        for _, proc, _ in running:
            proc.terminate()
        for _, proc, _ in running:
            proc.wait()
