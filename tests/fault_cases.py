"""Helpers of the fault-injection suite (``pytest -m faults``): folder checksums, tiny runs, the CLI in-process.

Every fault case asserts three things: the sentence the user reads (or the fallback that was
taken), the exit status, and that no file that existed before the case changed —
:func:`checksums` of the folder before and after.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from conftest import tiny_config_dict
from torchrun_runs import train_flags

STEPS = 8
"""Steps of the suite's runs: checkpoints after steps 4 and 8."""


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def values(corpus: Path, run_dir: Path, **overrides) -> dict:
    """A tiny run of ``STEPS`` steps checkpointed every 4 steps (all kept), every step logged."""
    return tiny_config_dict(corpus, run_dir, **{"train_tokens": 32 * 4 * STEPS, "checkpoint_every": 4,
                                                "keep_checkpoints": 5, "log_every": 1, "eval_every": 4,
                                                "threads": 1, **overrides})


def cli(capsys, *argv: str) -> tuple[int, str]:
    """``muonlab ARGV`` in this process: its exit status and what it wrote to stderr."""
    from muonlab.cli import main

    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def train_cli(capsys, run_values: dict) -> tuple[int, str]:
    """``muonlab train`` with ``run_values`` as flags, in this process."""
    return cli(capsys, "train", *train_flags(run_values))


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a run folder (a finished run to damage), without its writer lock's holder."""
    shutil.copytree(source, target)
    return target
