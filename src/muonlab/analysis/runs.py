"""Read run folders: ``config.json`` (the resolved config) and ``metrics.jsonl`` (one row per logged step).

This is the only way analysis code sees a training run, so a run made on a GPU machine can be
analysed anywhere; the files themselves are read by :mod:`muonlab.rundir`. Rows are the dicts
written by ``muonlab.rundir.MetricsLogger``: ``step``, ``tokens``, ``loss``, ``val_loss`` (on eval
steps only), ``lr``, ``tokens_per_s``, ``wall_s``, ``optim_step_ms`` and telemetry such as
``update_rms/muon`` and ``update_rms/adamw``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from muonlab.rundir import METRICS_FILE, read_config, read_metrics

# Config keys that do not change what is being measured: runs differing only in these are repeats.
NOT_HYPERPARAMETERS = frozenset({"seed", "name", "run_name", "run_dir", "out_dir", "output_dir", "command", "resume",
                                 "resumes"})  # "resumes": the history of a run folder, not a setting


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _step(row: dict[str, Any]) -> int:
    return row["step"]


@dataclass
class Run:
    """One run folder: its ``name`` (the folder name), ``path``, ``config`` dict and metric ``rows``."""

    name: str
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def optimizer(self) -> str:
        """``config["optimizer"]`` (e.g. ``"muon"`` or ``"adamw"``), ``"?"`` if the config lacks it."""
        return str(self.config.get("optimizer", "?"))

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps, tokens, values)`` of every row that logged a numeric ``key``, in step order.

        Rows without the key (e.g. ``val_loss`` on non-eval steps) are skipped; ``tokens`` is NaN
        for rows that did not log it.
        """
        picked = sorted((r for r in self.rows if _is_number(r.get(key))), key=_step)
        return (
            np.array([r["step"] for r in picked], dtype=np.int64),
            np.array([r.get("tokens", math.nan) for r in picked], dtype=np.float64),
            np.array([r[key] for r in picked], dtype=np.float64),
        )

    def xy(self, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` from the rows that logged both numeric keys, in step order (e.g. wall_s, val_loss)."""
        picked = sorted((r for r in self.rows if _is_number(r.get(x_key)) and _is_number(r.get(y_key))), key=_step)
        return (
            np.array([r[x_key] for r in picked], dtype=np.float64),
            np.array([r[y_key] for r in picked], dtype=np.float64),
        )

    def final(self, key: str) -> float | None:
        """The value of ``key`` at the last step that logged it, or None if it was never logged."""
        _, _, values = self.series(key)
        return float(values[-1]) if len(values) else None

    def median(self, key: str) -> float | None:
        """The median of ``key`` over all rows that logged it, or None if it was never logged."""
        _, _, values = self.series(key)
        return float(np.median(values)) if len(values) else None


def load_run(path: str | os.PathLike) -> Run:
    """Read one run folder; raises ``FileNotFoundError`` naming the missing file if it is not one."""
    path = Path(path)
    config = read_config(path)
    rows = read_metrics(path)
    for i, row in enumerate(rows):
        if not isinstance(row.get("step"), int):
            raise ValueError(f"{path / METRICS_FILE} row {i + 1} has no integer 'step'; every row must have one")
    return Run(name=path.name, path=path, config=config, rows=rows)


def load_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """``load_run`` for each path, in order."""
    return [load_run(p) for p in paths]


def config_key(run: Run, ignore: frozenset[str] = NOT_HYPERPARAMETERS) -> str:
    """A canonical string of the run's config without the keys in ``ignore`` (at any depth).

    Two runs with the same key are the same experiment repeated, typically with another seed.
    """

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ignore}
        return value

    return json.dumps(strip(run.config), sort_keys=True)


def group_by_config(runs: Iterable[Run]) -> list[list[Run]]:
    """Runs grouped by ``config_key`` (same config apart from seed), groups in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(config_key(run), []).append(run)
    return list(groups.values())
