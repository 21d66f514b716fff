"""How far a study is: every run's state, and for running runs the progress read from their metrics logs.

The run folder is the interface: the runner says when a run starts and ends (``on_start``,
``on_finish``), and ``poll()`` reads the rows each running run's training process appended to its
``metrics.jsonl`` since the last poll (tokens, training loss, tokens/s). Nothing here imports the
training loop, and it works the same for runs in this process and in other processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..rundir import MetricsTail

__all__ = ["RunStatus", "Snapshot", "StudyProgress"]

LEFT, RUNNING, DONE, FAILED = "left", "running", "done", "failed"


@dataclass(frozen=True)
class RunStatus:
    """One run: ``state`` is left, running, done or failed; ``tokens`` trained so far of ``total_tokens``;
    the latest logged training ``loss`` and ``tokens_per_s`` (None until the first row)."""

    name: str
    state: str
    total_tokens: int
    tokens: int = 0
    loss: float | None = None
    tokens_per_s: float | None = None

    @property
    def eta_s(self) -> float | None:
        """Seconds until this run ends at its latest speed; None before its first logged row."""
        if self.state == DONE:
            return 0.0
        if not self.tokens_per_s:
            return None
        return max(0, self.total_tokens - self.tokens) / self.tokens_per_s


@dataclass(frozen=True)
class Snapshot:
    """The whole study at one moment: its runs in plan order and the seconds since it started."""

    study: str
    runs: tuple[RunStatus, ...]
    elapsed_s: float

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.runs)

    @property
    def tokens_left(self) -> int:
        return sum(max(0, r.total_tokens - r.tokens) for r in self.runs if r.state not in (DONE, FAILED))

    @property
    def eta_s(self) -> float | None:
        """Seconds until the study's runs are trained: the tokens left at the running runs' summed
        speed (the speed at which the study currently advances); None while no speed is known."""
        if self.tokens_left == 0:
            return 0.0
        speed = sum(r.tokens_per_s or 0.0 for r in self.runs if r.state == RUNNING)
        return self.tokens_left / speed if speed > 0 else None


class StudyProgress:
    """Thread-safe state of a study's runs, keyed by run folder.

    ``runs``: ``(name, run_dir, total_tokens)`` in plan order; ``done``: the run folders already
    finished before this invocation (they are not run again).
    """

    def __init__(self, study: str, runs: Sequence[tuple[str, str, int]], done: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic):
        self.study = study
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._order = [run_dir for _, run_dir, _ in runs]
        self._status = {run_dir: RunStatus(name, DONE if run_dir in done else LEFT, total,
                                           tokens=total if run_dir in done else 0)
                        for name, run_dir, total in runs}
        self._tails: dict[str, MetricsTail] = {}

    def add(self, runs: Sequence[tuple[str, str, int]]) -> None:
        """Runs a growing plan added (``(name, run_dir, total_tokens)``, not started); known ones are ignored."""
        with self._lock:
            for name, run_dir, total in runs:
                if run_dir not in self._status:
                    self._order.append(run_dir)
                    self._status[run_dir] = RunStatus(name, LEFT, total)

    def on_start(self, run_dir: str) -> None:
        """The runner started training ``run_dir`` (from scratch or from its checkpoint)."""
        with self._lock:
            self._status[run_dir] = replace(self._status[run_dir], state=RUNNING)
            self._tails[run_dir] = MetricsTail(run_dir)

    def on_finish(self, run_dir: str, ok: bool = True) -> None:
        """The run's training ended: trained to the end (``ok``) or failed."""
        with self._lock:
            self._read(run_dir)
            status = self._status[run_dir]
            self._status[run_dir] = replace(status, state=DONE if ok else FAILED,
                                            tokens=status.total_tokens if ok else status.tokens)
            self._tails.pop(run_dir, None)

    def poll(self) -> Snapshot:
        """Read the new metrics rows of the running runs and return the study's state."""
        with self._lock:
            for run_dir in list(self._tails):
                self._read(run_dir)
            runs = tuple(self._status[d] for d in self._order)
        return Snapshot(self.study, runs, self._clock() - self._started)

    def _read(self, run_dir: str) -> None:
        tail = self._tails.get(run_dir)
        if tail is None:
            return
        rows, rewritten = tail.read_new()
        status = self._status[run_dir]
        if rewritten:  # resumed from a checkpoint: rows after it were dropped
            status = replace(status, tokens=0, loss=None, tokens_per_s=None)
        for row in rows:
            if isinstance(row.get("tokens"), (int, float)):
                status = replace(status, tokens=int(row["tokens"]))
            if isinstance(row.get("loss"), (int, float)):
                status = replace(status, loss=float(row["loss"]))
            if isinstance(row.get("tokens_per_s"), (int, float)):
                status = replace(status, tokens_per_s=float(row["tokens_per_s"]))
        self._status[run_dir] = status
