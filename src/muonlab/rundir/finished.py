"""Whether a run finished: ``<run_dir>/finished.json``, written when the last step's checkpoint is safe.

::

    {"step": 2048, "total_steps": 2048, "tokens": 8388608, "checkpoint": "step_00002048",
     "final_val_loss": 3.21, "finished_at": "2026-12-06T04:10:00+00:00"}

Training writes the record (atomically) after the final checkpoint and deletes it before it trains
any further step (a resume from an older checkpoint), so a folder with the record holds a finished
run and one without it does not. Whatever reads runs — export, report, ``init_from``, studies —
asks :func:`is_finished` or :func:`unfinished_reason` instead of guessing from a metrics log, which
a crash can cut short.

Runs from before the record are judged by their own files: finished when the latest checkpoint's
step (or else the last metrics row with a validation loss) reaches the run's ``total_steps``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .layout import CHECKPOINTS_DIR, TRAINER_FILE, latest_checkpoint
from .ownership import MARKER_FILE

__all__ = ["FINISHED_FILE", "clear_finished", "is_finished", "read_finished", "run_progress", "unfinished_reason",
           "write_finished"]

FINISHED_FILE = "finished.json"


def write_finished(run_dir: str | os.PathLike, step: int, total_steps: int, tokens: int, checkpoint: str,
                   final_val_loss: float) -> None:
    """Record that the run in ``run_dir`` finished: ``step`` of ``total_steps``, saved as ``checkpoint``."""
    record = {"step": step, "total_steps": total_steps, "tokens": tokens, "checkpoint": checkpoint,
              "final_val_loss": final_val_loss, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    run_dir = Path(run_dir)
    tmp = run_dir / f".{FINISHED_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, run_dir / FINISHED_FILE)


def clear_finished(run_dir: str | os.PathLike) -> None:
    """Remove the finished record: the run is about to train again (e.g. from an older checkpoint)."""
    (Path(run_dir) / FINISHED_FILE).unlink(missing_ok=True)


def read_finished(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The finished record of ``run_dir``, or None when there is none (or it is not a JSON object)."""
    try:
        record = json.loads((Path(run_dir) / FINISHED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _last_evaluated_step(run_dir: Path) -> int:
    """The step of the last metrics row with a validation loss (0 without one); a cut last line is skipped."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    step = 0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "val_loss" in row and isinstance(row.get("step"), int):
            step = max(step, row["step"])
    return step


def run_progress(run_dir: str | os.PathLike) -> tuple[int, int | None, bool]:
    """``(step, total_steps, finished)`` of the run in ``run_dir``.

    ``step`` is how far the run got (its finished record, else its latest complete checkpoint, else
    its last evaluated metrics row); ``total_steps`` comes from ``config.json`` (None when unknown).
    """
    run_dir = Path(run_dir)
    total = _json(run_dir / "config.json").get("total_steps")
    total = total if isinstance(total, int) else None
    record = read_finished(run_dir)
    if record is not None:
        return record["step"], record.get("total_steps", total), True
    checkpoint = latest_checkpoint(run_dir)
    step = _json(checkpoint / TRAINER_FILE).get("step") if checkpoint is not None else None
    step = step if isinstance(step, int) else _last_evaluated_step(run_dir)
    legacy = not (run_dir / MARKER_FILE).exists()  # a run from before the finished record
    return step, total, legacy and total is not None and step >= total


def is_finished(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a run trained to its last step (see the module docstring)."""
    return run_progress(run_dir)[2]


def unfinished_reason(run_dir: str | os.PathLike) -> str | None:
    """None for a finished run, else one sentence naming how far it got, e.g.
    ``"run runs/a is unfinished: it stopped at step 416 of 2,048"``."""
    step, total, finished = run_progress(run_dir)
    if finished:
        return None
    of = f" of {total:,}" if total is not None else ""
    where = f"it stopped at step {step:,}{of}" if step else f"it has no checkpoint yet ({CHECKPOINTS_DIR}/ is empty)"
    return f"run {run_dir} is unfinished: {where}"
