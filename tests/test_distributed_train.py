"""``muonlab train --parallel {ddp,zero1,fsdp}`` under ``torchrun`` on 2 gloo processes, faults, bad input.

- Each mode trains the "tiny" preset with half the per-process batch and logs the same loss,
  validation loss, weight RMS and block-output RMS at every step as one process with the whole
  batch (README "On several processes": the same Muon gives the same numbers; only rank 0 writes
  the run folder).
- A rank killed mid-run under ``torchrun --max-restarts 1`` is restarted with the others, resumes
  from the last (sharded) checkpoint and finishes with the uninterrupted run's metrics.
- Ranks that disagree on the training config, the optimizer settings or the model's shapes fail
  at start-up, on every rank, with a message naming the mismatch (instead of hanging in a
  collective).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distributed_harness import spawn
from torchrun_runs import assert_same_trajectory, metric_rows, run_values, torchrun_train, train_in_process

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def single_process_run(tiny_corpus, muonlab_cache_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    return train_in_process(run_values(tiny_corpus, run_dir), muonlab_cache_dir)


@pytest.mark.parametrize("mode", ["ddp", "zero1", "fsdp"])
def test_torchrun_training_matches_one_process(tiny_corpus, muonlab_cache, tmp_path, single_process_run, mode):
    run_dir = tmp_path / mode
    done = torchrun_train(["-m", "muonlab.cli"], run_values(tiny_corpus, run_dir, batch_size=2, parallel=mode), 2,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished 12 steps") == 1  # rank 0 prints, rank 1 does not
    assert_same_trajectory(metric_rows(run_dir), single_process_run)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2 and config["tokens_per_step"] == 32 * 4


def test_a_killed_rank_is_restarted_and_resumes_from_the_last_checkpoint(tiny_corpus, muonlab_cache, tmp_path,
                                                                         single_process_run, monkeypatch):
    run_dir = tmp_path / "faulty"
    values = run_values(tiny_corpus, run_dir, batch_size=2, parallel="zero1", checkpoint_every=4)
    monkeypatch.setenv("MUONLAB_TEST_KILL_AFTER_STEP", "6")  # rank 1 dies after step 6; the checkpoint is at 4
    monkeypatch.setenv("MUONLAB_TEST_DEATHS", str(tmp_path))
    done = torchrun_train([str(Path(__file__).parent / "distributed_fault_entry.py")], values, 2, "--max-restarts=1",
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 1 did die after step 6 (and the run still finished: torchrun restarted both ranks)
    deaths = sorted(p.name for p in tmp_path.glob("rank*-attempt*"))
    assert deaths == ["rank1-attempt0-step6"], done.stderr[-3000:]  # why attempt 0 ended otherwise
    rows = metric_rows(run_dir)
    assert len({r["step"] for r in rows}) == len(rows), "a step was logged twice"
    assert_same_trajectory(rows, single_process_run)


def _train_with_rank_dependent_lr(rank: int, world: int, values: dict) -> None:
    from muonlab.train.config import TrainConfig
    from muonlab.train.loop import train

    train(TrainConfig(**{**values, "lr": 3e-3 if rank == 0 else 1e-3}))


def test_ranks_with_different_training_configs_fail_fast(tiny_corpus, muonlab_cache, tmp_path):
    """Before the first step: no rank wrote a metrics row (a hang fails on the collective timeout)."""
    with pytest.raises(Exception) as caught:
        spawn(
            _train_with_rank_dependent_lr, 2, run_values(tiny_corpus, tmp_path / "run", batch_size=2, parallel="ddp")
        )
    assert "configs differ across ranks: config lr is 0.003 on rank 0 but 0.001 on rank 1" in str(caught.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _mismatched(rank: int, world: int, what: str) -> None:
    from muonlab.models import Transformer, preset
    from muonlab.optim import Muon, param_groups
    from muonlab.parallel import parallelize

    d_model = 64 if what != "shape" or rank == 0 else 128
    model = Transformer(preset("tiny", vocab_size=64, max_seq_len=16, d_model=d_model, n_heads=1))
    parallelize(model, "zero1")
    Muon(param_groups(model), lr=0.02 if what != "lr" or rank == 0 else 0.01)


@pytest.mark.parametrize("what, message", [
    ("lr", "param group 0 lr is '0.02' on rank 0 but '0.01' on rank 1"),
    ("shape", "parameter 'embed.weight' (shape, dtype) is ((64, 64), 'torch.float32') on rank 0 but ((64, 128)"),
])
def test_ranks_that_disagree_fail_fast_naming_the_mismatch(what, message):
    """In the constructor, before any step (a hang fails on the harness's collective timeout)."""
    with pytest.raises(Exception) as caught:
        spawn(_mismatched, 2, what)
    assert message in str(caught.value)
