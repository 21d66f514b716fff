"""The checkpoint store of a run folder: naming, atomic publishing, ``latest``, pruning, ``trainer.json``.

Layout (``N`` is the optimizer step, zero-padded so names sort by step)::

    <run_dir>/checkpoints/
        step_0000N/              # one checkpoint, in one of two formats:
            model.safetensors    #   plain (muonlab.rundir.checkpoint.plain): the weights,
            optimizer.pt         #   the optimizer state_dict,
            state/               #   or sharded (muonlab.rundir.checkpoint.sharded): DCP files, .metadata last
            trainer.json         # both: format version, step, the caller's trainer state, model config, RNG states
        latest                   # text file naming the newest checkpoint directory
        .tmp-step_0000N-<pid>/   # a save in progress (or left by a process that died mid-save)

A checkpoint is written into ``.tmp-step_0000N-<pid>/`` (the pid of rank 0 when several processes
write) and renamed into place with ``os.replace``, so a ``step_*`` directory either is complete or
does not exist: a crash, a kill or a full disk mid-write leaves the previous checkpoint untouched.
The ``latest`` pointer is replaced the same way, and :func:`latest_checkpoint` falls back to
scanning the folder if the pointer is stale. Temp directories of dead processes are deleted by the
next save.

``trainer.json`` is plain JSON: ``{"format": 1, "step": N, **trainer_state, [format fields],
"model_config": {...}, "rng": {...}}``. The keys in ``RESERVED_KEYS`` are filled in here (or by a
format), never by the caller, so one trainer state fits either format.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ...parallel import unwrap
from ..layout import (
    CHECKPOINTS_DIR,
    LATEST_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    PLAIN_FILES,
    SHARDED_FILES,
    SHARDED_METADATA,
    SHARDED_STATE_DIR,
    TRAINER_FILE,
    CheckpointError,
    CorruptCheckpointError,
    _complete_checkpoints,
    checkpoint_dir_name,
    is_complete,
    latest_checkpoint,
)
from .manifest import manifest_problem, write_manifest
from .rng import capture_rng_state, restore_rng_state

__all__ = ["CHECKPOINTS_DIR", "FORMAT_VERSION", "LATEST_FILE", "MODEL_FILE", "OPTIMIZER_FILE", "PLAIN_FILES",
           "RESERVED_KEYS", "SHARDED_FILES", "SHARDED_METADATA", "SHARDED_STATE_DIR", "TRAINER_FILE",
           "CheckpointError", "CheckpointWriteError", "CorruptCheckpointError", "checkpoint_problem",
           "checkpoint_record", "checkpoint_step", "finish_load", "first_nonfinite", "from_rank0", "is_complete",
           "latest_checkpoint", "model_config_dict", "multi_process", "read_trainer_record", "write_checkpoint"]

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: before manifests (loaded unverified)
RESERVED_KEYS = ("format", "rng", "model_config", "optimizer", "world_size")
_FORMAT_FIELDS = ("format", "optimizer", "world_size")  # kept in trainer.json, not returned by a load

Writer = Callable[[Path], None]


def multi_process() -> bool:
    """Whether this process is one of several in a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a collective under :func:`multi_process`; ``value`` otherwise)."""
    if not multi_process():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def model_config_dict(model: torch.nn.Module) -> dict[str, Any] | None:
    """The model's ``config`` attribute as a plain dict (dataclass or dict), or None if it has none."""
    config = getattr(unwrap(model), "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    return None


# ---------------------------------------------------------------------------------------------
# the folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temp_dirs(ckpt_root: Path) -> None:
    """Delete ``.tmp-*`` entries left by processes that died mid-save (they can be large)."""
    for p in ckpt_root.glob(".tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":  # directories cannot be opened for fsync on Windows
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _publish(tmp: Path, final: Path) -> None:
    """Rename a complete temp checkpoint directory into place (atomically, also over an old copy)."""
    if final.exists():  # re-saving a step: move the old copy aside, then swap in the new one
        old = final.parent / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_latest(ckpt_root: Path, name: str) -> None:
    tmp = ckpt_root / f".tmp-{LATEST_FILE}-{os.getpid()}"
    tmp.write_text(name + "\n")
    _fsync_file(tmp)
    os.replace(tmp, ckpt_root / LATEST_FILE)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (``errno`` is the cause's, ``EIO`` for a non-OS error); its text is
    one sentence: what could not be written, why, and which checkpoint was kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def _failure(e: BaseException, target: Path, previous: list[Path]) -> tuple[int, str]:
    """``(errno, sentence)`` for a failed save: what could not be written, why, and what was kept."""
    kept = f"the previous checkpoint {previous[-1]} is kept" if previous else "there is no previous checkpoint"
    if isinstance(e, OSError):
        code, reason = e.errno or errno.EIO, e.strerror or str(e)
    else:  # torch and safetensors report a full disk as their own error types
        code, reason = errno.EIO, " ".join(str(e).split())[:300] or type(e).__name__
    return code, f"could not write checkpoint {target} ({reason}); {kept}"


def _first_error(error: tuple[int, str] | None) -> tuple[int, str] | None:
    """The first rank's error, on every rank (a collective under :func:`multi_process`): one rank's failed
    write must stop every rank from publishing."""
    if not multi_process():
        return error
    errors: list = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)


# ---------------------------------------------------------------------------------------------
# writing and reading


def _trainer_json(step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
                  format_fields: dict[str, Any]) -> str:
    clashes = [k for k in RESERVED_KEYS if k in trainer_state]
    if clashes or trainer_state.get("step", step) != step:
        raise ValueError(
            f"trainer_state may not set {', '.join(clashes) or 'step'}: {', '.join(RESERVED_KEYS)} are filled in "
            f"by save_checkpoint and 'step' must equal the step argument ({step})"
        )
    record = {
        "format": FORMAT_VERSION,
        "step": step,
        **trainer_state,
        **format_fields,
        "model_config": model_config_dict(model),
        "rng": capture_rng_state(),  # last: long base64 strings
    }
    try:
        return json.dumps(record, indent=1)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "trainer_state and model.config must hold only JSON values "
            f"(numbers, strings, bools, None, lists, dicts): {e}"
        ) from None


def _prepare(ckpt_root: Path, tmp: Path) -> list[Path]:
    """Rank 0, before writing: the folder exists, dead saves' temp dirs are gone, ``tmp`` is created;
    returns the complete checkpoints already there."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(ckpt_root)
    previous = _complete_checkpoints(ckpt_root)
    tmp.mkdir()
    return previous


def _write_files(tmp: Path, writers: Sequence[tuple[str, Writer]]) -> tuple[Path, BaseException | None]:
    """Run every writer into ``tmp``; returns the path being written and the exception it raised (or None)."""
    target = tmp
    try:
        for file_name, write in writers:
            target = tmp / file_name
            write(target)
    except Exception as e:  # any type: torch and safetensors raise their own on a full disk
        return target, e
    return target, None


def _seal_and_publish(tmp: Path, final: Path, trainer_json: str) -> None:
    """Rank 0: add ``trainer.json`` and the manifest (last), rename into place and point ``latest`` at it."""
    (tmp / TRAINER_FILE).write_text(trainer_json)
    write_manifest(tmp)
    _publish(tmp, final)
    _write_latest(final.parent, final.name)


def write_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    writers: Sequence[tuple[str, Writer]],
    keep: int,
    format_fields: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically and return its directory; a format's save calls this.

    ``writers``: ``(name, write)`` pairs; ``write(path)`` creates ``name`` inside the temp
    directory (a file, or a directory such as DCP's ``state/``). Under :func:`multi_process`
    this is a collective: every rank runs every writer, rank 0 adds ``trainer.json`` and the
    manifest, publishes and prunes once every rank's writes succeeded, and every rank raises the
    first rank's error. ``format_fields`` go into ``trainer.json`` beside the caller's
    ``trainer_state`` (see ``RESERVED_KEYS``). Only the newest ``keep`` checkpoints are kept; the
    one just written is never deleted; re-saving a step replaces it.

    On any failure while writing (``ENOSPC``, or torch's and safetensors' own errors for a full
    disk) the partial checkpoint is removed, the previous checkpoint is left as it was, and an
    ``OSError`` (``EIO`` when the cause was not an ``OSError``) names the failed path. An
    interrupt (``KeyboardInterrupt``) removes the partial checkpoint too and is re-raised.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the number of checkpoints to keep), got {keep}")
    trainer_json = _trainer_json(step, model, trainer_state, format_fields or {})
    rank0 = not multi_process() or dist.get_rank() == 0
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    name = checkpoint_dir_name(step)
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}-{os.getpid()}"
    previous: list[Path] = []
    error, cause = None, None
    try:
        if rank0:
            try:
                previous = _prepare(ckpt_root, tmp)
            except OSError as e:
                error, cause = _failure(e, tmp, previous), e
        tmp, error = from_rank0((tmp, error))
        if error is None:
            target, cause = _write_files(tmp, writers)
            error = _first_error(None if cause is None else _failure(cause, target, previous))
        if error is None and rank0:
            try:
                _seal_and_publish(tmp, final, trainer_json)
            except Exception as e:
                error, cause = _failure(e, final, previous), e
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank0 and error is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    if rank0 and error is None:
        complete = _complete_checkpoints(ckpt_root)
        for old in [p for p in complete if p != final][: max(0, len(complete) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    error = from_rank0(error)
    if error is not None:
        raise CheckpointWriteError(*error) from cause
    return final


def _config_difference(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key not in saved:
            diffs.append(f"{key} (absent in the checkpoint, {current[key]!r} now)")
        elif key not in current:
            diffs.append(f"{key} ({saved[key]!r} in the checkpoint, absent now)")
        elif saved[key] != current[key]:
            diffs.append(f"{key} ({saved[key]!r} in the checkpoint, {current[key]!r} now)")
    return diffs


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads((path / TRAINER_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"checkpoint file {path / TRAINER_FILE} is corrupt: {e}") from None
    except OSError as e:
        raise CorruptCheckpointError(f"checkpoint file {path / TRAINER_FILE} cannot be read: {e.strerror}") from None
    valid = (isinstance(record, dict) and record.get("format") in READABLE_FORMATS
             and isinstance(record.get("step"), int))
    if not valid:
        raise CorruptCheckpointError(f"checkpoint file {path / TRAINER_FILE} is not a muonlab checkpoint of "
                                     f"format {' or '.join(map(str, READABLE_FORMATS))}")
    return record


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """None when the checkpoint at ``path`` is intact, else a phrase saying what is damaged: a file that
    does not match its manifest, a missing manifest (format 2 writes one last), an unreadable ``trainer.json``.
    Checkpoints of format 1 predate manifests and are taken as they are."""
    path = Path(path)
    if (path / MANIFEST_FILE).exists():
        problem = manifest_problem(path)
        if problem is not None:
            return problem
    try:
        record = _read_record(path)
    except CorruptCheckpointError as err:
        return str(err)
    if record["format"] >= 2 and not (path / MANIFEST_FILE).exists():
        return f"it has no {MANIFEST_FILE} (a checkpoint of format {record['format']} is sealed with one)"
    return None


def checkpoint_record(path: str | os.PathLike) -> dict[str, Any]:
    """The ``trainer.json`` record of the checkpoint at ``path`` (``CorruptCheckpointError`` if unreadable)."""
    return _read_record(Path(path))


def first_nonfinite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer of ``model`` holding NaN or inf (None if all are finite).

    Checks this rank's part of each tensor; under :func:`multi_process` a collective, so every rank
    agrees (a rank whose own part is finite answers ``"a tensor on another rank"``)."""
    floats = [(name, t._local_tensor if hasattr(t, "_local_tensor") else t)
              for name, t in unwrap(model).state_dict().items() if t.is_floating_point()]
    bad = None
    # The norm of all tensors together, in one fused pass (~1.5 ms on the demo model, where a sum per
    # tensor costs ~10 ms on two busy cores and isfinite ~20), is NaN or inf when any tensor holds one;
    # then each tensor is checked element-wise, as finite values can overflow a norm too.
    if floats and not bool(torch.isfinite(torch.nn.utils.get_total_norm([t for _, t in floats], foreach=True))):
        bad = next((name for name, t in floats if not bool(torch.isfinite(t).all())), None)
    if multi_process():
        flag = torch.tensor([0 if bad is None else 1], device=_device_of(model))
        dist.all_reduce(flag)
        if flag.item() and bad is None:
            bad = "a tensor on another rank"
    return bad


def _device_of(model: torch.nn.Module) -> torch.device:
    """Where a collective about ``model`` runs: CUDA for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def checkpoint_step(path: str | os.PathLike) -> int:
    """The number of optimizer steps the checkpoint at ``path`` was taken after (from its ``trainer.json``)."""
    return _read_record(Path(path))["step"]


def read_trainer_record(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """``trainer.json`` of the checkpoint at ``path``, checked against ``model``.

    Raises ``CheckpointError`` if the file is corrupt, of another format version, or saved for a
    model whose config differs from ``model.config`` (naming every differing field).
    """
    record = _read_record(path)
    saved_config, current_config = record.get("model_config"), model_config_dict(model)
    if saved_config is not None and current_config is not None:
        # Compare configs the way they come back from trainer.json (tuples become lists, etc.).
        diffs = _config_difference(saved_config, json.loads(json.dumps(current_config)))
        if diffs:
            raise CheckpointError(f"checkpoint {path} was saved for a different model: {'; '.join(diffs)}")
    return record


def finish_load(record: dict[str, Any], restore_rng: bool) -> dict[str, Any]:
    """Restore the RNGs (if asked) and return the trainer state: the record without the format's fields."""
    if restore_rng:
        restore_rng_state(record["rng"])
    return {k: v for k, v in record.items() if k not in _FORMAT_FIELDS}
