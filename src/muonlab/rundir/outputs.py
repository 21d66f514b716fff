"""What commands that read runs and write something from them (``report``, ``analyze``) need: a folder
of their own to write, and to know which of the runs they read are unfinished — no torch needed.

``output_folder`` picks the folder (the one given, else a fresh ``<first run's parent>/<kind>``),
claims it as a muonlab folder of that kind (:func:`muonlab.rundir.ownership.claim_folder`: never a
folder holding files muonlab did not write, nor a run folder) and is used with
:func:`~muonlab.rundir.ownership.folder_lock` while writing. ``unfinished_runs`` names each
unfinished run and the step it stopped at, so a command can refuse it or mark it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .finished import unfinished_reason
from .ownership import FolderError, claim_folder

__all__ = ["UnfinishedRunError", "output_folder", "unfinished_runs"]


class UnfinishedRunError(FolderError):
    """A command that reads finished runs was given an unfinished one."""


def output_folder(out: str | os.PathLike | None, runs: Sequence[str | os.PathLike], kind: str) -> Path:
    """The folder a command writes its ``kind`` output into, claimed for it: ``out`` when given, else
    ``<parent of runs[0]>/<kind>``. Raises ``FolderError`` (nothing written) for a folder muonlab may not
    write, e.g. one holding files it did not write, or one of the runs read."""
    path = Path(out) if out is not None else Path(runs[0]).parent / kind
    read = {Path(r).resolve() for r in runs}
    if path.resolve() in read:
        raise FolderError(f"--out {path} is one of the runs being read; give the {kind} a folder of its own")
    return claim_folder(path, kind, "--out")


def unfinished_runs(runs: Sequence[str | os.PathLike], allow: bool, flag: str) -> list[str]:
    """One sentence per unfinished run among ``runs`` (naming the step it stopped at).

    Raises ``UnfinishedRunError`` when there is any and ``allow`` is False, naming ``flag`` (the
    option that accepts them); with ``allow`` returns the sentences for the command to show."""
    reasons = [reason for run in runs if (reason := unfinished_reason(run)) is not None]
    if reasons and not allow:
        raise UnfinishedRunError(f"{'; '.join(reasons)}; finish it (muonlab train with its config resumes it), or "
                                 f"pass {flag} to use it as it is (nothing was written)")
    return reasons
