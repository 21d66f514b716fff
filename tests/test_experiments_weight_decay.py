"""The ``weight-decay`` study: its plan, its claim checks on synthetic run folders with known curves, and its
analysis end to end on tiny finished runs (a 2-layer d=32 model, 12 steps).

Expected numbers are written here from the curves the test builds, or read straight from the runs'
metrics.jsonl, never through the study's own helpers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from muonlab.analysis.runs import Run
from muonlab.cli import main
from muonlab.experiments import command
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.weight_decay.claims import decay_exponent
from muonlab.experiments.studies.weight_decay.plan import plan
from muonlab.experiments.study import Finished
from muonlab.rundir import read_metrics

STEPS, TELEMETRY = 12, 4
ARMS = ("adamw", "muon-nowd", "muon-wd", "muon-wd-norms")
GRID = (0.025, 0.05, 0.1, 0.2)


def test_the_study_plans_the_arms_and_the_first_round_of_the_lambda_sweep(tmp_path):
    study = get_study("weight-decay")
    planned = command.plan(study, "cpu", tmp_path, sets=["seeds=3,4", "adamw_weight_decay=0.05",
                                                         "adamw_lr=0.004"]).runs
    assert [p.name for p in planned] == ["adamw-s3", "muon-nowd-s3", "adamw-s4", "muon-nowd-s4",
                                         *(f"muon-wd{wd:g}-s3" for wd in GRID)]
    by_name = {p.name: p.config for p in planned}
    assert [(c.optimizer, c.lr, c.weight_decay, c.decay_norms) for c in list(by_name.values())[:2]] == [
        ("adamw", 0.004, 0.05, False), ("muon", 0.003, 0.0, False)]
    assert [(c.weight_decay, c.decay_norms) for n, c in by_name.items() if n.startswith("muon-wd")] == [
        (wd, False) for wd in GRID]  # the gains are not decayed by default
    config = by_name["muon-wd0.1-s3"]
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
    output = growth * (1.2 if arm == "muon-wd" else 1.0) * (1 + noise)
    gain = 1.0 if arm in ("muon-nowd", "muon-wd") else 0.9
    logits = (3.0, 1.0) if arm == "adamw" else (2.0, 4.0)
    return {"step": t, "tokens": 1000 * t, "val_loss": loss, "weight_rms/layers.*.attn.wq.weight": 0.02 * growth,
            "weight_rms/layers.*.mlp.w_up.weight": 0.03 * growth, "weight_rms/layers.*.attn_norm.weight": gain,
            "output_rms/layer0": output, "output_rms/layer1": 2 * output, "output_rms/max": 2 * output,
            "max_logit/layer0": logits[0] * (1 + t / TOTAL), "max_logit/layer1": logits[1] * (1 + t / TOTAL)}


def _synthetic_runs(seeds=(0, 1, 2)) -> dict[str, Run]:
    """Every run the plan asks for, grown to the end: the λ sweep's final losses a bowl around λ = 0.05 (so the
    sweep chooses 0.05, interior); the arms' curves from ``_curves`` (the chosen λ's runs are the ``muon-wd`` arm;
    ``muon-wd-norms`` decays the gains too)."""
    params = {**get_study("weight-decay").presets["cpu"], "seeds": seeds}
    runs: dict[str, Run] = {}
    while new := [r for r in plan(params, runs) if r.name not in runs]:
        for r in new:
            c = r.config
            arm = ("adamw" if c.optimizer == "adamw" else "muon-nowd" if c.weight_decay == 0
                   else "muon-wd-norms" if c.decay_norms else "muon-wd")
            rows = [_curves(arm, c.seed, t) for t in STEPS_LOGGED]
            if arm == "muon-wd" and c.weight_decay != 0.05:  # another cell of the sweep: worse by a bowl
                rows[-1] = {**rows[-1], "val_loss": rows[-1]["val_loss"] + 0.01 * abs(math.log2(c.weight_decay / 0.05))}
            config = {"optimizer": c.optimizer, "weight_decay": c.weight_decay, "decay_norms": c.decay_norms,
                      "seed": c.seed, "total_steps": TOTAL, "train_split_tokens": 400_000}
            runs[r.name] = Run(r.name, Path("."), config, rows)
    return runs


def _analyse(runs: dict[str, Run], out: Path, seeds=(0, 1, 2)):
    study = get_study("weight-decay")
    return study.analyse(Finished({**study.presets["cpu"], "seeds": seeds}, runs, out))


def test_the_claims_on_synthetic_runs_with_known_answers(tmp_path):
    analysis = _analyse(_synthetic_runs(), tmp_path)
    assert analysis.results["lambda"]["chosen"] == 0.05 and analysis.results["lambda"]["status"] == "interior"
    assert [c["agrees"] for c in analysis.results["claims"]] == [True, True, True, True, True]
    early, final, rms, norms, logits = analysis.results["claims"]
    assert "step 40 (36 %" in early["result"]
    assert "-0.0100 nats (95 % CI -0.0100 to -0.0100, paired over 3 seeds" in early["by_how_much"]  # 0.05·0.4 − 0.03
    assert "no wd − wd = +0.0200 nats" in final["by_how_much"]
    assert "in 3 of 3 quantities" in rms["result"] and "separated the other way in 0" in rms["result"]
    assert "attn.wq.weight: growth no wd − wd +0.5000" in rms["by_how_much"]  # 3/2 − 1 and 2/2 − 1
    assert "decayed − not decayed = -0.80" in norms["by_how_much"]  # 2 · 2 · (1 − 1.2) · (1 + 0.001 s)
    assert "Muon − AdamW = +1.2000" in logits["by_how_much"]  # 4 · 1.2 − 3 · 1.2 over steps ≤ 20
    arms = analysis.results["arms"]
    assert arms["muon-nowd"]["final_val_loss"]["mean"] == pytest.approx(2.0 + 1 / 11 + 0.001 + 0.02)
    assert arms["muon-wd"]["rms"]["output_rms/max"]["late_growth"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert arms["muon-nowd"]["rms"]["output_rms/max"]["late_growth"]["mean"] == pytest.approx(3 / 2 - 1)
    assert arms["adamw"]["early_max_logit"]["layer0"]["mean"] == pytest.approx(3.0 * 1.2)  # steps ≤ 20
    for _, path in analysis.figures:
        assert path is not None and path.stat().st_size > 0


def test_reversed_curves_make_the_claims_disagree_and_two_seeds_cannot_tell(tmp_path):
    runs = _synthetic_runs()
    for seed in (0, 1, 2):  # swap the two Muon arms' losses and RMS: weight decay now loses and grows
        nowd, wd = runs[f"muon-nowd-s{seed}"], runs[f"muon-wd0.05-s{seed}"]
        final_wd = wd.rows[-1]["val_loss"]
        nowd.rows, wd.rows = wd.rows, nowd.rows
        wd.rows[-1] = {**wd.rows[-1], "val_loss": min(wd.rows[-1]["val_loss"], final_wd)}  # 0.05 stays the choice
    early, final, rms, *_ = _analyse(runs, tmp_path / "reversed").results["claims"]
    assert (early["agrees"], rms["agrees"]) == (False, False)
    assert final["agrees"] is None  # its final loss was set equal to vanilla's to keep the sweep's choice
    two = _synthetic_runs(seeds=(0, 1))
    assert {c["agrees"] for c in _analyse(two, tmp_path / "two", seeds=(0, 1)).results["claims"]} == {None}


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
            "seq_len=32", "batch_size=4", f"train_tokens={32 * 4 * STEPS}", "seeds=0,1", "evaluations=4",
            "wd_grid=0.05,0.1,0.2", "wd_caps=0.05,0.2",
            f"telemetry_every={TELEMETRY}", "compile=false", "device=cpu", "train.dtype=fp32", "train.threads=1"]


def test_the_analysis_runs_on_tiny_finished_runs(tiny_corpus, muonlab_cache, tmp_path):
    out = tmp_path / "study"
    args = ["experiment", "weight-decay", "--out", str(out), "--workers", "1", "--no-progress"]
    assert main([*args, *(a for s in _sets(tiny_corpus) for a in ("--set", s))]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results["arms"]) == list(ARMS)
    wd = results["lambda"]["chosen"]
    folders = {"adamw": "adamw-s{}", "muon-nowd": "muon-nowd-s{}", "muon-wd": f"muon-wd{wd:g}-s{{}}",
               "muon-wd-norms": f"muon-wd{wd:g}-norms-s{{}}"}
    rows = {(arm, seed): read_metrics(out / folders[arm].format(seed)) for arm in ARMS for seed in (0, 1)}
    for (arm, seed), rs in rows.items():
        assert [r["step"] for r in rs if "output_rms/max" in r] == [1, 4, 8, 12], (arm, seed)
    key = "weight_rms/layers.*.attn.wq.weight"
    for arm in ARMS:
        finals = [rows[arm, s][-1][key] for s in (0, 1)]
        assert results["arms"][arm]["rms"][key]["final"]["mean"] == pytest.approx(sum(finals) / 2, rel=1e-12)
        losses = [rows[arm, s][-1]["val_loss"] for s in (0, 1)]
        assert results["arms"][arm]["final_val_loss"]["mean"] == pytest.approx(sum(losses) / 2, rel=1e-12)
    sweep = {float(n.split("muon-wd")[1].split("-s")[0]): read_metrics(out / n)[-1]["val_loss"]
             for n in (p.name for p in out.iterdir()) if n.startswith("muon-wd") and "norms" not in n
             and n.endswith("-s0")}
    assert wd == min(sweep, key=sweep.get) or results["lambda"]["status"] != "pending"
    assert len(results["claims"]) == 5 and {c["agrees"] for c in results["claims"]} == {None}  # two seeds
    report = (out / "report.md").read_text()
    for png in ("val_loss.png", "weight_rms.png", "norm_rms.png", "output_rms.png", "max_logit.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert "Paper claim vs small-scale result" in report and "| Muon (no wd) |" in report
