"""The ``scaling`` study's plan: compute-optimal budgets and batches, bracketed sweeps for both optimizers that
grow as results come in, and Muon at every lr AdamW's choice could take."""

from __future__ import annotations

from pathlib import Path

import pytest

from muonlab.analysis.lr_sweep import grid_value
from muonlab.analysis.runs import Run
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.scaling import plan as scaling


def _params() -> dict:
    return dict(scaling.PRESETS["cpu"])


def test_budgets_are_tokens_per_non_embedding_parameter_at_moonlight_s_compute_optimal_batch():
    p = _params()
    for width in p["widths"]:
        per_step = p["seq_len"] * scaling.batch_size(p, width)
        n = scaling.non_embedding_params(p, width)
        tokens = scaling.train_tokens(p, width)
        assert tokens % per_step == 0 and abs(tokens - 20 * n) <= per_step / 2
        compute = scaling.model_for(p, width).flops_per_token(p["seq_len"]) * 20 * n
        fitted = 0.0065202 * compute**0.4137915  # Moonlight Table 9, in tokens
        assert abs(per_step - fitted) <= p["seq_len"] / 2 or per_step == p["seq_len"]
    compute = [scaling.model_for(p, w).flops_per_token(p["seq_len"]) * scaling.train_tokens(p, w) for w in p["widths"]]
    assert compute[-1] / compute[0] >= 8 and len(p["widths"]) >= 4  # the issue: ≥ 4 widths spanning ≥ 8×
    smallest = min(p["widths"])
    assert scaling.train_tokens(p, smallest) // (p["seq_len"] * scaling.batch_size(p, smallest)) >= 1000


def _done(p: dict, loss_of) -> dict[str, Run]:
    """Drive the plan as the machinery does, with made-up final losses ``loss_of(optimizer, width, lr, seed)``."""
    done: dict[str, Run] = {}
    for _ in range(30):
        new = [r for r in scaling.plan(p, done) if r.name not in done and all(n in done for n in r.needs)]
        if not new:
            return done
        for r in new:
            c = r.config
            done[r.name] = Run(r.name, Path(r.name), c.to_dict(),
                               [{"step": 10, "val_loss": loss_of(c.optimizer, c.d_model, c.lr, c.seed)}])
    raise AssertionError("the plan never settled")


def _bowls(adamw_best: float, muon_best: float):
    import math
    return lambda o, w, lr, s: (math.log(lr / (adamw_best if o == "adamw" else muon_best)) ** 2 + 1.0 / w)


def test_each_sweep_extends_until_its_optimum_is_interior_and_muon_runs_at_adamw_s_cells():
    p = _params()
    done = _done(p, _bowls(adamw_best=2.5e-3, muon_best=0.04))  # Muon's optimum past its grid's top (2e-2)
    by_cell = {(r.optimizer, r.config["d_model"], grid_value(r.config["lr"]), r.config["seed"]) for r in done.values()}
    for w in p["widths"]:
        assert ("muon", w, 0.04, 0) in by_cell and ("muon", w, 0.08, 0) in by_cell  # extended twice, then bracketed
        assert {s for o, ww, lr, s in by_cell if (o, ww, lr) == ("muon", w, 0.04)} == {0, 1, 2}
        for lr in (1.25e-3, 2.5e-3, 5e-3):  # AdamW's choice and neighbours: every seed, for both optimizers
            for o in ("adamw", "muon"):
                assert {s for oo, ww, ll, s in by_cell if (oo, ww, ll) == (o, w, lr)} == {0, 1, 2}
        assert {s for o, ww, lr, s in by_cell if (o, ww, lr) == ("adamw", w, 1e-2)} == {0}


def test_the_plan_never_drops_a_run_and_every_need_is_planned_before_it(tmp_path):
    study = get_study("scaling")
    p = _params()
    loss_of = _bowls(adamw_best=5e-3, muon_best=1e-2)
    done: dict[str, Run] = {}
    seen: list[str] = []
    while True:
        planned = study.planned(p, tmp_path, {}, done)  # raises when a need is not planned before its run
        names = [r.name for r in planned]
        assert set(seen) <= set(names)
        seen = names
        new = [r for r in planned if r.name not in done and all(n in done for n in r.needs)]
        if not new:
            break
        for r in new:
            c = r.config
            done[r.name] = Run(r.name, Path(r.name), c.to_dict(),
                               [{"step": 10, "val_loss": loss_of(c.optimizer, c.d_model, c.lr, c.seed)}])
    assert len(done) == len(planned)


def test_the_projected_plan_is_the_plan_a_sweep_without_extension_ends_with(tmp_path):
    study = get_study("scaling")
    p = _params()
    projected = {r.name for r in study.projected(p, tmp_path, {})}
    adamw_centre, muon_centre = sorted(p["adamw_lrs"])[-2], sorted(p["muon_lrs"])[-2]
    done = _done(p, lambda o, w, lr, s: abs(lr / (adamw_centre if o == "adamw" else muon_centre) - 1.0))
    assert projected == set(done)
    first = {r.name for r in study.planned(p, tmp_path, {})}
    assert first < projected and len(first) == len(p["widths"]) * (len(p["adamw_lrs"]) + len(p["muon_lrs"]))


def test_a_run_s_learning_rate_is_the_grid_value_its_name_shows():
    p = _params()
    done = _done(p, _bowls(adamw_best=1.25e-3 / 4, muon_best=1e-2))  # AdamW extends downwards twice
    for run in done.values():
        assert run.name == scaling.run_name(run.optimizer, run.config["d_model"], run.config["lr"], run.config["seed"])
        assert run.config["lr"] == grid_value(run.config["lr"])
    assert any(r.config["lr"] == pytest.approx(3.125e-4) for r in done.values())


RATIO = 0.5  # at its own optimum, Muon reaches AdamW's loss with half the compute in the made-up runs


def _made_up_study(p: dict, lr_penalty: float = 0.05) -> dict[str, Run]:
    """Runs whose final losses are known: AdamW at its optimum 2.5e-3 follows L(C) = 5·C^-0.05, Muon at its
    optimum 1e-2 follows L(C / RATIO); off the optimum both lose ``lr_penalty``·log2(lr / optimum)²."""
    import math

    def compute(w):
        return scaling.model_for(p, w).flops_per_token(p["seq_len"]) * scaling.train_tokens(p, w)

    def loss(o, w, lr, s):
        best, c = (2.5e-3, compute(w)) if o == "adamw" else (1e-2, compute(w) / RATIO)
        return 5.0 * c**-0.05 + lr_penalty * math.log2(lr / best) ** 2 + 1e-4 * (s - 1)

    done = _done(p, loss)
    for run in done.values():
        muon = run.optimizer == "muon"
        run.rows = [{"step": 4, "max_logit/layer0": 6.0 if muon else 3.0, "max_logit/layer1": 5.0 if muon else 2.0},
                    {**run.rows[0], "step": 100, "svd_entropy/layers.0.attn.wq.weight": 0.9 if muon else 0.8,
                     "svd_entropy/layers.0.attn.wk.weight": 0.9 if muon else 0.8,
                     "svd_entropy/layers.0.mlp.w_up.weight": 0.95 if muon else 0.85}]
    return done


def test_the_analysis_recovers_the_known_compute_ratio_at_muon_s_own_lr_and_the_choices(tmp_path):
    from muonlab.experiments.study import Finished

    p = _params()
    analysis = get_study("scaling").analyse(Finished(p, _made_up_study(p), tmp_path))
    r = analysis.results
    for row in r["choices"]["per_width"]:
        assert row["adamw"]["lr"] == 2.5e-3 and row["muon"]["lr"] == 1e-2
        assert row["adamw"]["status"] == row["muon"]["status"] == "interior"
    own = r["compute_ratio"]["ratio_at_own_lr"]
    shared = r["compute_ratio"]["ratio_at_adamw_lr"]
    assert len(own) >= 3
    for point in own:
        assert point["point"] == pytest.approx(RATIO, rel=1e-3)
        assert point["low"] <= point["point"] <= point["high"]
    # two doublings below its optimum, Muon loses 0.05·4 = 0.2 nats: far more compute than at its own lr
    assert all(s["point"] > o["point"] for s, o in zip(shared, own))
    gaps = r["choices"]["per_width"][0]["muon_own_minus_muon_at_adamw_lr"]
    assert gaps["mean"] == pytest.approx(-0.2, abs=1e-9) and gaps["separated"]
    agrees = dict(zip(["ratio_shared", "ratio_own", "lr", "entropy", "logit"], r["claims_agree"]))
    assert agrees["ratio_own"] is True and agrees["lr"] is False and agrees["logit"] is True
    assert agrees["entropy"] is True and r["svd_entropy"]["groups"]["AttnQO"]["initial"] > 0.5
    for _, path in analysis.figures:
        assert path is None or path.stat().st_size > 0


def test_a_ratio_claim_says_cannot_tell_when_the_interval_covers_parity():
    from muonlab.experiments.studies.scaling.report import _ratio_claim

    ratio = {"at": [1.0, 2.0, 3.0], "x": [{"point": 0.9, "low": 0.7, "high": 1.2}] * 3}
    assert _ratio_claim("x", ratio, "label").agrees is None
    ratio["x"] = [{"point": 1.3, "low": 1.1, "high": 1.6}] * 3
    assert _ratio_claim("x", ratio, "label").agrees is False
    ratio["x"] = [{"point": 0.5, "low": 0.4, "high": 0.6}] * 3
    assert _ratio_claim("x", ratio, "label").agrees is True


def test_the_gpu_preset_asks_for_a_corpus_and_its_embeddings_are_smaller_than_the_rest():
    from muonlab.train.config import ConfigError

    p = dict(scaling.PRESETS["gpu"])
    with pytest.raises(ConfigError, match="--set corpus="):
        scaling.plan(p, {})
    for width in p["widths"]:
        model = scaling.model_for(p, width)
        hidden = model.num_params(include_embedding=False)
        assert model.num_params() - hidden < hidden


def test_every_width_is_validated_on_the_same_number_of_tokens_to_within_a_batch():
    p = _params()
    for r in scaling.projected_plan(p):
        batch_tokens = r.config.batch_size * r.config.seq_len
        assert abs(r.config.eval_batches * batch_tokens - p["eval_tokens"]) < batch_tokens
