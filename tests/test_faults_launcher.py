"""Fault injection, the launcher: ``kill -9`` of ``torchrun`` stops its workers, so nothing goes on writing the
run folder (they are tied to it with ``PR_SET_PDEATHSIG``: ``muonlab.parallel.launcher``), and the
folder's writer lock is free again for the next ``muonlab train`` to resume the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_cases import checksums
from torchrun_runs import run_values, train_flags

pytestmark = [pytest.mark.faults, pytest.mark.distributed]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(condition, timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after a timeout that only a hang reaches."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:.0f} s"
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_stop_when_torchrun_is_killed(tiny_corpus, muonlab_cache, tmp_path):
    from muonlab.rundir.ownership import folder_lock

    run_dir = tmp_path / "run"
    values = {**run_values(tiny_corpus, run_dir, batch_size=2, parallel="zero1"), "train_tokens": 32 * 4 * 100_000}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "muonlab.cli", "train", *train_flags(values)]
    env = {**os.environ, "MUONLAB_ALLOCATOR": "default", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        metrics = run_dir / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0, 900, "the first logged step")
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        _wait_for(lambda: not any(_running(w) for w in workers), 300, "the workers' exit after their launcher's")
    finally:  # whatever failed, leave no process behind
        launcher.kill()
        for pid in [w for w in workers if _running(w)]:
            os.kill(pid, signal.SIGKILL)
    settled = checksums(run_dir)
    time.sleep(2)
    assert checksums(run_dir) == settled  # nothing writes the folder any more
    with folder_lock(run_dir, "the test"):  # and the lock went with the workers
        pass
