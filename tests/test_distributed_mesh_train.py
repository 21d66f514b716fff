"""``muonlab train --dp_shard N --tp N --ep N`` under ``torchrun``: the single-process loss curve, and exact resumption.

- ``--tp 2`` on 2 gloo processes and ``--dp_shard 2 --tp 2`` on 4 train the "tiny" preset with 2
  attention heads (one per TP rank) and log the same loss, validation loss, weight RMS and
  block-output RMS at every step as one process with the whole batch, within 1e-5 (fp32
  Newton–Schulz).
- ``--ep 2 --dp_shard 2`` on 4 processes trains the "moe-tiny" preset (MLA, 64 routed experts, 16
  per rank, tokens dispatched by all-to-all) with the single-process loss, validation loss, weight
  and block-output RMS at every step, within 1e-5, and the same routing statistics.
- On ``dp_shard 2 × tp 2``, rank 1 killed after step 6 under ``torchrun --max-restarts 1`` is
  restarted with the others, resumes from the step-4 (DCP) checkpoint and finishes with the
  uninterrupted run's metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config_dict

pytestmark = pytest.mark.distributed

STEPS = 12
TIMING_KEYS = {"tokens_per_s", "wall_s", "optim_step_ms"}


def _values(corpus: Path, run_dir: Path, **overrides) -> dict:
    return tiny_config_dict(corpus, run_dir, train_tokens=32 * 4 * STEPS, log_every=1, eval_every=4,
                            telemetry_every=4, ns_dtype="float32", threads=1, n_heads=2, **overrides)


def _torchrun(script: list[str], values: dict, processes: int, *extra: str) -> subprocess.CompletedProcess:
    flags = [item for key, value in values.items()
             for item in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *extra, *script, "train", *flags]
    env = {**os.environ, "MUONLAB_ALLOCATOR": "default", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=420, env=env)


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@pytest.fixture(scope="module")
def single_process_run(tiny_corpus, muonlab_cache_dir, tmp_path_factory):
    from muonlab.train.config import TrainConfig
    from muonlab.train.loop import train

    run_dir = tmp_path_factory.mktemp("single") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
        train(TrainConfig(**_values(tiny_corpus, run_dir)))
    return _rows(run_dir)


@pytest.fixture(scope="module")
def single_process_moe_run(tiny_corpus, muonlab_cache_dir, tmp_path_factory):
    from muonlab.train.config import TrainConfig
    from muonlab.train.loop import train

    run_dir = tmp_path_factory.mktemp("single-moe") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
        train(TrainConfig(**_values(tiny_corpus, run_dir, model="moe-tiny")))
    return _rows(run_dir)


def _assert_same_trajectory(rows: list[dict], expected: list[dict], keys=("loss", "val_loss")) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for row, ref in zip(rows, expected):
        for key in keys:
            if key in ref:
                assert row[key] == pytest.approx(ref[key], rel=1e-5), (row["step"], key)
        rms_keys = sorted(k for k in ref if k.startswith(("weight_rms/", "output_rms/")))
        assert rms_keys == sorted(k for k in row if k.startswith(("weight_rms/", "output_rms/"))), row["step"]
        for key in rms_keys:  # whole weights from their DTensor shards; every data shard's activations
            assert row[key] == pytest.approx(ref[key], rel=1e-5), (row["step"], key)
        assert row["tokens"] == ref["tokens"]


@pytest.mark.parametrize("processes, sizes", [(2, {"tp": 2}), (4, {"dp_shard": 2, "tp": 2})])
def test_torchrun_on_a_mesh_matches_one_process(tiny_corpus, muonlab_cache, tmp_path, single_process_run,
                                                processes, sizes):
    run_dir = tmp_path / "run"
    batch_size = 4 // sizes.get("dp_shard", 1)  # the global batch of 4 sequences, split over data shards
    done = _torchrun(["-m", "muonlab.cli"], _values(tiny_corpus, run_dir, batch_size=batch_size, **sizes), processes)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished 12 steps") == 1
    _assert_same_trajectory(_rows(run_dir), single_process_run)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["parallel"] == "mesh" and config["world_size"] == processes and config["tokens_per_step"] == 128


def test_torchrun_with_expert_parallelism_matches_one_process(tiny_corpus, muonlab_cache, tmp_path,
                                                              single_process_moe_run):
    run_dir = tmp_path / "run"
    values = _values(tiny_corpus, run_dir, model="moe-tiny", batch_size=1, dp_shard=2, ep=2)
    done = _torchrun(["-m", "muonlab.cli"], values, 4)
    assert done.returncode == 0, done.stderr[-3000:]
    routing = [k for k in single_process_moe_run[-1] if k.startswith("moe/")]
    assert "moe/load_max_over_mean" in routing and "moe/router_entropy" in routing
    _assert_same_trajectory(_rows(run_dir), single_process_moe_run, ("loss", "val_loss", *routing))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["parallel"] == "mesh" and config["ep"] == 2 and config["tokens_per_step"] == 128


def test_a_killed_rank_on_a_mesh_resumes_exactly(tiny_corpus, muonlab_cache, tmp_path, single_process_run,
                                                 monkeypatch):
    run_dir = tmp_path / "faulty"
    values = _values(tiny_corpus, run_dir, batch_size=2, dp_shard=2, tp=2, checkpoint_every=4)
    monkeypatch.setenv("MUONLAB_TEST_KILL_AFTER_STEP", "6")  # rank 1 dies after step 6; the checkpoint is at 4
    done = _torchrun([str(Path(__file__).parent / "distributed_fault_entry.py")], values, 4, "--max-restarts=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(exitcode: 17) local_rank: 1" in done.stderr
    rows = _rows(run_dir)
    assert len({r["step"] for r in rows}) == len(rows), "a step was logged twice"
    _assert_same_trajectory(rows, single_process_run)
