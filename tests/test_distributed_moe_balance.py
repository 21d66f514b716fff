"""MoE load balancing under data parallelism equals one process.

The balance bias of an MoE layer moves by ``u · (sign(e_i) − mean_j sign(e_j))`` from the expert
loads of the step (``muonlab.models.moe``). Each rank only routes its slice of the batch, so the
training loop sums the per-step loads over ranks (``muonlab.parallel.sum_step_statistics``)
before ``after_optimizer_step``; every rank must then apply the bias step one process would
apply for the whole batch. Here ``muonlab.train.loop.train`` runs the ``moe-tiny`` preset on 2
gloo processes (batch 2 each) under ``ddp``, ``zero1`` and ``fsdp`` and on one process (batch 4);
the bias after every step, on every rank, the logged losses and the logged routing statistics
(summed over ranks before ``telemetry()``, ``muonlab.parallel.TELEMETRY_STATISTICS_ATTR``) must
match the single-process run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config_dict
from distributed_harness import spawn

pytestmark = pytest.mark.distributed

MODES = ("ddp", "zero1", "fsdp")
STEPS = 6


def _values(corpus: Path, run_dir: Path, **overrides) -> dict:
    return tiny_config_dict(corpus, run_dir, model="moe-tiny", train_tokens=32 * 4 * STEPS, log_every=1,
                            eval_every=STEPS, telemetry_every=2, ns_dtype="float32", threads=1, **overrides)


def _train_recording_bias(values: dict) -> list[torch.Tensor]:
    """Train, returning every MoE layer's balance bias after each of its updates, in order."""
    from muonlab.models.moe import MoE
    from muonlab.train.config import TrainConfig
    from muonlab.train.loop import train

    record, update = [], MoE.update_balance_bias

    def recording_update(self):
        update(self)
        record.append(self.balance_bias.detach().clone())

    MoE.update_balance_bias = recording_update
    try:
        train(TrainConfig(**values))
    finally:
        MoE.update_balance_bias = update
    return record


def _every_mode(rank: int, world: int, runs: dict[str, dict]) -> dict[str, list[torch.Tensor]]:
    return {mode: _train_recording_bias(values) for mode, values in runs.items()}


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_process(tiny_corpus, muonlab_cache_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("moe-single") / "run"
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
        bias = _train_recording_bias(_values(tiny_corpus, run_dir))
    torch.set_num_threads(before)
    return {"bias": bias, "rows": _rows(run_dir)}


@pytest.fixture(scope="module")
def distributed(tiny_corpus, muonlab_cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-distributed")
    runs = {mode: _values(tiny_corpus, root / mode, batch_size=2, parallel=mode) for mode in MODES}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
        per_rank = spawn(_every_mode, 2, runs)
    return {mode: {"bias": [r[mode] for r in per_rank], "rows": _rows(runs[mode]["run_dir"])} for mode in MODES}


@pytest.mark.parametrize("mode", MODES)
def test_balance_bias_on_every_rank_equals_the_single_process_bias(single_process, distributed, mode):
    expected = single_process["bias"]
    assert len(expected) == STEPS  # moe-tiny: one MoE block (block 0 is dense), one update per step
    assert float(expected[-1].abs().sum()) > 0, "the bias never moved: nothing is being compared"
    for rank, record in enumerate(distributed[mode]["bias"]):
        assert len(record) == STEPS, rank
        for step, (got, want) in enumerate(zip(record, expected), start=1):
            assert torch.allclose(got, want, rtol=0, atol=1e-9), f"rank {rank}, step {step}: {(got - want).abs().max()}"


@pytest.mark.parametrize("mode", MODES)
def test_moe_losses_and_bias_telemetry_equal_the_single_process_run(single_process, distributed, mode):
    expected, rows = single_process["rows"], distributed[mode]["rows"]
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for row, ref in zip(rows, expected):
        assert row["loss"] == pytest.approx(ref["loss"], rel=1e-5), row["step"]
        assert ("moe/bias_abs_mean" in row) == ("moe/bias_abs_mean" in ref)
        if "moe/bias_abs_mean" in ref:
            assert row["moe/bias_abs_mean"] == pytest.approx(ref["moe/bias_abs_mean"], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_moe_routing_telemetry_describes_the_global_batch(single_process, distributed, mode):
    # Each rank routes half the batch; the logged load and entropy must be the whole batch's.
    expected, rows = single_process["rows"], distributed[mode]["rows"]
    compared = 0
    for row, ref in zip(rows, expected):
        for key in ("moe/load_max_over_mean", "moe/router_entropy"):
            assert (key in row) == (key in ref), (row["step"], key)
            if key in ref:
                assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=0), (row["step"], key)
                compared += 1
    assert compared == 2 * len([s for s in range(1, STEPS + 1) if s == 1 or s % 2 == 0])
