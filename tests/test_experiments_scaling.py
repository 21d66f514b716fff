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
