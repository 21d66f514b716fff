"""The ``scaling`` study: its plan (budgets, stages, Muon at AdamW's best lr) and its analysis on made-up
run folders whose losses follow known power laws (the compute ratio must come back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from muonlab.analysis.runs import Run
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies import scaling
from muonlab.experiments.study import Finished

RATIO = 0.5  # Muon reaches AdamW's loss with half the compute in the made-up runs


def _params() -> dict:
    return dict(scaling.PRESETS["cpu"])


def test_budgets_are_tokens_per_non_embedding_parameter_in_whole_steps():
    p = _params()
    per_step = p["seq_len"] * p["batch_size"]
    for width in p["widths"]:
        n = scaling.non_embedding_params(p, width)
        tokens = scaling.train_tokens(p, width)
        assert tokens % per_step == 0 and abs(tokens - 20 * n) <= per_step / 2
    compute = [scaling.model_for(p, w).flops_per_token(p["seq_len"]) * scaling.train_tokens(p, w) for w in p["widths"]]
    assert compute[-1] / compute[0] >= 8  # the issue asks for ≥ 8× in compute


def test_muon_reuses_adamw_s_best_learning_rate_once_the_sweep_is_done(tmp_path):
    study = get_study("scaling")
    p = _params()
    first = {r.name: r for r in study.planned(p, tmp_path, {})}
    assert "muon-d48-lr0.005-s0" in first and "muon-d48-best-s0" not in first  # the sweep run is seed 0 there
    assert first["muon-d32-best-s0"].config.lr == 5e-3  # provisional
    assert set(first["muon-d32-best-s0"].needs) == {f"adamw-d32-lr{lr:g}-s0" for lr in p["adamw_lrs"]}
    assert first["adamw-d64-best-s2"].config.train_tokens == scaling.train_tokens(p, 64)
    done = {f"adamw-d32-lr{lr:g}-s0": _run("x", "adamw", 0, loss) for lr, loss in zip(p["adamw_lrs"], (3, 2, 1))}
    again = {r.name: r for r in study.planned(p, tmp_path, {}, done)}
    assert list(again) == list(first)
    assert again["muon-d32-best-s1"].config.lr == again["adamw-d32-best-s1"].config.lr == 1e-2
    assert again["muon-d32-best-s1"].config.weight_decay == p["weight_decay"]
    assert again["muon-d40-best-s1"].config.lr == 5e-3  # that width's sweep is not done


def _run(name: str, optimizer: str, seed: int, loss: float, entropy: float = 0.5, logit: float = 3.0) -> Run:
    rows = [{"step": 4, "max_logit/layer0": logit, "max_logit/layer1": logit},
            {"step": 100, "val_loss": loss, "tokens": 1e6, "svd_entropy/layers.0.attn.wq.weight": entropy,
             "svd_entropy/layers.0.attn.wk.weight": entropy, "svd_entropy/layers.0.mlp.w_up.weight": entropy}]
    return Run(name, Path(name), {"optimizer": optimizer, "seed": seed}, rows)


def test_the_analysis_recovers_a_known_compute_ratio(tmp_path):
    p = _params()
    runs = {}
    adamw_loss = {}
    for width in p["widths"]:
        c = scaling.model_for(p, width).flops_per_token(p["seq_len"]) * scaling.train_tokens(p, width)
        adamw_loss[width] = 5.0 * c ** -0.05
    for width in p["widths"]:
        c = scaling.model_for(p, width).flops_per_token(p["seq_len"]) * scaling.train_tokens(p, width)
        muon = 5.0 * (c / RATIO) ** -0.05  # Muon at C has AdamW's loss at C / RATIO
        for seed, noise in zip(p["seeds"], (-1e-4, 0.0, 1e-4)):
            for lr in p["adamw_lrs"]:
                extra = 0.0 if lr == 5e-3 else 0.3
                if seed == 0:
                    name = scaling.sweep_name("adamw", width, lr, 0)
                    runs[name] = _run(name, "adamw", 0, adamw_loss[width] + extra, entropy=0.6, logit=3.0)
                    if width == p["muon_sweep_width"]:
                        name = scaling.sweep_name("muon", width, lr, 0)
                        runs[name] = _run(name, "muon", 0, muon + extra, entropy=0.8, logit=5.0)
            if seed:
                name = scaling.best_name("adamw", width, seed)
                runs[name] = _run(name, "adamw", seed, adamw_loss[width] + noise, entropy=0.6, logit=3.0)
            if seed or width != p["muon_sweep_width"]:
                name = scaling.best_name("muon", width, seed)
                runs[name] = _run(name, "muon", seed, muon + noise, entropy=0.8, logit=5.0)
    analysis = scaling.analyse(Finished(p, runs, tmp_path))
    mid = analysis.results["compute_ratio_mid"]
    assert mid["point"] == pytest.approx(RATIO, rel=1e-2)
    assert mid["low"] <= RATIO * 1.02 and mid["high"] >= RATIO * 0.98 and mid["high"] - mid["low"] < 0.1
    assert analysis.results["fits"]["adamw"]["b"] == pytest.approx(-0.05, abs=1e-3)
    assert analysis.results["adamw_best_lr"] == [5e-3] * len(p["widths"])
    assert analysis.results["claims_agree"] == [True, True, True, True]
    own = analysis.results["muon_at_its_own_lr"]  # Muon's loss at C is AdamW's at C / RATIO
    assert own["muon_lr"] == 5e-3 and own["adamw_compute_multiple"] == pytest.approx(1 / RATIO, rel=1e-2)
    assert analysis.results["svd_entropy"]["muon_higher_fraction"] == 1.0
    assert all(path is not None and path.is_file() for _, path in analysis.figures)
