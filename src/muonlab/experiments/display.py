"""Show a study's progress: one live ``rich`` display on a terminal, plain periodic lines otherwise.

Both read ``StudyProgress.poll()`` snapshots on a background thread (``Monitor``), so they work the
same whether the runs train in this process or in others. The live display shows the study line
(runs done / running / left, elapsed time, ETA) and, per running run, tokens done of total, a bar,
tokens/s, the latest training loss and the run's ETA. The plain form prints a line when a run
starts or ends and the same status every ``every_s`` seconds, for logs and CI.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .progress import DONE, FAILED, LEFT, RUNNING, Snapshot, StudyProgress

__all__ = ["Monitor", "PlainLines", "format_duration", "format_tokens", "render", "status_line"]


def format_tokens(n: float) -> str:
    """``1503232`` -> ``"1.50M"``, ``20480`` -> ``"20.5k"``, ``512`` -> ``"512"``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}" if n / size < 100 else f"{n / size:.0f}{unit}"
    return f"{n:.0f}"


def format_duration(seconds: float | None) -> str:
    """``None`` -> ``"?"``, ``75`` -> ``"1m15s"``, ``3725`` -> ``"1h02m"``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_line(snapshot: Snapshot) -> str:
    """``study demo: 2/6 done, 2 running, 2 left; elapsed 1m20s, ETA 3m05s`` (failed runs counted when any)."""
    failed = snapshot.count(FAILED)
    return (f"study {snapshot.study}: {snapshot.count(DONE)}/{len(snapshot.runs)} done, "
            f"{snapshot.count(RUNNING)} running, {snapshot.count(LEFT)} left"
            + (f", {failed} failed" if failed else "")
            + f"; elapsed {format_duration(snapshot.elapsed_s)}, ETA {format_duration(snapshot.eta_s)}")


def _run_cells(snapshot: Snapshot):
    for run in snapshot.runs:
        if run.state != RUNNING:
            continue
        speed = f"{format_tokens(run.tokens_per_s)} tok/s" if run.tokens_per_s else "starting"
        loss = f"loss {run.loss:.3f}" if run.loss is not None else ""
        yield run, (f"{format_tokens(run.tokens)}/{format_tokens(run.total_tokens)}", speed, loss,
                    f"ETA {format_duration(run.eta_s)}")


def render(snapshot: Snapshot):
    """The live display's renderable: the study line, then one row per running run."""
    table = Table.grid(padding=(0, 2))
    for _ in range(6):
        table.add_column()
    for run, (tokens, speed, loss, eta) in _run_cells(snapshot):
        bar = ProgressBar(total=max(1, run.total_tokens), completed=run.tokens, width=24)
        table.add_row(Text(run.name, style="bold"), bar, tokens, speed, loss, eta)
    return Group(Text(status_line(snapshot)), table)


class PlainLines:
    """Progress as plain text lines: one when a run starts or ends, the full status every ``every_s``."""

    def __init__(self, stream: IO[str], every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.every_s = every_s
        self._clock = clock
        self._states: dict[str, str] = {}
        self._last_status: float | None = None

    def show(self, snapshot: Snapshot, final: bool = False) -> None:
        lines = []
        for run in snapshot.runs:
            previous = self._states.get(run.name)
            if previous is not None and previous != run.state and run.state in (RUNNING, DONE, FAILED):
                lines.append(f"[{snapshot.study}] {run.name}: {'started' if run.state == RUNNING else run.state}")
            self._states[run.name] = run.state
        now = self._clock()
        if final or self._last_status is None or now - self._last_status >= self.every_s:
            self._last_status = now
            lines.append(status_line(snapshot))
            lines += [f"  {run.name}: " + ", ".join(c for c in cells if c) for run, cells in _run_cells(snapshot)]
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


class Monitor:
    """Shows ``progress`` every ``interval_s`` on a background thread while the ``with`` block runs.

    On a terminal (``console.is_terminal``) the display is a ``rich`` live view; otherwise plain
    lines (``PlainLines``) go to the console's file. The last state is shown when the block ends.
    """

    def __init__(self, progress: StudyProgress, console: Console | None = None, interval_s: float = 1.0,
                 plain_every_s: float = 30.0):
        self.progress = progress
        self.console = console or Console(file=sys.stdout)
        self.interval_s = interval_s
        self._plain = None if self.console.is_terminal else PlainLines(self.console.file, plain_every_s)
        self._live: Live | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="muonlab-progress", daemon=True)

    def _show(self, final: bool = False) -> None:
        snapshot = self.progress.poll()
        if self._plain is not None:
            self._plain.show(snapshot, final=final)
        elif self._live is not None:
            self._live.update(render(snapshot), refresh=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._show()

    def __enter__(self) -> Monitor:
        if self._plain is None:
            self._live = Live(render(self.progress.poll()), console=self.console, auto_refresh=False,
                              transient=False)
            self._live.start()
        else:
            self._show()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._show(final=True)
        if self._live is not None:
            self._live.stop()
