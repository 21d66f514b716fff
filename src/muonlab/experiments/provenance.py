"""Where a result came from: the machine (CPU model, cores, torch, GPU), the git revision, the command."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "git_revision", "machine", "machine_key"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``), or "unknown CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _gpu(device: str) -> str | None:
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def machine(device: str = "auto") -> dict[str, Any]:
    """The machine a study runs on: CPU model, core count, torch, Python, OS, and the GPU when one is used."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": _gpu(device),
    }


def machine_key(device: str = "auto") -> str:
    """What measured speeds depend on: ``"<CPU model> x<cores> | torch <version>[ | <GPU>]"``."""
    m = machine(device)
    return " | ".join(filter(None, [f"{m['cpu']} x{m['cores']}", f"torch {m['torch']}", m["gpu"]]))


def git_revision() -> str | None:
    """The muonlab checkout's commit (``+dirty`` when it has uncommitted changes); None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``muonlab`` and its arguments (``sys.argv[1:]`` by default), shell-quoted."""
    import shlex

    return shlex.join(["muonlab", *(sys.argv[1:] if argv is None else argv)])
