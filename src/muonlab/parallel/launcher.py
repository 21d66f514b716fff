"""A worker of a multi-process run dies with its launcher.

``torchrun`` starts one worker process per rank. If the launcher is killed with SIGKILL it cannot
stop its workers, which would go on training and writing checkpoints into a run folder that nobody
watches — and that the next ``muonlab train`` resumes. :func:`die_with_launcher` asks the kernel to
send this process SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), as the study runner's
children already do (:mod:`muonlab.experiments.child`). Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["LauncherGoneError", "die_with_launcher", "launched_by_torchrun"]

PR_SET_PDEATHSIG = 1


class LauncherGoneError(RuntimeError):
    """The launcher of this worker died before the worker could tie itself to it."""


def launched_by_torchrun() -> bool:
    """Whether this process is a worker that ``torchrun`` (torch.distributed.run) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def die_with_launcher() -> None:
    """Under torchrun on Linux: be sent SIGTERM when the launcher dies; ``LauncherGoneError`` if it already has."""
    if not (launched_by_torchrun() and sys.platform.startswith("linux")):
        return
    launcher = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:  # the launcher died between the two lines above
        raise LauncherGoneError(f"the torchrun launcher (process {launcher}) is gone; this worker stops without "
                                "training")
