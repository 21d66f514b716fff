"""A study's live progress: following a growing metrics log, the study state, and its two displays.

The display is checked as a person would see it: the rich live view on a (forced) terminal, and
plain lines when the output is not a terminal. No training runs here; run folders are written by hand.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from muonlab.experiments.display import Monitor, PlainLines, format_duration, format_tokens, render, status_line
from muonlab.experiments.progress import StudyProgress
from muonlab.rundir import MetricsTail

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _append(run_dir: Path, *rows: dict, partial: str = "") -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + partial)


def test_metrics_tail_returns_new_complete_rows_and_notices_a_rewrite(tmp_path):
    tail = MetricsTail(tmp_path)
    assert tail.read_new() == ([], False)  # no file yet
    _append(tmp_path, {"step": 1, "loss": 5.0}, partial='{"step": 2, "lo')
    assert tail.read_new() == ([{"step": 1, "loss": 5.0}], False)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('ss": "nan"}\n')  # the rest of the half-written line; non-finite values decode to floats
    rows, rewritten = tail.read_new()
    assert not rewritten and rows[0]["step"] == 2 and rows[0]["loss"] != rows[0]["loss"]
    assert tail.read_new() == ([], False)
    # A resumed run drops rows past its checkpoint: the file is replaced by a shorter one.
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    os.replace(replacement, tmp_path / "metrics.jsonl")
    assert tail.read_new() == ([{"step": 1, "loss": 5.0}], True)


def _study(tmp_path, clock):
    runs = [(name, str(tmp_path / name), 1000) for name in ("adamw-s0", "muon-s0", "adamw-s1")]
    for _, run_dir, _ in runs:
        Path(run_dir).mkdir()
    return StudyProgress("tiny", runs, done=[runs[2][1]], clock=clock), runs


def test_study_progress_reads_running_runs_from_their_metrics(tmp_path):
    now = [100.0]
    progress, runs = _study(tmp_path, lambda: now[0])
    snap = progress.poll()
    assert [r.state for r in snap.runs] == ["left", "left", "done"] and snap.eta_s is None
    progress.on_start(runs[0][1])
    progress.on_start(runs[1][1])
    _append(Path(runs[0][1]), {"step": 2, "tokens": 200, "loss": 6.5, "tokens_per_s": 100.0},
            {"step": 3, "svd_entropy/w": 0.9})  # a row without tokens keeps the latest values
    _append(Path(runs[1][1]), {"step": 4, "tokens": 400, "loss": 6.0, "tokens_per_s": 300.0})
    now[0] = 160.0
    snap = progress.poll()
    first, second, _ = snap.runs
    assert (first.state, first.tokens, first.loss, first.tokens_per_s) == ("running", 200, 6.5, 100.0)
    assert first.eta_s == pytest.approx(800 / 100) and second.eta_s == pytest.approx(600 / 300)
    assert snap.elapsed_s == 60.0 and snap.tokens_left == 800 + 600
    assert snap.eta_s == pytest.approx((800 + 600) / (100 + 300))  # left tokens at the study's current speed
    progress.on_finish(runs[1][1])
    progress.on_finish(runs[0][1], ok=False)
    snap = progress.poll()
    assert [r.state for r in snap.runs] == ["failed", "done", "done"] and snap.runs[1].tokens == 1000
    assert status_line(snap) == "study tiny: 2/3 done, 0 running, 0 left, 1 failed; elapsed 1m00s, ETA 0s"


def test_formatting():
    assert [format_tokens(n) for n in (512, 20_480, 491_520, 1_503_232, 2.5e9)] == ["512", "20.5k", "492k", "1.5M",
                                                                                    "2.5G"]
    assert [format_duration(s) for s in (None, 7.4, 75, 3725)] == ["?", "7s", "1m15s", "1h02m"]


def _running_snapshot(tmp_path):
    progress, runs = _study(tmp_path, lambda: 0.0)
    progress.on_start(runs[0][1])
    _append(Path(runs[0][1]), {"step": 5, "tokens": 250, "loss": 4.25, "tokens_per_s": 50.0})
    progress.on_start(runs[1][1])
    return progress, runs


def test_live_view_on_a_terminal(tmp_path):
    progress, _ = _running_snapshot(tmp_path)
    console = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    console.print(render(progress.poll()))
    text = ANSI.sub("", console.file.getvalue())
    lines = text.splitlines()
    assert lines[0].startswith("study tiny: 1/3 done, 2 running, 0 left")
    adamw = next(line for line in lines if line.startswith("adamw-s0"))
    assert "250/1k" in adamw and "50 tok/s" in adamw and "loss 4.250" in adamw and "ETA 15s" in adamw
    assert "━" in adamw  # the bar
    muon = next(line for line in lines if line.startswith("muon-s0"))
    assert "starting" in muon and "ETA ?" in muon


def test_monitor_is_live_on_a_terminal_and_plain_otherwise(tmp_path):
    progress, runs = _running_snapshot(tmp_path)
    tty = Console(file=io.StringIO(), force_terminal=True, width=120)
    with Monitor(progress, console=tty, interval_s=0.01):
        progress.on_finish(runs[0][1])
    out = tty.file.getvalue()
    assert "\x1b[" in out  # cursor movement: one display redrawn in place
    assert "study tiny: 2/3 done, 1 running" in ANSI.sub("", out)

    again = tmp_path / "again"
    again.mkdir()
    progress, runs = _running_snapshot(again)
    pipe = Console(file=io.StringIO(), force_terminal=False, width=120)
    assert not pipe.is_terminal
    with Monitor(progress, console=pipe, interval_s=0.01, plain_every_s=3600):
        progress.on_finish(runs[0][1])
        progress.on_finish(runs[1][1])
    out = pipe.file.getvalue()
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("study tiny: 1/3 done, 2 running, 0 left")  # shown when the block starts
    assert "  adamw-s0: 250/1k, 50 tok/s, loss 4.250, ETA 15s" in lines
    assert "[tiny] adamw-s0: done" in lines and "[tiny] muon-s0: done" in lines
    assert lines[-1].startswith("study tiny: 3/3 done, 0 running, 0 left")  # and when it ends


def test_plain_lines_print_the_status_every_interval_and_events_at_once(tmp_path):
    now = [0.0]
    progress, runs = _study(tmp_path, lambda: now[0])
    stream = io.StringIO()
    plain = PlainLines(stream, every_s=30, clock=lambda: now[0])
    plain.show(progress.poll())
    assert stream.getvalue().count("study tiny") == 1
    now[0] = 10.0
    progress.on_start(runs[0][1])
    plain.show(progress.poll())
    assert stream.getvalue().splitlines()[-1] == "[tiny] adamw-s0: started"  # the event, no status before 30 s
    now[0] = 31.0
    plain.show(progress.poll())
    assert stream.getvalue().count("study tiny") == 2
