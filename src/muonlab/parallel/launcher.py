"""A worker of a multi-process run dies with its launcher.

``torchrun`` starts one worker process per rank. If the launcher is killed with SIGKILL it cannot
stop its workers, which would go on training and writing checkpoints into a run folder that nobody
watches — and that the next ``muonlab train`` resumes. :func:`die_with_launcher` asks the kernel to
send this process SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), as the study runner's
children already do (:mod:`muonlab.experiments.child`). Elsewhere it does nothing.

A launcher killed while its workers were still starting leaves them adopted before they can tie
themselves to it: their parent is then init (process 1), which is not a torch launcher, and they
stop. (A launcher that is itself process 1, as in a container whose entry point is ``torchrun``, is
recognized by its command line. An adopter other than process 1 — a subreaper — is not detected; such a
worker of a single-node run blocks in the rendezvous that its dead launcher hosted, and never trains.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

__all__ = ["LauncherGoneError", "command_line", "die_with_launcher", "launched_by_torchrun"]

PR_SET_PDEATHSIG = 1
TORCH_LAUNCHERS = ("torchrun", "torch.distributed.run", "torch.distributed.launch")  # in a launcher's command line


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
    adopter = command_line(1) if launcher == 1 else ""
    if launcher == 1 and not any(name in adopter for name in TORCH_LAUNCHERS):
        raise LauncherGoneError(f"this torchrun worker's parent is init (process 1: {adopter or 'unreadable'!r}), not "
                                "a torch launcher: its launcher died before the worker started; it stops without "
                                "training")


def command_line(pid: int) -> str:
    """Process ``pid``'s command line, its arguments joined by spaces ('' where it cannot be read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
