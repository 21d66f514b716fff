"""The ``qk-clip`` study: its plan, and its analysis on tiny finished runs (a 2-layer d=64 model, 12 steps).

The analysis's numbers are checked against values read straight from the runs' metrics.jsonl here
(maxima over the ``max_logit/layer*`` keys, sums of ``qk_clip/heads_clipped``), not through the
study's own helpers.
"""

from __future__ import annotations

import json
from pathlib import Path

from muonlab.cli import main
from muonlab.experiments import command
from muonlab.experiments.registry import get_study
from muonlab.rundir import read_metrics

STEPS, TELEMETRY, TAU = 12, 4, 0.15


def _sets(corpus: Path) -> list[str]:
    return [f"corpus={corpus}", "tokenizer=byte", "model=tiny", "d_model=64", "n_layers=2", "n_heads=2",
            "seq_len=32", "batch_size=4", f"train_tokens={32 * 4 * STEPS}", "seeds=0,1", "lr=0.02",
            "adamw_lr=0.003", f"tau={TAU}", f"telemetry_every={TELEMETRY}", "compile=false", "device=cpu",
            "train.dtype=fp32", "train.threads=1"]


def test_the_study_plans_three_variants_per_seed_that_differ_only_where_they_should(tmp_path):
    study = get_study("qk-clip")
    planned = command.plan(study, "cpu", tmp_path, sets=["seeds=3,4", "tau=7", "adamw_lr=0.001"]).runs
    assert [p.name for p in planned] == ["muon-s3", "muon-qkclip-s3", "adamw-s3", "muon-s4", "muon-qkclip-s4",
                                         "adamw-s4"]
    by_name = {p.name: p.config for p in planned}
    assert [(c.optimizer, c.qk_clip_tau, c.lr) for c in list(by_name.values())[:3]] == [
        ("muon", 0.0, 2e-2), ("muon", 7.0, 2e-2), ("adamw", 0.0, 1e-3)]
    assert all(c.log_every == 1 and c.telemetry_every == 8 and c.weight_decay == 0.0 for c in by_name.values())
    assert {c.n_heads for c in by_name.values()} == {2} and by_name["muon-s4"].seed == 4


def _peak(rows: list[dict]) -> float:
    return max(v for row in rows for k, v in row.items() if k.startswith("max_logit/layer"))


def test_the_analysis_runs_on_tiny_finished_runs(tiny_corpus, muonlab_cache, tmp_path):
    out = tmp_path / "study"
    args = ["experiment", "qk-clip", "--out", str(out), "--workers", "1", "--no-progress"]
    assert main([*args, *(a for s in _sets(tiny_corpus) for a in ("--set", s))]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results["variants"]) == {"muon", "muon+qk-clip", "adamw"}
    for variant, prefix in (("muon", "muon-s"), ("muon+qk-clip", "muon-qkclip-s"), ("adamw", "adamw-s")):
        rows = {seed: read_metrics(out / f"{prefix}{seed}") for seed in (0, 1)}
        logged = {seed: [r["step"] for r in rs if "max_logit/layer1" in r] for seed, rs in rows.items()}
        expected = list(range(1, STEPS + 1)) if variant == "muon+qk-clip" else [1, 4, 8, 12]
        assert logged == {0: expected, 1: expected}, variant
        numbers = results["variants"][variant]
        assert numbers["peak_max_logit_max_over_seeds"] == max(_peak(rs) for rs in rows.values())
        assert numbers["final_val_loss"]["n"] == 2
    clipping = results["variants"]["muon+qk-clip"]["clipping"]
    for seed in (0, 1):
        rows = read_metrics(out / f"muon-qkclip-s{seed}")
        clipped = sum(r["qk_clip/heads_clipped"] for r in rows if "qk_clip/heads_clipped" in r)
        assert clipping[f"muon-qkclip-s{seed}"]["heads_clipped_total"] == clipped > 0
        assert clipping[f"muon-qkclip-s{seed}"]["peak_over_tau"] == _peak(rows) / TAU
    assert results["bounded"] is None or isinstance(results["bounded"], bool)
    assert results["no_loss_penalty"] is None  # two seeds: a loss claim needs three
    report = (out / "report.md").read_text()
    for png in ("max_logit.png", "loss.png", "qk_clip.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert "Paper claim vs small-scale result" in report and "| muon+qk-clip |" in report
