"""Kill a study mid-run and run the same command again: it continues where it stopped.

A tiny demo study (4 runs of a 2-layer d=64 model, 2 side by side, one thread each) is run as a
user would: killed with SIGKILL while its second pair of runs is half-trained, then run again to
the end. The killed study's training processes must die with it, the finished runs must not be
trained again, and the final results and metrics must equal those of the same study run without
interruption (here in-process, one run after another: the same numbers on one thread).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from muonlab.cli import main
from muonlab.rundir import read_metrics
from muonlab.rundir.checkpoint import checkpoint_step, latest_checkpoint

STEPS = 120
TIMING_KEYS = {"tokens_per_s", "wall_s", "optim_step_ms", "compile_s"}


def _sets(corpus: Path) -> list[str]:
    return [f"corpus={corpus}", "tokenizer=byte", "model=tiny", "d_model=64", "seq_len=32", "batch_size=4",
            f"train_tokens={32 * 4 * STEPS}", "seeds=0,1", "compile=false", "train.device=cpu", "train.dtype=fp32",
            "train.threads=1"]


def _command(out: Path, corpus: Path, workers: int = 2) -> list[str]:
    return ["experiment", "demo", "--out", str(out), "--workers", str(workers), "--no-progress",
            *(arg for s in _sets(corpus) for arg in ("--set", s))]


def _processes_using(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _checkpointed_step(run_dir: Path) -> int:
    checkpoint = latest_checkpoint(run_dir)
    return 0 if checkpoint is None else checkpoint_step(checkpoint)


def _rows_without_timing(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in read_metrics(run_dir)]


def _kill_when_half_trained(proc: subprocess.Popen, run_dir: Path, timeout_s: float = 240) -> int:
    """SIGKILL ``proc`` once ``run_dir`` has a checkpoint before its last step; return that step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        if checkpoint is not None and 0 < checkpoint_step(checkpoint) < STEPS:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return checkpoint_step(checkpoint)
        assert proc.poll() is None, f"the study ended before it could be interrupted: {proc.stderr.read()}"
        time.sleep(0.01)
    raise AssertionError(f"{run_dir} never got a checkpoint in {timeout_s} s")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the study's processes")
def test_a_killed_study_continues_and_ends_as_an_uninterrupted_one(tiny_corpus, muonlab_cache, single_thread, tmp_path):
    env = {**os.environ, "MUONLAB_ALLOCATOR": "default"}
    cli = [sys.executable, "-m", "muonlab.cli"]
    reference = tmp_path / "reference"
    assert main(_command(reference, tiny_corpus, workers=1)) == 0

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(cli + _command(out, tiny_corpus), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed_at = _kill_when_half_trained(proc, out / "muon-s1")
    assert 0 < killed_at < STEPS
    deadline = time.monotonic() + 30
    while _processes_using(out) and time.monotonic() < deadline:  # its training processes die with it
        time.sleep(0.1)
    assert _processes_using(out) == []
    assert _checkpointed_step(out / "muon-s1") < STEPS  # it stopped there, not trained on as an orphan
    assert not (out / "results.json").exists()
    names = ["adamw-s0", "muon-s0", "adamw-s1", "muon-s1"]
    done = [n for n in names if _checkpointed_step(out / n) == STEPS]  # adamw-s1 (faster) may have ended too
    assert done[:2] == ["adamw-s0", "muon-s0"] and "muon-s1" not in done
    finished = {name: (out / name / "metrics.jsonl").read_bytes() for name in done}

    rerun = subprocess.run(cli + _command(out, tiny_corpus), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done)} of 4 runs are finished already; they are not run again" in rerun.stdout
    assert {name: (out / name / "metrics.jsonl").read_bytes() for name in done} == finished
    assert json.loads((out / "results.json").read_text()) == json.loads((reference / "results.json").read_text())
    for name in names:
        assert _rows_without_timing(out / name) == _rows_without_timing(reference / name), name
    # Both invocations are on record: the killed one (unfinished) and the one that trained the rest.
    killed, finishing = json.loads((out / "provenance.json").read_text())["invocations"]
    assert killed["wall_s"] is None and killed["trained"] == names
    assert finishing["wall_s"] > 0 and finishing["trained"] == [n for n in names if n not in done]
    assert "did not finish (stopped or killed); set out to train adamw-s0" in (out / "report.md").read_text()


def test_a_second_study_on_the_same_folder_stops_at_once_and_touches_nothing(tiny_corpus, muonlab_cache, tmp_path,
                                                                              capsys):
    from muonlab.experiments.lock import study_lock

    out = tmp_path / "demo"
    with study_lock(out):  # as a study running in another process holds it
        assert main(_command(out, tiny_corpus)) == 1
    err = capsys.readouterr().err
    assert f"{out} is in use by a study running in process {os.getpid()}" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == [".study.lock"]
