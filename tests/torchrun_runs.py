"""Helpers of the tests that run ``muonlab train`` under torchrun and compare it with one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config_dict

STEPS = 12
"""Steps of the compared runs: evaluations, telemetry and the logged loss every few of them."""
TIMING_KEYS = {"tokens_per_s", "wall_s", "optim_step_ms"}
"""Metrics that depend on the machine's speed, not on the run's numbers."""


def run_values(corpus: Path, run_dir: Path, **overrides) -> dict:
    """A tiny run of ``STEPS`` steps with fp32 Newton–Schulz, every step logged, on one thread."""
    return tiny_config_dict(corpus, run_dir, train_tokens=32 * 4 * STEPS, log_every=1, eval_every=4,
                            telemetry_every=4, ns_dtype="float32", threads=1, **overrides)


def train_flags(values: dict) -> list[str]:
    """``--key value`` for every config value (booleans as ``true``/``false``)."""
    return [item for key, value in values.items()
            for item in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))]


def torchrun_train(script: list[str], values: dict, processes: int, *extra: str,
                   timeout: float = 420) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=processes [extra] script train --key value ...`` (one thread a process)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *extra, *script, "train", *train_flags(values)]
    env = {**os.environ, "MUONLAB_ALLOCATOR": "default", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def metric_rows(run_dir: Path) -> list[dict]:
    """The run's metrics rows without the timing keys."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_same_trajectory(rows: list[dict], expected: list[dict], keys=("loss", "val_loss")) -> None:
    """Same steps and tokens; ``keys``, weight RMS and block-output RMS within 1e-5 of the reference's."""
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for row, ref in zip(rows, expected):
        for key in keys:
            if key in ref:
                assert row[key] == pytest.approx(ref[key], rel=1e-5), (row["step"], key)
        rms_keys = sorted(k for k in ref if k.startswith(("weight_rms/", "output_rms/")))
        assert rms_keys == sorted(k for k in row if k.startswith(("weight_rms/", "output_rms/"))), row["step"]
        for key in rms_keys:  # whole weights from their shards; every data shard's activations
            assert row[key] == pytest.approx(ref[key], rel=1e-5), (row["step"], key)
        assert row["tokens"] == ref["tokens"]


def train_in_process(values: dict, cache_dir: Path) -> list[dict]:
    """Train ``values`` in this process (the single-process reference) with ``MUONLAB_CACHE=cache_dir``;
    its metrics rows without the timing keys."""
    from muonlab.train.config import TrainConfig
    from muonlab.train.loop import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(cache_dir))
        train(TrainConfig(**values))
    return metric_rows(Path(values["run_dir"]))
