"""The global RNG states training touches, as JSON (they go into a checkpoint's ``trainer.json``).

Restoring them on resume makes the resumed run draw the same random numbers (dropout masks, data
order where it is random) as the uninterrupted one, so the two trajectories are bit-identical.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


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
