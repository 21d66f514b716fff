"""Run a list of training configs: in this process, or as parallel ``muonlab train`` processes.

On a CPU, small models use two cores poorly (a 4-layer d=192 model trained 1.6× faster on two
threads than on one, not 2×), so several single-threaded runs side by side finish a study sooner
than the same runs one after another. Every run is an ordinary run folder and resumes from its
checkpoint, so re-running a study skips finished runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ..train.config import TrainConfig
from ..train.loop import train

__all__ = ["RunFailedError", "command_for", "run_configs"]


class RunFailedError(RuntimeError):
    """A training subprocess exited with an error; its log is named in the message."""


def command_for(config: TrainConfig) -> list[str]:
    """``muonlab train --key value ...`` for the fields that differ from the defaults."""
    defaults = TrainConfig().to_dict()
    flags = []
    for key, value in config.to_dict().items():
        if value != defaults[key] and key not in ("progress", "threads"):
            flags += [f"--{key}", str(value)]
    return ["muonlab", "train", *flags]


def run_configs(configs: list[TrainConfig], workers: int = 1) -> None:
    """Train every config; with ``workers > 1``, that many at a time, each on cores/workers threads."""
    if workers <= 1:
        for i, config in enumerate(configs, 1):
            print(f"[{i}/{len(configs)}] {config.run_dir}", flush=True)
            train(config, command=shlex.join(command_for(config)))
        return
    threads = max(1, (os.cpu_count() or workers) // workers)
    pending = list(enumerate(configs, 1))
    running: list[tuple[int, TrainConfig, subprocess.Popen, Path]] = []
    while pending or running:
        while pending and len(running) < workers:
            i, config = pending.pop(0)
            run_dir = Path(config.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = run_dir / "train.log"
            argv = command_for(config)[2:] + ["--threads", str(threads), "--progress", "false"]
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "muonlab.cli", "train", *argv],
                                        stdout=out, stderr=subprocess.STDOUT)
            print(
                f"[{i}/{len(configs)}] started {run_dir} ({threads} thread{'s' * (threads > 1)}, log {log})", flush=True
            )
            running.append((i, config, proc, log))
        time.sleep(0.5)
        for entry in list(running):
            i, config, proc, log = entry
            code = proc.poll()
            if code is None:
                continue
            running.remove(entry)
            if code != 0:
                for _, _, other, _ in running:
                    other.terminate()
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
                raise RunFailedError(f"run {config.run_dir} failed (exit code {code}): {tail[0]} — full log: {log}")
            print(f"[{i}/{len(configs)}] finished {config.run_dir}", flush=True)
