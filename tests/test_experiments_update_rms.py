"""The ``update-rms`` study: its plan, its claim checks on hand-made numbers, and its analysis on tiny
finished runs (a 2-layer d=64 model, a few steps).

The analysis's numbers are checked against values read here straight from the run folders — the
weight RMS from ``model.safetensors``, the update RMS and losses from ``metrics.jsonl`` — not
through the study's own helpers.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import safetensors.torch

from muonlab.cli import main
from muonlab.experiments import command
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.update_rms.claims import sweep_checks, table1_checks
from muonlab.rundir import read_config, read_metrics
from muonlab.rundir.checkpoint import latest_checkpoint

SWEEP_STEPS, TABLE1_STEPS, TOKENS_PER_STEP = 8, 4, 32 * 4


def test_the_plan_runs_each_variant_per_seed_with_one_difference_each(tmp_path):
    study = get_study("update-rms")
    planned = command.plan(study, "cpu", tmp_path, sets=["seeds=3,4", "rms_targets=0.1,0.4"]).runs
    names = ("sweep-adamw", "sweep-rms0.1", "sweep-rms0.4", "table1-baseline", "table1-update-norm",
             "table1-adjusted-lr")
    assert [p.name for p in planned] == [f"{name}-s{seed}" for seed in (3, 4) for name in names]
    c = {p.name: p.config for p in planned}
    assert [(c[f"sweep-{v}-s3"].optimizer, c[f"sweep-{v}-s3"].update_rms) for v in ("adamw", "rms0.1", "rms0.4")] == [
        ("adamw", 0.2), ("muon", 0.1), ("muon", 0.4)]
    assert [c[f"table1-{v}-s4"].scale for v in ("baseline", "update-norm", "adjusted-lr")] == [
        "min_side", "update_norm", "moonlight"]
    sweep, table1 = c["sweep-rms0.1-s3"], c["table1-baseline-s3"]
    assert (sweep.mlp, sweep.schedule_tokens, sweep.lr, sweep.weight_decay) == ("swiglu", 0, 3e-3, 0.1)
    assert (table1.mlp, table1.lr, table1.weight_decay) == ("gelu", 3e-3, 0.1)
    assert table1.schedule_tokens == 5 * table1.train_tokens  # stopped at 20 % of the schedule
    assert table1.warmup_steps == table1.schedule_steps() // 20  # 5 % of the schedule, not of the 20 % trained
    # Within a part and a seed the variants differ only in the optimizer settings under study.
    differ = {"optimizer", "update_rms", "scale", "run_dir"}
    for part in ("sweep", "table1"):
        configs = [cfg.to_dict() for name, cfg in c.items() if name.startswith(part) and name.endswith("-s3")]
        assert all({k for k in configs[0] if configs[0][k] != other[k]} <= differ for other in configs[1:]), part
    assert all(cfg.seed == 4 for name, cfg in c.items() if name.endswith("-s4"))


def _ms(values):
    values = list(values)
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def _variant(losses, query=(0.01, 0.011, 0.012), mlp=(0.02, 0.021, 0.022), kinds=("mlp.w_up",)):
    by_seed = {key: {str(i): v for i, v in enumerate(values)}
               for key, values in (("final_val_loss", losses), ("weight_rms_query", query), ("weight_rms_mlp", mlp))}
    return {"final_val_loss": _ms(losses), "final_val_loss_by_seed": by_seed["final_val_loss"], "by_seed": by_seed,
            "weight_rms": {"attn.wq": _ms(query), **{k: _ms(mlp) for k in kinds}}, "weight_rms_mlp": _ms(mlp),
            "update_rms_hidden": _ms([0.25, 0.26, 0.27]), "update_rms_adamw": _ms([0.3, 0.3, 0.3])}


def _sweep(best: str):
    losses = {"0.05": 3.50, "0.1": 3.40, "0.2": 3.32, "0.4": 3.31, "0.8": 3.55}
    losses[best] = 3.0
    sweep = {"adamw": _variant([3.70, 3.71, 3.69])}
    for i, (r, loss) in enumerate(losses.items()):
        scale = 2.0**i  # weight RMS doubling with each target
        sweep[r] = _variant([loss - 0.01, loss, loss + 0.01], query=[scale * q for q in (0.01, 0.0101, 0.0102)],
                            mlp=[scale * m for m in (0.02, 0.0201, 0.0202)])
    return sweep


@pytest.mark.parametrize("best, agrees", [("0.4", True), ("0.2", True), ("0.05", False), ("0.8", False)])
def test_the_u_shape_check_agrees_only_when_the_middle_targets_win(best, agrees):
    checks = sweep_checks(_sweep(best))
    assert len(checks) == 4
    u_shape, growth, vs_adamw, adamw_rms = checks
    assert u_shape.agrees is agrees and f"lowest at {float(best):g}" in u_shape.result
    assert growth.agrees is True and "16.0× from 0.05 to 0.8" in growth.by_how_much
    assert vs_adamw.agrees is True  # every target well below AdamW's 3.70
    assert adamw_rms.agrees is True and "hidden matrices 0.260" in adamw_rms.result


def test_the_u_shape_check_cannot_tell_within_the_spread():
    sweep = _sweep("0.4")
    sweep["0.8"] = _variant([2.9, 3.1, 3.3])  # 0.8 − 0.4 per seed: −0.09, +0.10, +0.29: the interval spans 0
    assert sweep_checks(sweep)[0].agrees is None


def test_a_small_difference_in_every_seed_is_separated_though_the_spreads_overlap():
    # The case: Adjusted LR worse than Baseline by ≈ 0.0135 in each of 3 seeds whose losses spread by 0.1.
    table1 = _table1(2.812, 2.789, 2.789)
    table1["baseline"] = _variant([2.70, 2.80, 2.90], mlp=(0.025, 0.025, 0.025), query=(0.035, 0.035, 0.035),
                                  kinds=("mlp.w_in", "mlp.w_out"))
    table1["adjusted-lr"] = _variant([2.7135, 2.812, 2.915], mlp=(0.049, 0.049, 0.049), query=(0.035, 0.035, 0.035),
                                     kinds=("mlp.w_in", "mlp.w_out"))
    loss = table1_checks(table1)[0]
    assert loss.agrees is False  # separated the wrong way: Adjusted LR higher in 3 of 3 seeds
    # per seed +0.0135, +0.012, +0.015: sd 0.0015, half-width 4.303 · 0.0015 / √3 = 0.0037
    assert "Adjusted LR − Baseline = +0.0135 nats (95 % CI +0.0098 to +0.0172" in loss.by_how_much


def _table1(base_loss, norm_loss, adjusted_loss, query=(0.035, 0.049, 0.0349), mlp=(0.025, 0.050, 0.049)):
    spread = (-0.002, 0.0, 0.002)
    return {v: _variant([loss + d for d in spread], query=[q * (1 + d) for d in spread],
                        mlp=[m * (1 + d) for d in spread], kinds=("mlp.w_in", "mlp.w_out"))
            for v, loss, q, m in zip(("baseline", "update-norm", "adjusted-lr"), (base_loss, norm_loss, adjusted_loss),
                                     query, mlp)}


def test_table1_checks_follow_the_paper_numbers_and_flag_the_opposite():
    loss, mlp, query = table1_checks(_table1(2.812, 2.789, 2.789))
    assert (loss.agrees, mlp.agrees, query.agrees) == (True, True, True)
    assert "w_in 2.00×" in mlp.by_how_much and "Update Norm / Baseline 1.40×" in query.by_how_much
    loss, mlp, query = table1_checks(_table1(2.789, 2.812, 2.789, query=(0.049, 0.035, 0.035),
                                             mlp=(0.050, 0.025, 0.049)))
    assert (loss.agrees, mlp.agrees, query.agrees) == (False, False, False)
    assert table1_checks({"baseline": _table1(1, 1, 1)["baseline"]}) == []


def _sets(corpus: Path) -> list[str]:
    return [f"corpus={corpus}", "tokenizer=byte", "model=tiny", "d_model=64", "seq_len=32", "batch_size=4",
            f"sweep_tokens={TOKENS_PER_STEP * SWEEP_STEPS}", f"table1_tokens={TOKENS_PER_STEP * TABLE1_STEPS}",
            "seeds=0,1", "rms_targets=0.1,0.2,0.4", "telemetry_every=2", "compile=false", "device=cpu",
            "train.threads=1"]


def _weight_rms(run_dir: Path, kind: str) -> float:
    weights = safetensors.torch.load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))
    values = [float(w.double().pow(2).mean().sqrt()) for name, w in weights.items()
              if name.startswith("layers.") and name.endswith(f".{kind}.weight")]
    assert len(values) == 2  # one per layer of the tiny model
    return sum(values) / len(values)


def _median_after_warmup(run_dir: Path, key: str) -> float:
    warmup = read_config(run_dir)["warmup_steps"]
    return statistics.median(r[key] for r in read_metrics(run_dir) if key in r and r["step"] > warmup)


def test_the_analysis_runs_on_tiny_finished_runs(tiny_corpus, muonlab_cache, tmp_path):
    out = tmp_path / "study"
    args = ["experiment", "update-rms", "--out", str(out), "--workers", "1", "--no-progress"]
    assert main([*args, *(a for s in _sets(tiny_corpus) for a in ("--set", s))]) == 0
    numbers = json.loads((out / "results.json").read_text())["results"]["numbers"]
    assert list(numbers["sweep"]) == ["adamw", "0.1", "0.2", "0.4"]
    assert list(numbers["table1"]) == ["baseline", "update-norm", "adjusted-lr"]
    for part, variant, run, kind in (("sweep", "0.4", "sweep-rms0.4", "attn.wq"),
                                     ("sweep", "adamw", "sweep-adamw", "mlp.w_down"),
                                     ("table1", "baseline", "table1-baseline", "mlp.w_out")):
        got = numbers[part][variant]
        want = statistics.fmean(_weight_rms(out / f"{run}-s{s}", kind.split(".")[1]) for s in (0, 1))
        assert got["weight_rms"][kind]["mean"] == pytest.approx(want, rel=1e-9)
        assert got["final_val_loss_by_seed"] == {
            str(s): [r["val_loss"] for r in read_metrics(out / f"{run}-s{s}") if "val_loss" in r][-1] for s in (0, 1)}
    muon = statistics.fmean(_median_after_warmup(out / f"sweep-rms0.4-s{s}", "update_rms/muon") for s in (0, 1))
    assert numbers["sweep"]["0.4"]["update_rms_muon"]["mean"] == pytest.approx(muon, rel=1e-9)
    # update_norm's update RMS is the target exactly (bf16 Newton–Schulz: to rounding); moonlight's is below it.
    assert numbers["table1"]["update-norm"]["update_rms_muon"]["mean"] == pytest.approx(0.2, rel=2e-3)
    assert numbers["table1"]["adjusted-lr"]["update_rms_muon"]["mean"] < 0.2
    config = read_config(out / "table1-baseline-s0")
    assert (config["total_steps"], config["schedule_steps"]) == (TABLE1_STEPS, 5 * TABLE1_STEPS)
    claims = json.loads((out / "results.json").read_text())["results"]["claims"]
    assert len(claims) == 7 and all(c["agrees"] is None for c in claims)  # two seeds: nothing can be claimed
    report = (out / "report.md").read_text()
    for png in ("sweep_loss.png", "sweep_weight_rms.png", "measured_update_rms.png", "table1.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert "Paper claims vs small-scale result" in report and "| Update Norm (`update_norm`) |" in report
