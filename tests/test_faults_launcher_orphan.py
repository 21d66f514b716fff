"""Fault injection, a launcher killed while its workers start: a torchrun worker adopted by init before it
could tie itself to its launcher stops without training (``muonlab.parallel.launcher.die_with_launcher``);
one whose launcher *is* process 1 (``torchrun`` as a container's entry point) goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.faults,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")]

TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "test", "LOCAL_RANK": "0"}

# The launcher forks the worker and exits at once; the worker waits until it has been adopted, then ties
# itself to its (dead) launcher and writes what happened.
ORPHANED_WORKER = textwrap.dedent("""
    import os, sys, time
    out = sys.argv[1]
    launcher = os.getpid()
    if os.fork():
        os._exit(0)
    while os.getppid() == launcher:
        time.sleep(0.01)
    from muonlab.parallel.launcher import LauncherGoneError, die_with_launcher
    try:
        die_with_launcher()
        result = "trained"
    except LauncherGoneError as err:
        result = "stopped: " + str(err)
    with open(out + ".tmp", "w") as f:
        f.write(f"{os.getppid()}\\n{result}")
    os.replace(out + ".tmp", out)
""")

# die_with_launcher with a parent of process 1 whose command line is given (the first argument).
PARENT_IS_PID_1 = textwrap.dedent("""
    import os, sys
    import muonlab.parallel.launcher as launcher
    os.getppid = lambda: 1
    launcher.command_line = lambda pid: sys.argv[1]
    try:
        launcher.die_with_launcher()
        print("trained")
    except launcher.LauncherGoneError as err:
        print("stopped:", err)
""")


def _env() -> dict[str, str]:
    return {**os.environ, **TORCHRUN_ENV}


def test_a_worker_adopted_by_init_stops(tmp_path):
    out = tmp_path / "result"
    subprocess.run([sys.executable, "-c", ORPHANED_WORKER, str(out)], env=_env(), check=True, timeout=600)
    deadline = time.monotonic() + 600  # only a hang reaches it
    while not out.exists():
        assert time.monotonic() < deadline, "the orphaned worker wrote nothing"
        time.sleep(0.05)
    adopter, result = Path(out).read_text().split("\n", 1)
    if adopter != "1":
        pytest.skip(f"the worker was adopted by a subreaper (process {adopter}), which die_with_launcher cannot tell "
                    "from a launcher")
    assert result.startswith("stopped: ") and "init (process 1" in result, result


@pytest.mark.parametrize("command, expected", [
    ("/usr/bin/python3 /usr/local/bin/torchrun --nproc_per_node=2 -m muonlab.cli train", "trained"),
    ("python -m torch.distributed.run --nproc_per_node=4 train.py", "trained"),
    ("/sbin/init splash", "stopped"),
    ("/usr/bin/tini -- bash", "stopped"),
])
def test_a_parent_of_process_1_is_a_launcher_only_by_its_command_line(command, expected):
    done = subprocess.run([sys.executable, "-c", PARENT_IS_PID_1, command], env=_env(), capture_output=True, text=True,
                          check=True, timeout=600)
    assert done.stdout.split(":")[0].strip() == expected, done.stdout + done.stderr
