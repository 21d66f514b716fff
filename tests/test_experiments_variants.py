"""The ``variants`` study: its plan (six arms, each bracketed in both models, paired by seed) and its verdicts on
made-up runs whose optimal learning rates and differences are known; and the whole study at tiny scale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from muonlab.analysis.runs import Run
from muonlab.cli import main
from muonlab.experiments.studies.variants import claims, report
from muonlab.experiments.studies.variants import plan as variants_plan
from muonlab.experiments.study import Finished
from muonlab.models import list_moe_presets

ARMS = ("muon", "perhead", "normuon", "cautious", "all3", "adamw")


def _params(**changes) -> dict:
    return {**variants_plan.PRESETS["cpu"], **changes}


def test_the_cpu_preset_pairs_six_arms_by_seed_on_a_dense_and_an_moe_model():
    p = _params()
    runs = variants_plan.projected_plan(p)
    assert {variants_plan.arm_of(r.config.to_dict()) for r in runs} == set(ARMS)
    models = {r.config.model for r in runs}
    assert len(models) == 2 and len(models & set(list_moe_presets())) == 1
    assert min(r.config.total_steps() for r in runs) >= 1000 and len(p["seeds"]) >= 3
    arm_fields = {"optimizer", "orthogonalize", "normuon", "cautious_wd", "lr", "run_dir"}
    for model in models:
        for seed in p["seeds"]:
            configs = [{k: v for k, v in r.config.to_dict().items() if k not in arm_fields} for r in runs
                       if r.config.model == model and r.config.seed == seed]
            assert configs and all(c == configs[0] for c in configs)  # the arms of a seed differ in the arm only
    by_arm = {(variants_plan.arm_of(r.config.to_dict()), r.config.model) for r in runs}
    assert len(by_arm) == len(ARMS) * 2


def test_an_arm_is_read_back_from_its_config():
    for arm, fields in variants_plan.ARMS.items():
        config = variants_plan.sweeps(_params()).config(arm, "tiny", 5e-3, 0).to_dict()
        assert variants_plan.arm_of(config) == arm and all(config[k] == v for k, v in fields.items())
    assert variants_plan.arm_of({"optimizer": "muon", "normuon": True, "orthogonalize": "per_head"}) is None


OPTIMUM = {"muon": 1e-2, "perhead": 1e-2, "normuon": 5e-3, "cautious": 1e-2, "all3": 5e-3, "adamw": 2.5e-3}


def _noise(arm: str, seed: int) -> float:
    """Seed noise that differs between arms (so paired intervals have a width), known to the test."""
    return 1e-3 * ((seed * 3 + ARMS.index(arm)) % 4)


def _loss_of(offsets: dict[str, float]):
    def loss(arm: str, model: str, lr: float, seed: int) -> float:
        base = 2.0 + (0.3 if model == "moe-tiny" else 0.0) + 0.05 * seed
        return base + offsets[arm] + 0.02 * math.log2(lr / OPTIMUM[arm]) ** 2 + _noise(arm, seed)
    return loss


def _done(p: dict, loss_of) -> dict[str, Run]:
    done: dict[str, Run] = {}
    for _ in range(40):
        new = [r for r in variants_plan.plan(p, done) if r.name not in done and all(n in done for n in r.needs)]
        if not new:
            return done
        for r in new:
            c = r.config
            arm = variants_plan.arm_of(c.to_dict())
            done[r.name] = Run(r.name, Path(r.name), c.to_dict(), [
                {"step": c.total_steps(), "val_loss": loss_of(arm, c.model, c.lr, c.seed)}])
    raise AssertionError("the plan never settled")


def _expected_difference(arm: str, offsets: dict[str, float], seeds) -> float:
    return offsets[arm] - offsets["muon"] + sum(_noise(arm, s) - _noise("muon", s) for s in seeds) / len(seeds)


def test_the_verdicts_recover_known_differences_at_each_arms_own_optimum(tmp_path):
    p = _params()
    offsets = {"muon": 0.0, "perhead": 0.0, "normuon": -0.05, "cautious": -0.02, "all3": -0.06, "adamw": 0.1}
    analysis = report.analyse(Finished(p, _done(p, _loss_of(offsets)), tmp_path))
    models = analysis.results["models"]
    assert set(models) == set(p["models"])
    for result in models.values():
        for arm, row in result["arms"].items():
            assert row["lr"] == OPTIMUM[arm] and row["status"] == "interior", arm
        for arm in ARMS[1:]:
            d = result["differences"][arm]
            assert d["paired"]["mean"] == pytest.approx(_expected_difference(arm, offsets, p["seeds"]), abs=1e-12)
            assert d["selection"]["point"] == pytest.approx(d["paired"]["mean"], abs=1e-12)
    assert analysis.results["all_interior"]
    assert analysis.results["claims_agree"] == [True, True, True]
    assert all(set(c["per_model"].values()) == {True} for c in analysis.results["claims"])
    report_text = "\n".join(text for _, text in analysis.sections)
    assert "| perhead | 0.01 |" in report_text and "Every chosen lr is interior" in report_text
    assert all(path.stat().st_size > 0 for _, path in analysis.figures)


def test_claims_that_the_runs_contradict_are_refused(tmp_path):
    # NorMuon worse, per-head 5 % worse (past the margin), cautious decay identical to Muon up to seed noise
    p = _params(models=("tiny",))
    offsets = {"muon": 0.0, "perhead": 0.1, "normuon": 0.05, "cautious": 0.0, "all3": 0.0, "adamw": 0.1}
    analysis = report.analyse(Finished(p, _done(p, _loss_of(offsets)), tmp_path))
    by_arm = {c.arm: v for c, v in zip(claims.CLAIMS, analysis.results["claims_agree"])}
    assert by_arm == {"normuon": False, "perhead": False, "cautious": None}
    assert "disagrees" in analysis.sections[0][1] and "**no**" in analysis.sections[0][1]


def _difference(mean, low, high, point=None, slow=None, shigh=None, n=3) -> dict:
    return {"paired": {"mean": mean, "low": low, "high": high, "n": n},
            "selection": {"point": mean if point is None else point, "low": low if slow is None else slow,
                          "high": high if shigh is None else shigh}}


@pytest.mark.parametrize("difference, kind, expected", [
    (_difference(-0.02, -0.03, -0.01), "lower", True),
    (_difference(0.02, 0.01, 0.03), "lower", False),
    (_difference(-0.02, -0.03, 0.01), "lower", None),
    (_difference(-0.02, -0.03, -0.01, shigh=0.001), "lower", None),  # the lr choice alone could undo it
    (_difference(-0.02, -0.03, -0.01, n=2), "lower", None),  # too few seeds
    (_difference(0.005, 0.001, 0.009), "not_worse", True),  # worse, but within 0.5 % of a loss of 2
    (_difference(0.02, 0.011, 0.03), "not_worse", False),
    (_difference(0.008, 0.001, 0.015), "not_worse", None),
])
def test_a_verdict_needs_both_intervals_on_one_side(difference, kind, expected):
    assert claims.verdict(difference, kind, muon_loss=2.0) is expected


# ---- the whole study at tiny scale ---------------------------------------------------------------------------


def test_the_study_runs_end_to_end_at_tiny_scale(tiny_corpus, muonlab_cache, tmp_path):
    out = tmp_path / "study"
    sets = [f"corpus={tiny_corpus}", "models=tiny", "d_model=32", "n_layers=1", "n_heads=4", "seq_len=16",
            "batch_size=2", "steps=6", "seeds=0,1", "muon_lrs=0.005,0.01,0.02", "adamw_lrs=0.0025,0.005,0.01",
            "lr_caps=0.0025,0.02", "eval_tokens=64", "compile=false", "device=cpu", "train.dtype=fp32",
            "train.threads=1"]
    args = ["experiment", "variants", "--out", str(out), "--workers", "1", "--no-progress"]
    assert main([*args, *(a for s in sets for a in ("--set", s))]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    arms = results["models"]["tiny"]["arms"]
    assert set(arms) == set(ARMS)
    for arm, row in arms.items():
        folder = out / variants_plan.run_name(arm, "tiny", row["lr"], 0)
        config = json.loads((folder / "config.json").read_text())
        assert variants_plan.arm_of(config) == arm and config["train_tokens"] == 6 * 16 * 2
    assert results["claims_agree"] == [None, None, None]  # two seeds: no verdict
    text = (out / "report.md").read_text()
    assert "Paper claims vs small-scale result" in text and "variants_differences.png" in text
