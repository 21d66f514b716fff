"""Atomic, resumable checkpoints inside a run folder.

Layout (``N`` is the optimizer step, zero-padded so names sort by step)::

    <run_dir>/checkpoints/
        step_0000N/
            model.safetensors   # weights; tied (shared) tensors are stored once
            optimizer.pt        # optimizer.state_dict(), read back with torch.load(weights_only=True)
            trainer.json        # step, the caller's trainer state, RNG states, model config
        latest                  # text file naming the newest checkpoint directory

A checkpoint is written into ``.tmp-step_0000N-<pid>/`` and renamed into place with
``os.replace``, so a checkpoint directory either is complete or does not exist: a crash, a kill or
a full disk mid-write leaves the previous checkpoint untouched. The ``latest`` pointer is replaced
the same way, and ``latest_checkpoint`` falls back to scanning the folder if the pointer is stale.

Nothing is unpickled on load: weights come from safetensors, the optimizer state from
``torch.load(..., weights_only=True)`` (so it may hold only tensors, numbers, strings, bools, None,
lists, tuples and dicts) and the rest from JSON.

A multi-process run writes the same folders in the sharded layout of
:mod:`muonlab.train.sharded_checkpoint` (``trainer.json`` + ``state/``, torch.distributed.checkpoint);
``latest_checkpoint`` finds either layout and ``load_checkpoint`` loads either, so a run saved by N
processes resumes on one.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer.json"
CHECKPOINT_FILES = (MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE)
SHARDED_STATE_METADATA = "state/.metadata"  # a muonlab.train.sharded_checkpoint checkpoint
LATEST_FILE = "latest"
FORMAT_VERSION = 1
_RESERVED_KEYS = ("format", "rng", "model_config")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt, or saved for a different model."""


def checkpoint_dir_name(step: int) -> str:
    """The directory name of the checkpoint taken after ``step`` optimizer steps."""
    return f"step_{step:08d}"


# ---------------------------------------------------------------------------------------------
# RNG state


def _to_b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def _from_b64(s: str, dtype: type) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()


def capture_rng_state() -> dict[str, Any]:
    """Snapshot every global RNG that training touches, as a JSON-serializable dict.

    Keys: ``python`` (``random.getstate()`` as a list, its 625 Mersenne-Twister words as base64
    uint32), ``numpy`` (the legacy global ``np.random`` state, likewise), ``torch`` (the CPU
    generator's bytes, base64) and, when CUDA is available, ``cuda`` (one base64 state per device).
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, _to_b64(np.asarray(py_internal, dtype=np.uint32)), py_gauss],
        "numpy": [np_kind, _to_b64(np_keys.astype(np.uint32)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": _to_b64(torch.get_rng_state().numpy()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_to_b64(s.numpy()) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by ``capture_rng_state``.

    CUDA states are restored for the devices present on both machines; a checkpoint made on a GPU
    machine can be resumed on CPU, where the CUDA part is simply not used.
    """
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(int(w) for w in _from_b64(py_internal, np.uint32)), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, _from_b64(np_keys, np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(torch.from_numpy(_from_b64(state["torch"], np.uint8)))
    if "cuda" in state and torch.cuda.is_available():
        for device, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.from_numpy(_from_b64(s, np.uint8)), device)


# ---------------------------------------------------------------------------------------------
# helpers


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside torch.compile (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_config_dict(model: torch.nn.Module) -> dict[str, Any] | None:
    """The model's ``config`` attribute as a plain dict (dataclass or dict), or None if it has none."""
    config = getattr(_unwrap(model), "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    return None


def _json_roundtrip(value: Any) -> Any:
    # Compare configs the way they come back from trainer.json (tuples become lists, etc.).
    return json.loads(json.dumps(value))


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


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def _is_complete(path: Path) -> bool:
    """A complete single-process checkpoint, or a complete sharded one (``state/.metadata`` is written last)."""
    return all((path / f).is_file() for f in CHECKPOINT_FILES) or (
        (path / TRAINER_FILE).is_file() and (path / SHARDED_STATE_METADATA).is_file())


def _complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest step first. Temp dirs never match ``step_*``."""
    found = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            step = _step_of(p)
            if step is not None and p.is_dir() and _is_complete(p):
                found.append((step, p))
    return [p for _, p in sorted(found)]


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


# ---------------------------------------------------------------------------------------------
# public API


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Atomically write a checkpoint for ``step`` and return its directory.

    ``trainer_state`` is whatever the loop needs to resume (e.g. ``tokens`` and the data loader's
    state); it must be JSON-serializable and may not use the keys ``format``, ``rng`` or
    ``model_config``, which this function fills in (RNG states from ``capture_rng_state()``, the
    model config from ``model.config``). Only the newest ``keep`` checkpoints are kept; the one just
    written is never deleted. Saving the same step twice replaces the older copy.

    On a write error (e.g. ``ENOSPC``, disk full) the partial checkpoint is removed, the previous
    checkpoint is left as it was, and an ``OSError`` with the same errno names the failed path.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the number of checkpoints to keep), got {keep}")
    clashes = [k for k in _RESERVED_KEYS if k in trainer_state]
    if clashes or trainer_state.get("step", step) != step:
        raise ValueError(
            f"trainer_state may not set {', '.join(clashes) or 'step'}: {', '.join(_RESERVED_KEYS)} are filled in "
            f"by save_checkpoint and 'step' must equal the step argument ({step})"
        )
    record = {
        "format": FORMAT_VERSION,
        "step": step,
        **trainer_state,
        "model_config": model_config_dict(model),
        "rng": capture_rng_state(),  # last: long base64 strings
    }
    try:
        trainer_json = json.dumps(record, indent=1)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "trainer_state and model.config must hold only JSON values "
            f"(numbers, strings, bools, None, lists, dicts): {e}"
        ) from None

    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(ckpt_root)
    name = checkpoint_dir_name(step)
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    previous = _complete_checkpoints(ckpt_root)

    target = tmp
    try:
        tmp.mkdir()
        target = tmp / MODEL_FILE
        safetensors.torch.save_model(_unwrap(model), str(target), force_contiguous=True)
        target = tmp / OPTIMIZER_FILE
        torch.save(optimizer.state_dict(), target)
        target = tmp / TRAINER_FILE
        target.write_text(trainer_json)
        for f in CHECKPOINT_FILES:
            target = tmp / f
            _fsync_file(target)
        target = final
        _publish(tmp, final)
        target = ckpt_root / LATEST_FILE
        _write_latest(ckpt_root, name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous checkpoint {previous[-1]} is kept" if previous else "there is no previous checkpoint"
        reason = e.strerror or str(e)
        raise OSError(e.errno or errno.EIO, f"could not write checkpoint {target} ({reason}); {kept}") from e

    complete = _complete_checkpoints(ckpt_root)
    for old in [p for p in complete if p != final][: max(0, len(complete) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None if there is none.

    Trusts the ``latest`` pointer when it names a complete checkpoint, otherwise takes the highest
    complete ``step_*`` directory. Temp directories of interrupted saves are ignored.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    pointer = ckpt_root / LATEST_FILE
    if pointer.is_file():
        candidate = ckpt_root / pointer.read_text().strip()
        if _step_of(candidate) is not None and _is_complete(candidate):
            return candidate
    complete = _complete_checkpoints(ckpt_root)
    return complete[-1] if complete else None


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint directory into ``model`` (and ``optimizer``) and return the trainer state.

    The returned dict is the ``trainer_state`` given to ``save_checkpoint`` plus ``step``, ``rng``
    and ``model_config``. With ``restore_rng`` (the default) the global RNGs are restored too, so
    call this after building the model and optimizer and right before training resumes. Pass
    ``optimizer=None`` to load only the weights (evaluation, fine-tuning).

    Raises ``CheckpointError`` if the directory is incomplete or corrupt, or if it was saved for a
    model whose config differs from ``model.config``.
    """
    path = Path(path)
    if (path / SHARDED_STATE_METADATA).is_file():
        from .sharded_checkpoint import load_sharded_checkpoint

        return load_sharded_checkpoint(path, model, optimizer, restore_rng)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise CheckpointError(f"checkpoint {path} was written by a single process; resume it with one process "
                              "(multi-process runs write and resume sharded checkpoints)")
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is incomplete or not a checkpoint: missing {', '.join(missing)} "
            f"(a checkpoint directory holds {', '.join(CHECKPOINT_FILES)})"
        )
    try:
        record = json.loads((path / TRAINER_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {path / TRAINER_FILE} is corrupt: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint file {path / TRAINER_FILE} is not a muonlab checkpoint of format {FORMAT_VERSION}"
        )

    saved_config, current_config = record.get("model_config"), model_config_dict(model)
    if saved_config is not None and current_config is not None:
        diffs = _config_difference(saved_config, _json_roundtrip(current_config))
        if diffs:
            raise CheckpointError(f"checkpoint {path} was saved for a different model: {'; '.join(diffs)}")

    try:
        safetensors.torch.load_model(_unwrap(model), str(path / MODEL_FILE), strict=True)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatch
        detail = " ".join(str(e).split())
        raise CheckpointError(f"checkpoint weights {path / MODEL_FILE} do not fit the model: {detail}") from None
    except Exception as e:  # safetensors raises its own error type for a truncated or garbled file
        raise CheckpointError(f"checkpoint weights {path / MODEL_FILE} are corrupt or truncated: {e}") from None

    if optimizer is not None:
        try:
            optimizer_state = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, or an object weights_only refuses to unpickle
            raise CheckpointError(f"checkpoint file {path / OPTIMIZER_FILE} is corrupt or unsafe: {e}") from None
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"optimizer state {path / OPTIMIZER_FILE} does not fit this optimizer's param groups: {e}"
            ) from None

    if restore_rng:
        restore_rng_state(record["rng"])
    del record["format"]
    return record
