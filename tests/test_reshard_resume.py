"""A run saved at N processes continues at M from the command line (README: checkpoints load at any world size).

``torchrun --nproc_per_node=2 ... train`` killed after step 6 (its last checkpoint is step 4) and
resumed with ``muonlab train`` on one process at the same global batch (``batch_size`` doubled)
finishes with the uninterrupted one-process run's losses, validation losses and weight RMS within
1e-5; so does the reverse (one process killed, two continuing). The run folder records both
process counts, and a resume at another global batch is refused before torch is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchrun_runs import assert_same_trajectory, metric_rows, run_values, torchrun_train, train_flags, train_in_process

pytestmark = pytest.mark.distributed

ENTRY = str(Path(__file__).parent / "stopping_entry.py")


@pytest.fixture(scope="module")
def uninterrupted(tiny_corpus, muonlab_cache_dir, tmp_path_factory):
    return train_in_process(run_values(tiny_corpus, tmp_path_factory.mktemp("whole") / "run"), muonlab_cache_dir)


def _one_process(values: dict, stop_after: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUONLAB_ALLOCATOR": "default", "OMP_NUM_THREADS": "1"}
    env.pop("MUONLAB_TEST_STOP_AFTER_STEP", None)
    if stop_after is not None:
        env["MUONLAB_TEST_STOP_AFTER_STEP"] = str(stop_after)
    return subprocess.run([sys.executable, ENTRY, "train", *train_flags(values)], capture_output=True, text=True,
                          timeout=900, env=env)


def _resumes(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "config.json").read_text())["resumes"]


@pytest.mark.parametrize("mode", ["zero1", "fsdp"])
def test_two_processes_killed_then_one_finishes_the_run(tiny_corpus, muonlab_cache, tmp_path, uninterrupted, mode,
                                                        monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MUONLAB_TEST_STOP_AFTER_STEP", "6")
    monkeypatch.setenv("MUONLAB_TEST_DEATHS", str(tmp_path))
    killed = torchrun_train([ENTRY], run_values(tiny_corpus, run_dir, batch_size=2, parallel=mode,
                                                checkpoint_every=4), 2, timeout=900)
    assert killed.returncode != 0, killed.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("stopped-*")) == ["stopped-rank0-step6", "stopped-rank1-step6"]
    assert not (run_dir / "finished.json").exists()

    done = _one_process(run_values(tiny_corpus, run_dir, batch_size=4, checkpoint_every=4))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_trajectory(metric_rows(run_dir), uninterrupted)
    assert [(r["step"], r["saved_dp_size"], r["dp_size"]) for r in _resumes(run_dir)] == [(4, 2, 1)]
    assert json.loads((run_dir / "finished.json").read_text())["step"] == 12


def test_one_process_killed_then_two_finish_the_run(tiny_corpus, muonlab_cache, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    killed = _one_process(run_values(tiny_corpus, run_dir, checkpoint_every=4), stop_after=6)
    assert killed.returncode == 17, killed.stderr[-2000:]

    done = torchrun_train([ENTRY], run_values(tiny_corpus, run_dir, batch_size=2, parallel="fsdp",
                                              checkpoint_every=4), 2, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_trajectory(metric_rows(run_dir), uninterrupted)
    assert [(r["step"], r["saved_dp_size"], r["dp_size"]) for r in _resumes(run_dir)] == [(4, 1, 2)]


def test_another_global_batch_is_refused_naming_the_batch_size_that_fits(tiny_corpus, muonlab_cache, tmp_path):
    run_dir = tmp_path / "run"
    short = {**run_values(tiny_corpus, run_dir), "train_tokens": 32 * 4 * 2}
    train_in_process(short, muonlab_cache)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    done = _one_process({**short, "batch_size": 2})
    assert done.returncode == 2
    assert ("the global batch is 128 tokens per step there but 64 now (batch_size=4 keeps it at 1 data-parallel "
            "processes)") in done.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
