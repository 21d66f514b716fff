"""Which folders muonlab may write into, and one writer per folder at a time — no torch needed.

A folder muonlab writes (a run folder, a report folder, an export) carries muonlab's own marker,
``.muonlab``: a small JSON file saying what the folder is (``{"muonlab": "run", "format": 1}``).
:func:`claim_folder` creates a folder with its marker, marks an empty folder, and refuses any other
non-empty folder, so a file that muonlab did not write is never replaced. A run folder written by a
muonlab from before the marker (its ``config.json`` is muonlab's run record) is recognised and
marked. The marker is written under a temporary name and renamed into place; that name counts as
muonlab's too, because under ``torchrun`` the other ranks check the folder while rank 0 claims it
and may see the folder at that instant.

:func:`folder_lock` holds an exclusive advisory lock (``fcntl.flock``) on ``<folder>/.muonlab.lock``
while a process writes the folder; the kernel releases it when the process ends, killed or not, so
nothing is left to clean up. A second writer stops at once, naming the holder. (Off Unix, where
``fcntl`` does not exist, no lock is taken.)
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_FILE", "MARKER_FILE", "STUDY_LOG_FILE", "FolderBusyError", "FolderError", "check_folder",
           "claim_folder", "describe_os_error", "folder_kind", "folder_lock", "is_run_folder"]

MARKER_FILE = ".muonlab"
LOCK_FILE = ".muonlab.lock"
MARKER_TEMP_PREFIX = f".{MARKER_FILE}.tmp-"
"""How the marker's temporary file is named (then the writer's pid) until it is renamed to ``MARKER_FILE``."""
MARKER_FORMAT = 1
STUDY_LOG_FILE = "train.log"
"""The log a study's runner opens in a run folder before the run in it starts (and claims the folder)."""
LEGACY_RUN_KEYS = ("model_config", "tokens_per_step", "total_steps", "dataset", "torch", "world_size", "run_dir")
"""Keys every run record (``config.json``) written by muonlab has held since run folders existed."""


class FolderError(ValueError):
    """A folder muonlab may not write into (not muonlab's, of another kind, unwritable); the message says why."""


class FolderBusyError(FolderError):
    """Another process holds the folder's writer lock."""


def describe_os_error(err: OSError, what: str = "") -> str:
    """One sentence for an ``OSError`` met while writing: the path, the reason in words, and what would work.

    ``what`` names the thing being written (e.g. ``"run folder runs/a"``); by default the error's own path.
    """
    target = what or (f"{err.filename}" if err.filename else "the file")
    hints = {
        errno.ENOSPC: "free some space or choose a folder on another disk",
        errno.EDQUOT: "free some space or raise the quota",
        errno.EACCES: "choose a folder you may write, or change its permissions",
        errno.EPERM: "choose a folder you may write, or change its permissions",
        errno.EROFS: "the file system is read-only; choose a folder on a writable one",
        errno.ENOTDIR: "a file stands where a folder is needed; choose another path",
        errno.EEXIST: "a file stands where a folder is needed; choose another path",
    }
    reason = err.strerror or str(err)
    hint = hints.get(err.errno or 0, "check the path and the disk")
    return f"cannot write {target}: {reason} ({hint})"


def folder_kind(folder: str | os.PathLike) -> str | None:
    """What muonlab's marker says ``folder`` is (``"run"``, ``"report"``, ...), or None without a valid marker."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    kind = marker.get("muonlab") if isinstance(marker, dict) else None
    return kind if isinstance(kind, str) else None


def _is_legacy_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run written by muonlab before the marker: its config.json is a run record."""
    try:
        record = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(key in record for key in LEGACY_RUN_KEYS)


def is_run_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a muonlab run folder: its marker says so, or (no marker) it is a run from before
    the marker."""
    kind = folder_kind(folder)
    return kind == "run" or (kind is None and _is_legacy_run(Path(folder)))


def _write_marker(folder: Path, kind: str) -> None:
    tmp = folder / f"{MARKER_TEMP_PREFIX}{os.getpid()}"
    tmp.write_text(json.dumps({"muonlab": kind, "format": MARKER_FORMAT}) + "\n")
    os.replace(tmp, folder / MARKER_FILE)


def check_folder(folder: str | os.PathLike, kind: str, option: str = "the folder") -> Path:
    """Whether muonlab may write ``folder`` as a folder of ``kind``, without writing anything; returns it.

    Accepted: a folder that does not exist yet, an empty one, one whose marker says ``kind``, and
    (for ``kind="run"``) a run folder from before the marker. Anything else — an empty name, a file,
    a folder with files muonlab did not write, a folder of another kind — raises ``FolderError``
    naming ``option`` (the setting that chose the folder, e.g. ``"run_dir"``).
    """
    if not str(folder).strip():
        raise FolderError(f"{option} is empty; name a folder (a new one, or one muonlab created)")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise FolderError(f"{option} {path} is a file, not a folder; choose a new folder or one muonlab created")
    if not path.is_dir():
        return path
    existing = folder_kind(path)
    if existing is None:
        try:
            # A marker still under its temporary name: another process (rank 0 of this launch) is claiming
            # the folder right now, so it is muonlab's, not a stranger's file.
            entries = [p.name for p in path.iterdir()
                       if p.name not in (LOCK_FILE, STUDY_LOG_FILE) and not p.name.startswith(MARKER_TEMP_PREFIX)]
        except OSError as err:
            raise FolderError(f"{option} {path} cannot be read: {err.strerror} (choose a folder you may read and "
                              "write)") from None
        if entries and not (kind == "run" and _is_legacy_run(path)):
            shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise FolderError(f"{option} {path} holds files muonlab did not write ({shown}) and no muonlab marker "
                              f"({MARKER_FILE}); choose a new or empty folder (nothing was changed)")
    elif existing != kind:
        raise FolderError(f"{option} {path} is a muonlab {existing} folder, not a {kind} folder; choose a new or "
                          "empty folder (nothing was changed)")
    return path


def claim_folder(folder: str | os.PathLike, kind: str, option: str = "the folder") -> Path:
    """Make ``folder`` a muonlab folder of ``kind`` and return it: :func:`check_folder`, then create the
    folder if needed and write the marker if it has none. Raises ``FolderError`` (nothing written) when
    the folder is not muonlab's to write, or cannot be written (one sentence naming the reason)."""
    path = check_folder(folder, kind, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if folder_kind(path) is None:
            _write_marker(path, kind)
    except OSError as err:
        raise FolderError(describe_os_error(err, f"{option} {path}")) from None
    return path


@contextmanager
def folder_lock(folder: str | os.PathLike, holder: str) -> Iterator[None]:
    """Hold ``folder``'s writer lock for the block; ``FolderBusyError`` at once if another process holds it.

    ``holder`` (e.g. ``"muonlab train"``) is written into the lock file, so the error a second writer
    gets names the process and what it runs. The kernel drops the lock when this process dies.
    """
    try:
        import fcntl
    except ImportError:  # not Unix
        yield
        return
    path = Path(folder) / LOCK_FILE
    try:
        handle = open(path, "a+")
    except OSError as err:
        raise FolderError(describe_os_error(err, f"the lock file of {folder}")) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            who = handle.read().strip() or "another process"
            raise FolderBusyError(f"{folder} is being written by {who}; wait for it to finish or stop it, or choose "
                                  "another folder (nothing was changed)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} ({holder})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
