"""A run folder's ``config.json`` (the fully resolved config of the run), and whether a folder holds a run.

``config.json`` is written by rank 0 when training starts (and again on every resume) and read by
the analysis code; it is replaced atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .layout import latest_checkpoint
from .metrics import METRICS_FILE

__all__ = ["CONFIG_FILE", "holds_run", "read_config", "write_config"]

CONFIG_FILE = "config.json"


def write_config(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write ``record`` as ``<run_dir>/config.json`` (through a temp file and ``os.replace``)."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{CONFIG_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, run_dir / CONFIG_FILE)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``<run_dir>/config.json`` as a dict; ``FileNotFoundError`` if the folder is not a run folder,
    ``ValueError`` if the file is not a JSON object."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder: it has no {CONFIG_FILE} (a run folder holds {CONFIG_FILE} and "
            f"{METRICS_FILE})"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object (the resolved config), got {type(config).__name__}")
    return config


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` already holds (part of) a run: a complete checkpoint or a metrics log.

    A ``config.json`` alone does not count: it is written before the first step.
    """
    return latest_checkpoint(run_dir) is not None or (Path(run_dir) / METRICS_FILE).exists()
