"""The ``batch-size`` study: its plan (sweeps at both ends, then every batch at the log-interpolated lr) and its
analysis on made-up runs whose loss curves give known tokens-to-loss, token ratios and critical batch sizes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from muonlab.analysis.batch_size import smoothed_curve
from muonlab.analysis.runs import Run
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.batch_size import plan as batch_size
from muonlab.experiments.studies.batch_size.report import analyse
from muonlab.experiments.study import Finished

from batch_size_curves import BUDGET, KNEE, SLOPE, made_up_study, params, tau


def test_the_plan_brackets_each_optimizers_own_grid_at_both_ends_then_interpolates(tmp_path):
    p = params()
    planned = get_study("batch-size").planned(p, tmp_path, {})
    by_name = {r.name: r for r in planned}
    # Before any result: each (corpus, optimizer, end)'s first round, from that optimizer's own grid.
    assert len(planned) == 2 * 2 * 2 * 3
    assert "muon-english-b64-lr0.032-s0" in by_name and "adamw-python-b2-lr0.001-s0" in by_name
    assert "muon-english-b2-lr0.001-s0" not in by_name  # not on Muon's grid
    for run in planned:
        config = run.config
        assert config.train_tokens == p["train_tokens"] and config.tokenizer == "byte" and config.log_every == 1
        assert config.total_steps() * config.tokens_per_step() == p["train_tokens"]
        assert config.eval_every == config.total_steps()  # validation once, at the end (for the lr choice)
    runs = made_up_study(p)  # every sweep best at its grid's middle: no extension
    seeds = {batch: {int(n.rsplit("-s", 1)[1]) for n in runs if n.startswith(f"muon-python-b{batch}-")}
             for batch in p["batch_sizes"]}
    assert seeds == {2: {0, 1, 2}, 4: {0}, 8: {0}, 16: {0, 1, 2}, 32: {0}, 64: {0, 1, 2}}
    # Each end: the first seed over the grid, then the other seeds at the best lr and both neighbours.
    assert sorted(n for n in runs if n.startswith("adamw-english-b2-")) == sorted(
        f"adamw-english-b2-lr{lr:g}-s{s}" for lr in (1e-3, 2e-3, 4e-3) for s in (0, 1, 2))


def test_an_edge_optimum_extends_the_grid_and_the_middle_batches_interpolate():
    p = params()
    done: dict[str, Run] = {}
    # Muon at the largest batch better and better towards higher lrs, best at 6.4e-2 (beyond its grid's 3.2e-2).
    while new := [r for r in batch_size.plan(p, done) if r.name not in done]:
        for r in new:
            c = r.config
            best = 6.4e-2 if (c.optimizer, c.batch_size) == ("muon", 64) else 2e-3 if c.optimizer == "adamw" else 4e-3
            config = {"optimizer": c.optimizer, "corpus": c.corpus, "batch_size": c.batch_size, "lr": c.lr,
                      "seed": c.seed}
            done[r.name] = Run(r.name, Path(r.name), config,
                               [{"step": 10, "val_loss": 2.0 + 0.1 * abs(math.log2(c.lr / best))}])
    assert "muon-english-b64-lr0.064-s0" in done and "muon-english-b64-lr0.128-s0" in done  # extended twice
    assert "muon-english-b64-lr0.064-s2" in done  # every seed at the (now interior) best
    # B = 16 sequences: log2(16/2) / log2(64/2) = 3/5 of the way from 4e-3 to 6.4e-2 in log space: 4e-3 · 16^0.6
    assert "muon-english-b16-lr0.02111-s2" in done and abs(4e-3 * 16**0.6 - 0.02111) < 1e-5
    assert "adamw-english-b16-lr0.002-s1" in done  # AdamW's ends both at 2e-3


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
