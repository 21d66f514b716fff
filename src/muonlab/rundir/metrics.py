"""The metrics log of a run: ``<run_dir>/metrics.jsonl``, one JSON object per logged step.

Each line looks like ``{"step": 100, "tokens": 409600, "loss": 3.21, "lr": 0.02, ...}``. Lines are
flushed as they are written, so a crash loses at most the line being written (``read_metrics``
ignores such a truncated last line).

Values are plain JSON numbers: tensors and numpy scalars are converted with ``float`` (``int`` for
integer types). Non-finite floats — a diverged loss, say — are written as the JSON *strings*
``"nan"``, ``"inf"`` and ``"-inf"``, so every line stays standard JSON that any tool can read, and
``read_metrics`` turns them back into floats.

Optionally the same scalars go to TensorBoard (``<run_dir>/tensorboard``) when ``tensorboard`` is
installed; without it that option is silently off.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["METRICS_FILE", "MetricsLogger", "MetricsTail", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _plain(key: str, value: Any) -> int | float | str | bool | None:
    """A JSON-ready scalar for one metric value."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # torch tensor / numpy scalar with one element
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise TypeError(f"metric {key!r} must be a scalar, got an array of shape {tuple(value.shape)}") from None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    raise TypeError(f"metric {key!r} must be a number, bool, string or None, got {type(value).__name__}")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()}


def _parse_lines(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics file; a truncated last line (a crash mid-write) is dropped."""
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path} line {i + 1} is not valid JSON; every line must be one JSON object") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {i + 1} is not a JSON object; every line must be one JSON object")
        rows.append(row)
    return rows


class MetricsTail:
    """Follow a growing ``metrics.jsonl`` (a run in progress, written by another process).

    ``read_new()`` returns the complete rows appended since the previous call, and whether the file
    was rewritten since (a resumed run drops the rows logged after its checkpoint): then the rows
    are all of the new file's and what was read before no longer holds. A line being written is
    left for the next call.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS_FILE
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""

    def read_new(self) -> tuple[list[dict[str, Any]], bool]:
        """``(rows, rewritten)``: the new complete rows, and whether the file was replaced or truncated."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            rewritten = self._inode is not None
            self._inode, self._offset, self._partial = None, 0, b""
            return [], rewritten
        rewritten = self._inode is not None and (stat.st_ino != self._inode or stat.st_size < self._offset)
        if rewritten or self._inode is None:
            self._offset, self._partial = 0, b""
        self._inode = stat.st_ino
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # not a row (a crash mid-write before a resume): the training process repairs it
            if isinstance(row, dict):
                rows.append(_decode(row))
        return rows, rewritten


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of ``<run_dir>/metrics.jsonl`` in file order, with non-finite values as floats."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {path}; a run folder has a {METRICS_FILE} written during training")
    return [_decode(row) for row in _parse_lines(path)]


class MetricsLogger:
    """Append one JSON line per logged step to ``<run_dir>/metrics.jsonl``.

    ``resume_step``: when resuming from a checkpoint taken at that step, rows with a larger step
    (logged after the checkpoint by the interrupted run) are removed first, so the resumed run
    does not log them twice. Without it the logger appends to whatever is there.
    ``tensorboard``: also write scalars to ``<run_dir>/tensorboard`` if ``tensorboard`` is installed.

    Use it as a context manager, or call ``close()``.
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._repair(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._failed = False
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra: no package, no TensorBoard logs
                pass
            else:
                purge_step = None if resume_step is None else resume_step + 1  # drop events after the checkpoint
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"), purge_step=purge_step)

    @property
    def tensorboard_enabled(self) -> bool:
        """Whether scalars are also going to TensorBoard."""
        return self._tb is not None

    def _repair(self, resume_step: int | None) -> None:
        """Drop rows past ``resume_step`` and a truncated last line; rewrite the file atomically."""
        text = self.path.read_text()
        rows = _parse_lines(self.path)
        if resume_step is not None:
            rows = [r for r in rows if not (isinstance(r.get("step"), int) and r["step"] > resume_step)]
        new_text = "".join(json.dumps(r) + "\n" for r in rows)
        if new_text != text:
            tmp = self.path.with_name(f".{METRICS_FILE}.tmp-{os.getpid()}")
            tmp.write_text(new_text)
            os.replace(tmp, self.path)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write one row: ``{"step": step, **metrics}``, flushed immediately."""
        if "step" in metrics:
            raise ValueError("pass the step as the first argument of log(), not inside metrics")
        row = {"step": int(step), **{key: _plain(key, value) for key, value in metrics.items()}}
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as err:  # a full disk: name the file (a failed write's error names none)
            self._failed = True
            raise OSError(err.errno, err.strerror, str(self.path)) from None
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            if not self._failed:  # after a failed write the buffered row cannot be written either
                raise
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
