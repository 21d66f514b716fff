"""What the command line prints under ``torchrun``: one copy of each message, not one per process.

Every process of a launch runs the same command, so an error in the config or the data is raised on
each and would print N times. :func:`say_once` prints a message on the first process to reach it
and skips it on the others when their text is the same (messages that differ by rank all print):
each process claims the message by creating a file named by the launch and the message's hash
(``O_EXCL``, so exactly one process wins) in a per-user temporary folder. A launch is one attempt of
torchrun's (run id, launcher, restart count): when torchrun restarts its workers and they fail again
with the same text, the new attempt prints it too. Processes on other nodes
do not share that folder, so a multi-node launch prints once per node. The command line routes
Python warnings through it too (``muonlab.cli``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

__all__ = ["in_launch", "say_once"]


def in_launch() -> bool:
    """Whether this process is one of several started together (torchrun sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _claim(message: str) -> bool:
    """Whether this process is the first of its launch to print ``message`` (True when that cannot be told)."""
    launch = (f"{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}-{os.getppid()}"  # the launcher is the parent
              f"-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")
    digest = hashlib.sha256(message.encode()).hexdigest()[:20]
    folder = Path(tempfile.gettempdir()) / f"muonlab-messages-{getattr(os, 'getuid', lambda: 0)()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        os.close(os.open(folder / f"{launch}-{digest}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True  # no shared folder to agree in: printing twice beats printing never
    return True


def say_once(message: str, file: TextIO | None = None) -> None:
    """Print ``message`` (to stderr by default); under torchrun, on one process of those that say the same."""
    if not in_launch() or _claim(message):
        print(message, file=file if file is not None else sys.stderr)

