"""The ``pareto`` study: the time model on hand-worked numbers, step times read from timing runs, the Newton–Schulz
FLOP count, and the analysis of a made-up batch-size study folder plus made-up timing runs with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muonlab.analysis.runs import Run
from muonlab.experiments.studies.batch_size.plan import arm_runs
from muonlab.experiments.studies.pareto import plan as pareto
from muonlab.experiments.studies.pareto.report import analyse
from muonlab.experiments.studies.pareto.timing import (
    StepTimes,
    devices_for,
    frontier,
    measured_step_times,
    ns_flops_per_step,
    overhead_exponents,
    ring_allreduce_s,
    step_time_s,
)
from muonlab.experiments.study import Finished
from muonlab.rundir import MetricsLogger, write_config

from batch_size_curves import BUDGET, made_up_study, params

FWD_BWD_S = 1e-3  # the made-up forward/backward: 1 ms per sequence at d=64, ∝ d²
ADAMW_OPT_S = 2e-3


def test_ring_allreduce_devices_and_step_time_on_hand_worked_numbers():
    assert ring_allreduce_s(1, 8e6, 1e9) == 0.0
    assert ring_allreduce_s(4, 8e6, 1e9) == pytest.approx(2 * 3 / 4 * 8e6 / 1e9)  # 12 ms
    assert [devices_for(b, 4) for b in (2, 4, 8, 64)] == [1, 1, 2, 16]
    with pytest.raises(ValueError, match="whole number of per-device batches"):
        devices_for(6, 4)
    assert step_time_s(StepTimes(0.05, 0.02), 4, 8e6, 1e9) == pytest.approx(0.082)


def test_the_frontier_is_the_least_time_with_at_most_that_many_devices():
    assert frontier([(1, 10.0), (1, 9.0), (2, 12.0), (4, 5.0), (4, 7.0)]) == {1: 9.0, 2: 9.0, 4: 5.0}


def test_step_times_are_medians_after_the_warm_up_steps():
    rows = [{"step": s, "tokens_per_s": 1024 / (0.5 if s <= 3 else 0.1), "optim_step_ms": 300.0 if s <= 3 else 20.0}
            for s in range(1, 10)]
    times = measured_step_times(Run("t", Path("t"), {"tokens_per_step": 1024}, rows))
    assert times.fwd_bwd_s == pytest.approx(0.08) and times.optimizer_s == pytest.approx(0.02)


def test_newton_schulz_flops_of_the_model_count_every_hidden_matrix():
    model = pareto.model_for(pareto.PRESETS["cpu"], 64)  # SwiGLU hidden 8/3·64 rounded up to 64: 192

    def ns(m, n):
        return 5 * (4 * m * m * n + 2 * m**3)

    assert ns_flops_per_step(model) == 4 * (4 * ns(64, 64) + 3 * ns(64, 192))


def test_overhead_exponents_recover_d_over_b():
    widths, batches = [64, 64, 256, 256, 128], [256, 4096, 256, 4096, 1024]
    alpha, beta = overhead_exponents(widths, batches, [5 * 1.3 * d / b for d, b in zip(widths, batches)])
    assert alpha == pytest.approx(1.0) and beta == pytest.approx(-1.0)


def _write_batch_size_folder(folder: Path, p: dict) -> None:
    """The made-up batch-size study as run folders on disk, with the results.json pareto reads its parameters from."""
    runs = made_up_study(p)
    for name, run in runs.items():
        (folder / name).mkdir(parents=True)
        write_config(folder / name, run.config)
        with MetricsLogger(folder / name) as log:
            for row in run.rows:
                log.log(row["step"], {k: v for k, v in row.items() if k != "step"})
    lrs = {c: {"lr": {o: [arm_runs(p, runs, o, c, b)[0].config["lr"] for b in p["batch_sizes"]]
                      for o in ("adamw", "muon")}} for c in p["corpora"]}
    (folder / "results.json").write_text(json.dumps({"study": "batch-size", "preset": "cpu", "params": p,
                                                     "results": {"corpora": lrs}}))


def _optimizer_s(optimizer: str, width: int, ns_s: float) -> float:
    """The made-up optimizer step: AdamW's 2 ms; Muon's plus ``ns_s`` at d=64, ∝ d³ (Newton–Schulz)."""
    return ADAMW_OPT_S + (ns_s * (width / 64) ** 3 if optimizer == "muon" else 0.0)


def _timing_runs(p: dict, ns_s: float) -> dict[str, Run]:
    runs = {}
    for planned in pareto.plan(p, {}):
        c = planned.config
        fwd_bwd = FWD_BWD_S * (c.d_model / 64) ** 2 * c.batch_size
        opt = _optimizer_s(c.optimizer, c.d_model, ns_s)
        per_step = c.tokens_per_step()
        rows = [{"step": s, "tokens_per_s": per_step / (fwd_bwd + opt) / (3 if s <= 3 else 1),
                 "optim_step_ms": opt * 1e3} for s in range(1, c.total_steps() + 1)]
        runs[planned.name] = Run(planned.name, Path(planned.name), {"tokens_per_step": per_step}, rows)
    return runs


@pytest.fixture(scope="module")
def batch_size_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch-size")
    _write_batch_size_folder(folder, params(train_tokens=BUDGET, ema_tokens=1))
    return folder


@pytest.mark.parametrize("ns_s, eaten_at_highest, frontier_left", [(3e-3 / 8, [2], True), (5e-3 / 8, [2, 4, 8], False)])
def test_the_analysis_models_the_time_to_loss_and_finds_where_newton_schulz_eats_the_gain(
        batch_size_folder, tmp_path, ns_s, eaten_at_highest, frontier_left):
    p = {**pareto.PRESETS["cpu"], "batch_size_runs": str(batch_size_folder)}
    analysis = analyse(Finished(p, _timing_runs(p, ns_s), tmp_path))
    grad_bytes = 4 * pareto.model_for(p, 128).num_params()
    for corpus, plane in analysis.results["planes"].items():
        assert plane["devices"] == [1, 1, 2, 4, 8, 16]
        for optimizer in ("adamw", "muon"):
            expected = [FWD_BWD_S * 4 * min(b, 4) + _optimizer_s(optimizer, 128, ns_s)
                        + 2 * (n - 1) / n * grad_bytes / 1e9 for b, n in zip(plane["batches"], plane["devices"])]
            assert plane["step_s"][optimizer] == pytest.approx(expected, rel=1e-9)
        assert plane["eaten"][f"{plane['targets'][0]:.4f}"] == eaten_at_highest, corpus
    assert analysis.results["claims_agree"] == [frontier_left, frontier_left, True]
    for row in analysis.results["ns_overhead"]:  # (t_opt,Muon − t_opt,AdamW) / t_fwd_bwd = ns_s·(d/64) / (1 ms · b)
        assert row["measured"] == pytest.approx(ns_s * (row["width"] / 64) / (FWD_BWD_S * row["batch_tokens"] / 128))
        assert row["rule"] == pytest.approx(5 * row["width"] / row["batch_tokens"])
    assert all(path is not None and path.is_file() for _, path in analysis.figures)


def test_a_missing_batch_size_study_names_the_command_that_makes_it(tmp_path):
    p = {**pareto.PRESETS["cpu"], "batch_size_runs": str(tmp_path / "nothing")}
    with pytest.raises(FileNotFoundError, match="muonlab experiment batch-size"):
        analyse(Finished(p, _timing_runs(p, 1e-3), tmp_path))


def test_timing_another_model_than_the_batch_size_runs_is_refused(batch_size_folder, tmp_path):
    p = {**pareto.PRESETS["cpu"], "batch_size_runs": str(batch_size_folder), "widths": (64, 256)}
    with pytest.raises(ValueError, match="must include its d_model=128"):
        analyse(Finished(p, _timing_runs(p, 1e-3), tmp_path))
