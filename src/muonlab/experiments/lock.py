"""One study invocation per output folder at a time.

Two invocations of a study on the same folder would train the same runs side by side, each writing
the same run folders' metrics and checkpoints. ``study_lock`` holds an exclusive advisory lock
(``fcntl.flock``) on ``<out>/.study.lock`` for the whole invocation; a second one stops at once,
naming the process that holds it. The lock goes with its process: a killed study leaves nothing
to clean up. (Off Unix, where ``fcntl`` does not exist, no lock is taken.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["StudyBusyError", "study_lock"]

LOCK_NAME = ".study.lock"


class StudyBusyError(RuntimeError):
    """Another process is running a study in the same output folder."""


@contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """Hold the output folder's study lock for the block; ``StudyBusyError`` if another process holds it."""
    try:
        import fcntl
    except ImportError:  # not Unix
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StudyBusyError(f"{out} is in use by a study running in process {holder}; wait for it to "
                                 "finish or stop it, or give this one another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
