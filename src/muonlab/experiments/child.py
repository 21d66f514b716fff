"""``python -m muonlab.experiments.child PARENT_PID ARGS...``: a process a study starts, tied to the study.

It asks the kernel to send it SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``, kept across
the ``exec`` of the allocator switch), so killing a study — even with SIGKILL — leaves no training
process writing into a run folder that the next invocation resumes. Then it runs ``python -m ARGS``.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent, module, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the study died before the line above took effect
        sys.exit(f"the study process {parent} is gone; not starting {module}")
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
