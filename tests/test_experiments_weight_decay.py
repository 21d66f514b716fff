"""The ``weight-decay`` study: its plan, its claim checks on synthetic run folders with known curves, and its
analysis end to end on tiny finished runs (a 2-layer d=32 model, 12 steps).

Expected numbers are written here from the curves the test builds, or read straight from the runs'
metrics.jsonl, never through the study's own helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muonlab.analysis.runs import Run
from muonlab.cli import main
from muonlab.experiments import command
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies._weight_decay_claims import decay_exponent
from muonlab.experiments.study import Finished
from muonlab.rundir import read_metrics

STEPS, TELEMETRY = 12, 4
ARMS = ("adamw", "muon-nowd", "muon-wd", "muon-wd-nonorm")


def test_the_study_plans_four_arms_per_seed_that_differ_only_where_they_should(tmp_path):
    study = get_study("weight-decay")
    planned = command.plan(study, "cpu", tmp_path, sets=["seeds=3,4", "weight_decay=0.05", "adamw_lr=0.004"]).runs
    assert [p.name for p in planned] == [f"{arm}-s{seed}" for seed in (3, 4) for arm in ARMS]
    by_name = {p.name: p.config for p in planned}
    assert [(c.optimizer, c.lr, c.weight_decay, c.decay_norms) for c in list(by_name.values())[:4]] == [
        ("adamw", 0.004, 0.05, True), ("muon", 0.003, 0.0, True), ("muon", 0.003, 0.05, True),
        ("muon", 0.003, 0.05, False)]
    for seed in (3, 4):
        configs = [by_name[f"{arm}-s{seed}"].to_dict() for arm in ARMS]
        differing = {k for c in configs for k in c if c[k] != configs[1][k]}
        assert differing == {"optimizer", "lr", "weight_decay", "decay_norms", "run_dir"}
        assert all(c["seed"] == seed for c in configs)
    config = by_name["muon-wd-s3"]
    assert config.tokenizer == "byte" and config.corpus == "python" and config.telemetry_every == 50
    assert config.total_steps() == 2400 and config.eval_every == 100 and config.schedule == "cosine"


def test_the_gpu_preset_has_the_cpu_presets_keys():
    presets = get_study("weight-decay").presets
    assert set(presets["gpu"]) == set(presets["cpu"]) and presets["gpu"]["device"] == "cuda"


# ---- claim checks on synthetic runs with known curves --------------------------------------------------------

TOTAL = 100
STEPS_LOGGED = range(0, TOTAL + 1, 10)


def _curves(arm: str, seed: int, t: int) -> dict[str, float]:
    """One metrics row: vanilla Muon leads early and loses late by construction; without weight decay the weight
    and output RMS keep growing, with it they level off at t = 50; undecayed gains give 1.2× the output RMS;
    Muon's layer-1 max logit is above AdamW's early."""
    noise = 0.001 * seed
    wd_loss = 2.0 + 1.0 / (1.0 + t / 10) + noise
    loss = {"muon-nowd": wd_loss + 0.05 * t / TOTAL - 0.03, "adamw": wd_loss + 0.1}.get(arm, wd_loss)
    growth = 1 + t / 50 if arm in ("muon-nowd", "adamw") else 1 + min(t, 50) / 50
    output = growth * (1.2 if arm == "muon-wd-nonorm" else 1.0) * (1 + noise)
    gain = 1.0 if arm in ("muon-nowd", "muon-wd-nonorm") else 0.9
    logits = (3.0, 1.0) if arm == "adamw" else (2.0, 4.0)
    return {"step": t, "tokens": 1000 * t, "val_loss": loss, "weight_rms/layers.*.attn.wq.weight": 0.02 * growth,
            "weight_rms/layers.*.mlp.w_up.weight": 0.03 * growth, "weight_rms/layers.*.attn_norm.weight": gain,
            "output_rms/layer0": output, "output_rms/layer1": 2 * output, "output_rms/max": 2 * output,
            "max_logit/layer0": logits[0] * (1 + t / TOTAL), "max_logit/layer1": logits[1] * (1 + t / TOTAL)}


def _synthetic_runs(seeds=(0, 1, 2)) -> dict[str, Run]:
    changes = {"adamw": ("adamw", 0.1, True), "muon-nowd": ("muon", 0.0, True), "muon-wd": ("muon", 0.1, True),
               "muon-wd-nonorm": ("muon", 0.1, False)}
    runs = {}
    for seed in seeds:
        for arm, (optimizer, wd, decay_norms) in changes.items():
            config = {"optimizer": optimizer, "weight_decay": wd, "decay_norms": decay_norms, "seed": seed,
                      "total_steps": TOTAL, "train_split_tokens": 400_000}
            runs[f"{arm}-s{seed}"] = Run(f"{arm}-s{seed}", Path("."), config,
                                         [_curves(arm, seed, t) for t in STEPS_LOGGED])
    return runs


def _analyse(runs: dict[str, Run], out: Path):
    study = get_study("weight-decay")
    return study.analyse(Finished(dict(study.presets["cpu"]), runs, out))


def test_the_claims_on_synthetic_runs_with_known_answers(tmp_path):
    analysis = _analyse(_synthetic_runs(), tmp_path)
    assert [c["agrees"] for c in analysis.results["claims"]] == [True, True, True, True, True]
    early, final, rms, norms, logits = analysis.results["claims"]
    assert "step 40 (36 %" in early["result"] and "-0.0100 nats" in early["by_how_much"]  # 0.05·0.4 − 0.03
    assert "paired per seed -0.0100 ± 0.0000 (3 seeds)" in early["by_how_much"]
    assert "+0.0200 nats" in final["by_how_much"] and "ahead from step 70" in final["by_how_much"]
    assert "in 3 of 3 quantities" in rms["result"] and "the other way in 0" in rms["result"]
    assert "+50.0 % vs +0.0 %, ends 1.500× (holds)" in rms["by_how_much"]  # 3/2 − 1 and 2/2 − 1
    assert "2 of 2 blocks" in norms["result"]
    assert "Muon ≥ AdamW in 1 of 2 layers" in logits["result"]
    arms = analysis.results["arms"]
    assert arms["muon-nowd"]["final_val_loss"]["mean"] == pytest.approx(2.0 + 1 / 11 + 0.001 + 0.02)
    assert arms["muon-wd"]["rms"]["output_rms/max"]["late_growth"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert arms["muon-nowd"]["rms"]["output_rms/max"]["late_growth"]["mean"] == pytest.approx(3 / 2 - 1)
    assert arms["adamw"]["early_max_logit"]["layer0"]["mean"] == pytest.approx(3.0 * 1.2)  # steps ≤ 20
    difference = analysis.results["muon_nowd_minus_wd"]
    assert difference["final"]["mean"] == pytest.approx(0.02) and difference["final"]["std"] == pytest.approx(0.0)
    assert difference["largest_vanilla_lead"] == {"step": 0, "mean": pytest.approx(-0.03), "std": pytest.approx(0)}
    for _, path in analysis.figures:
        assert path is not None and path.stat().st_size > 0


def test_reversed_curves_make_the_claims_disagree_and_two_seeds_cannot_tell(tmp_path):
    runs = _synthetic_runs()
    for name, run in runs.items():  # swap the two Muon arms' losses and RMS: weight decay now loses and grows
        if name.startswith("muon-nowd"):
            other = runs[name.replace("nowd", "wd")]
            run.rows, other.rows = other.rows, run.rows
    early, final, rms, *_ = _analyse(runs, tmp_path / "reversed").results["claims"]
    assert (early["agrees"], final["agrees"], rms["agrees"]) == (False, False, False)
    two = {n: r for n, r in _synthetic_runs().items() if not n.endswith("-s2")}
    assert {c["agrees"] for c in _analyse(two, tmp_path / "two").results["claims"]} == {None}


@pytest.mark.parametrize("lr, expected", [
    (lambda t: 0.01, 0.1 * 0.01 * 100),  # constant lr over 100 steps
    (lambda t: 0.01 * (1 - t / 100), 0.1 * 0.01 * 100 / 2),  # linear decay to 0: half of it
])
def test_decay_exponent_is_lambda_times_the_sum_of_the_lr_over_steps(lr, expected):
    rows = [{"step": t, "lr": lr(t)} for t in range(0, 101, 10)]
    run = Run("r", Path("."), {"weight_decay": 0.1}, rows)
    assert decay_exponent(run) == pytest.approx(expected, rel=1e-12)
    assert decay_exponent(Run("r", Path("."), {"weight_decay": 0.0}, rows)) == 0.0


# ---- end to end on tiny runs ---------------------------------------------------------------------------------


def _sets(corpus: Path) -> list[str]:
    return [f"corpus={corpus}", "tokenizer=byte", "model=tiny", "d_model=32", "n_layers=2", "n_heads=1",
            "seq_len=32", "batch_size=4", f"train_tokens={32 * 4 * STEPS}", "seeds=0,1,2", "evaluations=4",
            f"telemetry_every={TELEMETRY}", "compile=false", "device=cpu", "train.dtype=fp32", "train.threads=1"]


def test_the_analysis_runs_on_tiny_finished_runs(tiny_corpus, muonlab_cache, tmp_path):
    out = tmp_path / "study"
    args = ["experiment", "weight-decay", "--out", str(out), "--workers", "1", "--no-progress"]
    assert main([*args, *(a for s in _sets(tiny_corpus) for a in ("--set", s))]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results["arms"]) == list(ARMS)
    rows = {(arm, seed): read_metrics(out / f"{arm}-s{seed}") for arm in ARMS for seed in (0, 1, 2)}
    for (arm, seed), rs in rows.items():
        assert [r["step"] for r in rs if "output_rms/max" in r] == [1, 4, 8, 12], (arm, seed)
    key = "weight_rms/layers.*.attn.wq.weight"
    for arm in ARMS:
        finals = [rows[arm, s][-1][key] for s in (0, 1, 2)]
        assert results["arms"][arm]["rms"][key]["final"]["mean"] == pytest.approx(sum(finals) / 3, rel=1e-12)
        losses = [rows[arm, s][-1]["val_loss"] for s in (0, 1, 2)]
        assert results["arms"][arm]["final_val_loss"]["mean"] == pytest.approx(sum(losses) / 3, rel=1e-12)
    paired = [rows["muon-nowd", s][-1]["val_loss"] - rows["muon-wd", s][-1]["val_loss"] for s in (0, 1, 2)]
    assert results["muon_nowd_minus_wd"]["final"]["mean"] == pytest.approx(sum(paired) / 3, rel=1e-9, abs=1e-12)
    early = [max(r["max_logit/layer1"] for r in rows["adamw", s] if "max_logit/layer1" in r and r["step"] <= 2.4)
             for s in (0, 1, 2)]
    assert results["arms"]["adamw"]["early_max_logit"]["layer1"]["mean"] == pytest.approx(sum(early) / 3)
    assert len(results["claims"]) == 5
    report = (out / "report.md").read_text()
    for png in ("val_loss.png", "weight_rms.png", "norm_rms.png", "output_rms.png", "max_logit.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert "Paper claim vs small-scale result" in report and "| Muon (no wd) |" in report
