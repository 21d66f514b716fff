"""The ``batch-size`` study: its plan (sweeps at both ends, then every batch at the log-interpolated lr) and its
analysis on made-up runs whose loss curves give known tokens-to-loss, token ratios and critical batch sizes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from muonlab.analysis.batch_size import smoothed_curve
from muonlab.analysis.runs import Run
from muonlab.experiments.estimate import stages
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.batch_size import plan as batch_size
from muonlab.experiments.studies.batch_size.report import analyse
from muonlab.experiments.study import Finished

from batch_size_curves import BUDGET, KNEE, SLOPE, made_up_study, params, tau


def test_the_plan_sweeps_both_ends_then_trains_every_batch_with_three_seeds_at_three_of_them(tmp_path):
    p = params()
    planned = get_study("batch-size").planned(p, tmp_path, {})
    by_name = {r.name: r for r in planned}
    assert len(planned) == 64
    stage = dict(zip(by_name, stages(planned)))
    sweeps = [n for n in by_name if "-lr" in n]
    assert len(sweeps) == 2 * 2 * 2 * 3 and all(stage[n] == 0 for n in sweeps)
    assert "muon-english-b64-lr0.008-s0" in by_name and "adamw-python-b2-lr0.0005-s0" in by_name
    for batch, seeds in ((2, {1, 2}), (4, {0}), (8, {0}), (16, {0, 1, 2}), (32, {0}), (64, {1, 2})):
        tuned = {int(n.rsplit("-s", 1)[1]) for n in by_name if n.startswith(f"muon-python-b{batch}-tuned-")}
        assert tuned == seeds, batch
    ends = {f"adamw-english-b2-lr{lr:g}-s0" for lr in p["lrs_smallest"]}
    assert set(by_name["adamw-english-b2-tuned-s1"].needs) == ends
    assert set(by_name["adamw-english-b16-tuned-s0"].needs) == ends | {f"adamw-english-b64-lr{lr:g}-s0"
                                                                       for lr in p["lrs_largest"]}
    for run in planned:
        config = run.config
        assert config.train_tokens == p["train_tokens"] and config.tokenizer == "byte" and config.log_every == 1
        assert config.total_steps() * config.tokens_per_step() == p["train_tokens"]
        assert config.eval_every == config.total_steps()  # validation once, at the end (for the lr choice)


def test_tuned_runs_get_the_learning_rate_interpolated_in_log_space_between_the_ends(tmp_path):
    p = params()
    study = get_study("batch-size")
    first = {r.name: r for r in study.planned(p, tmp_path, {})}
    assert first["muon-english-b2-tuned-s1"].config.lr == 1e-3  # provisional: each grid's middle
    done = {}
    for batch, lrs, best in ((2, p["lrs_smallest"], 1e-3), (64, p["lrs_largest"], 8e-3)):
        for lr in lrs:
            done[batch_size.sweep_name("muon", "english", batch, lr, 0)] = _val_run(2.0 if lr == best else 2.3)
    again = {r.name: r for r in study.planned(p, tmp_path, {}, done)}
    assert list(again) == list(first)  # names never depend on results
    assert again["muon-english-b2-tuned-s2"].config.lr == 1e-3
    assert again["muon-english-b64-tuned-s1"].config.lr == 8e-3
    # B = 16 sequences: log2(16/2) / log2(64/2) = 3/5 of the way from 1e-3 to 8e-3 in log space: 1e-3 · 8^0.6
    assert again["muon-english-b16-tuned-s0"].config.lr == pytest.approx(3.482e-3, rel=1e-4)
    assert again["adamw-english-b16-tuned-s0"].config.lr == first["adamw-english-b16-tuned-s0"].config.lr


def test_interpolated_lr_is_geometric_between_the_ends():
    assert batch_size.interpolated_lr(256, 256, 8192, 1e-3, 4e-3) == 1e-3
    assert batch_size.interpolated_lr(8192, 256, 8192, 1e-3, 4e-3) == 4e-3
    assert batch_size.interpolated_lr(2048, 512, 8192, 1e-3, 4e-3) == pytest.approx(2e-3, rel=1e-4)


@pytest.mark.parametrize("changes, message", [
    (dict(batch_sizes=(4, 2, 8)), "ascending"),
    (dict(batch_sizes=(2, 4)), "at least three"),
    (dict(train_tokens=1_000_000), "whole number of steps"),
    (dict(head_dim=48), "multiple of head_dim"),
])
def test_bad_parameters_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        batch_size.plan(params(**changes), {})


def test_the_smoothed_curve_is_read_at_the_tokens_before_each_batch_with_a_token_window():
    run = Run("r", Path("r"), {"tokens_per_step": 1024, "log_every": 1},
              [{"step": 1, "tokens": 1024, "loss": 4.0}, {"step": 2, "tokens": 2048, "loss": 2.0}])
    tokens, loss = smoothed_curve(run, ema_tokens=2048)  # decay 1 − 1024/2048 = 0.5
    assert tokens.tolist() == [0, 1024]
    assert loss.tolist() == pytest.approx([4.0, (0.25 * 4.0 + 0.5 * 2.0) / 0.75])
    assert smoothed_curve(run, ema_tokens=512)[1].tolist() == [4.0, 2.0]  # B ≥ W: no smoothing


def _val_run(val_loss: float) -> Run:
    return Run("sweep", Path("sweep"), {"optimizer": "muon", "seed": 0}, [{"step": 10, "val_loss": val_loss}])


def test_the_analysis_recovers_known_token_ratios_and_critical_batches(tmp_path):
    p = params(train_tokens=BUDGET, ema_tokens=1)  # no smoothing: the curves are noiseless
    analysis = analyse(Finished(p, made_up_study(p), tmp_path))
    batches = [b * p["seq_len"] for b in p["batch_sizes"]]
    for corpus in ("english", "python"):
        result = analysis.results["corpora"][corpus]
        assert result["batch_tokens"] == batches
        targets = result["targets"]
        assert targets == sorted(targets, reverse=True) and len(targets) == p["targets"]
        scale = 1.5 if corpus == "python" else 1.0
        for i, batch in enumerate(batches):
            seeds = (0, 1, 2) if batch in (256, 2048, 8192) else (0,)
            expected_ratio = tau("adamw", batch, 0, scale) / tau("muon", batch, 0, scale)
            for j, target in enumerate(targets):
                needed = [tau(o, batch, s, scale) * math.log(3 / (target - 1.5)) for o in KNEE for s in seeds]
                cell = result["token_ratio"][i][j]
                assert (cell is not None) == (max(needed) <= (BUDGET - batch) * (1 + 1e-9)), (corpus, batch, j)
                if corpus == "english" and j == len(targets) - 1 and batch > 2048:
                    assert cell is None  # AdamW's slow large-batch runs miss the lowest target
                if cell is not None:  # T is read off a line between two steps of a convex curve: ≤ 1 % off here
                    assert cell["mean"] == pytest.approx(expected_ratio, rel=1e-2)
                    assert cell["n"] == len(seeds)
        for optimizer in ("adamw", "muon"):
            fit = result["critical_batch"][optimizer][0]  # the highest target: every batch reached it
            assert fit["B_star"] == pytest.approx(KNEE[optimizer], rel=0.05)
            assert fit["m"] == pytest.approx(SLOPE[optimizer], abs=0.02)
            assert [b for b in result["token_optimal_batch"][optimizer] if b] == [KNEE[optimizer]] * len(targets)
    assert analysis.results["claims_agree"] == [True] * 11
    assert all(path is not None and path.is_file() for _, path in analysis.figures)
    assert "not reached (AdamW)" in dict(analysis.sections)["Token ratio R_L(B), english"]


def test_extra_tokens_are_the_per_seed_differences(tmp_path):
    p = params(train_tokens=BUDGET, ema_tokens=1)
    analysis = analyse(Finished(p, made_up_study(p), tmp_path))
    result = analysis.results["corpora"]["english"]
    target = result["targets"][0]
    per_seed = [(tau("adamw", 256, s, 1.0) - tau("muon", 256, s, 1.0)) * math.log(3 / (target - 1.5))
                for s in (0, 1, 2)]
    cell = result["extra_tokens"][0][0]
    assert cell["mean"] == pytest.approx(np.mean(per_seed), rel=2e-3)
    assert cell["std"] == pytest.approx(np.std(per_seed, ddof=1), rel=0.05)


def test_a_muon_that_needs_more_tokens_is_reported_as_disagreeing(tmp_path, monkeypatch):
    import batch_size_curves

    monkeypatch.setitem(batch_size_curves.SCALE, "adamw", 0.8)  # AdamW needs 0.8× Muon's tokens at every batch
    monkeypatch.setitem(batch_size_curves.KNEE, "muon", KNEE["adamw"])
    monkeypatch.setitem(batch_size_curves.SLOPE, "muon", SLOPE["adamw"])
    p = params(train_tokens=BUDGET, ema_tokens=1)
    analysis = analyse(Finished(p, made_up_study(p), tmp_path))
    ratio = analysis.results["corpora"]["english"]["token_ratio"][0][-1]
    assert ratio["mean"] == pytest.approx(0.8, rel=1e-2)
    agrees = analysis.results["claims_agree"]
    assert agrees[0] is False and agrees[2] is False  # fewer tokens; extra tokens growing with B
    assert agrees[-1] is False  # the advantage on both corpora


def test_token_optimal_batches_both_at_the_smallest_batch_tell_nothing(tmp_path, monkeypatch):
    import batch_size_curves

    for optimizer in ("adamw", "muon"):  # both knees below the grid: T_L(B) grows from the smallest batch on
        monkeypatch.setitem(batch_size_curves.KNEE, optimizer, 128)
    p = params(train_tokens=BUDGET, ema_tokens=1)
    analysis = analyse(Finished(p, made_up_study(p), tmp_path))
    result = analysis.results["corpora"]["english"]
    assert {b for o in ("adamw", "muon") for b in result["token_optimal_batch"][o] if b} == {256}
    agrees = analysis.results["claims_agree"]
    assert agrees[3] is None and agrees[8] is None  # the token-optimal claim of each corpus: the grid cannot tell
    assert "have both at 256: the grid cannot tell" in dict(analysis.sections)["Paper claim vs small-scale result"]
