"""The ``qk-clip`` study: its plan (shared-lr arms, each optimizer's bracketed sweep), its claims on made-up run
folders with known answers (each can come out yes, no or cannot tell), and its analysis on tiny finished runs.

The made-up runs' numbers are chosen here (peaks, losses, the lrs the sweeps must choose), and the expected
verdicts follow from them by hand; the tiny runs' numbers are read straight from their metrics.jsonl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from muonlab.analysis.runs import Run
from muonlab.cli import main
from muonlab.experiments import command
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.qk_clip import STUDY
from muonlab.experiments.studies.qk_clip.plan import plan
from muonlab.experiments.studies.qk_clip.report import analyse
from muonlab.experiments.study import Finished
from muonlab.rundir import read_metrics

STEPS, TELEMETRY, TAU = 12, 4, 0.15
P = {**STUDY.presets["cpu"], "tau": 60.0}
BEST = {"muon": 1e-2, "adamw": 2.5e-3}  # the bowls' centres: each sweep must choose these


def test_the_plan_trains_three_arms_at_the_shared_lr_and_grows_each_sweep(tmp_path):
    planned = command.plan(get_study("qk-clip"), "cpu", tmp_path, sets=["seeds=3,4", "tau=7"]).runs
    c = {p.name: p.config for p in planned}
    assert [(c[n].optimizer, c[n].qk_clip_tau, c[n].lr) for n in ("muon-lr0.02-s3", "muon-qkclip-lr0.02-s3",
                                                                  "adamw-lr0.02-s3")] == [
        ("muon", 0.0, 2e-2), ("muon", 7.0, 2e-2), ("adamw", 0.0, 2e-2)]
    # Before any result: the shared arms and each sweep's first round (seed 3 over its grid), nothing else.
    assert sorted(n for n in c if n.startswith("adamw")) == sorted(
        ["adamw-lr0.02-s3", "adamw-lr0.02-s4"] + [f"adamw-lr{lr:g}-s3" for lr in (1.25e-3, 2.5e-3, 5e-3, 1e-2)])
    assert all(x.log_every == 1 and x.telemetry_every == 8 and x.weight_decay == 0.0 for x in c.values())


def _rows(loss: float, logit: float, tau: float = 0.0) -> list[dict]:
    rows = []
    for step in range(1, 17):
        row = {"step": step, "loss": loss + 1.0 / step}
        if step % 8 == 0 or tau:
            row.update({"max_logit/layer0": logit * step / 16, "max_logit/layer1": 0.5 * logit * step / 16})
        if tau:
            row.update({"qk_clip/heads_clipped": 1.0 if logit * step / 16 > tau else 0.0, "qk_clip/min_gamma": 0.9})
        if step % 8 == 0:
            row["val_loss"] = loss
        rows.append(row)
    return rows


def _made_up(logit, clip_peak, clip_loss) -> dict[str, Run]:
    """Every run the plan asks for, grown to the end: sweep losses a bowl around ``BEST`` (seed s adds 0.01·s);
    ``logit(optimizer, lr, seed)`` the peak max logit; the QK-Clip runs peak at ``clip_peak(seed)`` with final
    loss ``clip_loss(seed)``."""
    runs: dict[str, Run] = {}
    while new := [r for r in plan(P, runs) if r.name not in runs]:
        for r in new:
            o, lr, seed, tau = r.config.optimizer, r.config.lr, r.config.seed, r.config.qk_clip_tau
            loss = 3.0 + abs(math.log2(lr / BEST[o])) * 0.05 + 0.01 * seed
            rows = (_rows(clip_loss(seed), clip_peak(seed), tau) if tau else _rows(loss, logit(o, lr, seed)))
            config = {"optimizer": o, "lr": lr, "seed": seed, "qk_clip_tau": tau, "run_dir": f"/x/{r.name}"}
            runs[r.name] = Run(name=r.name, path=Path(f"/x/{r.name}"), config=config, rows=rows)
    return runs


def _claims(tmp_path, logit, clip_peak=lambda s: 61.0, clip_loss=lambda s: 3.4 + 0.01 * s):
    a = analyse(Finished(params=P, runs=_made_up(logit, clip_peak, clip_loss), out=tmp_path))
    by = {("caps" in c["paper"], "no loss" in c["paper"]): c for c in a.results["claims"]}
    return (by[(True, False)], by[(False, True)], by[(False, False)]), a


def test_known_answers_of_every_claim(tmp_path):
    # Muon peaks at 120 + seed at every lr, AdamW at 40 + seed: Muon higher by 80 in every seed.
    (bound, loss, logit), a = _claims(tmp_path, lambda o, lr, s: (120.0 if o == "muon" else 40.0) + s)
    assert a.results["chosen_lr"]["muon"] == {"lr": BEST["muon"], "status": "interior"}
    assert a.results["chosen_lr"]["adamw"] == {"lr": BEST["adamw"], "status": "interior"}
    assert bound["agrees"] is True  # 61 ≤ 60 · 1.1
    # Muon at the shared lr 2e-2 has loss 3.05 + 0.01 s; QK-Clip 3.40 + 0.01 s: a separated penalty of 0.35.
    assert loss["agrees"] is False and "+0.3500 nats" in loss["by_how_much"]
    assert logit["agrees"] is True and "Muon at 0.01 (interior) − AdamW at 0.0025 (interior) = +80.0000" in \
        logit["result"] and "at the shared lr 0.02" in logit["by_how_much"]


def test_the_opposite_and_the_undecided(tmp_path):
    # AdamW above Muon at their own lrs (but not at the shared lr): the claim says no, from the own-lr arms.
    def logit(o, lr, s):
        if o == "adamw":
            return 200.0 + s if lr == BEST["adamw"] else 10.0 + s
        return 120.0 + s
    (bound, loss, logit), _ = _claims(tmp_path / "no", logit, clip_peak=lambda s: 80.0,
                                      clip_loss=lambda s: 3.05 + 0.01 * s)
    assert bound["agrees"] is False  # 80 > 60 · 1.1: not bounded
    assert loss["agrees"] is True  # QK-Clip − Muon = 0 in every seed: interval [0, 0] below 0.02
    assert logit["agrees"] is False
    # Signs that disagree across seeds, and a clipped peak that Muon never needed: cannot tell.
    mixed = {0: 10.0, 1: -10.0, 2: 5.0}
    claims, _ = _claims(tmp_path / "mixed", lambda o, lr, s: 50.0 + (mixed[s] if o == "muon" else 0.0),
                        clip_peak=lambda s: 30.0, clip_loss=lambda s: 3.05 + (0.05, -0.05, 0.0)[s] + 0.01 * s)
    assert [c["agrees"] for c in claims] == [None, None, None]


def _sets(corpus: Path) -> list[str]:
    return [f"corpus={corpus}", "tokenizer=byte", "model=tiny", "d_model=64", "n_layers=2", "n_heads=2",
            "seq_len=32", "batch_size=4", f"train_tokens={32 * 4 * STEPS}", "seeds=0,1", "lr=0.02",
            "muon_lrs=0.01,0.02,0.04", "adamw_lrs=0.01,0.02,0.04", "lr_caps=0.01,0.04", f"tau={TAU}",
            f"telemetry_every={TELEMETRY}", "compile=false", "device=cpu", "train.dtype=fp32", "train.threads=1"]


def _peak(rows: list[dict]) -> float:
    return max(v for row in rows for k, v in row.items() if k.startswith("max_logit/layer"))


def test_the_analysis_runs_on_tiny_finished_runs(tiny_corpus, muonlab_cache, tmp_path):
    out = tmp_path / "study"
    args = ["experiment", "qk-clip", "--out", str(out), "--workers", "1", "--no-progress"]
    assert main([*args, *(a for s in _sets(tiny_corpus) for a in ("--set", s))]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert {"muon", "muon+qk-clip", "adamw", "muon@own", "adamw@own"} <= set(results["variants"])
    for variant, prefix in (("muon", "muon-lr0.02-s"), ("muon+qk-clip", "muon-qkclip-lr0.02-s")):
        rows = {seed: read_metrics(out / f"{prefix}{seed}") for seed in (0, 1)}
        logged = {seed: [r["step"] for r in rs if "max_logit/layer1" in r] for seed, rs in rows.items()}
        expected = list(range(1, STEPS + 1)) if variant == "muon+qk-clip" else [1, 4, 8, 12]
        assert logged == {0: expected, 1: expected}, variant
        assert results["variants"][variant]["peak_max_logit_max_over_seeds"] == max(_peak(r) for r in rows.values())
    clipping = results["variants"]["muon+qk-clip"]["clipping"]
    for seed in (0, 1):
        rows = read_metrics(out / f"muon-qkclip-lr0.02-s{seed}")
        clipped = sum(r["qk_clip/heads_clipped"] for r in rows if "qk_clip/heads_clipped" in r)
        assert clipping[f"muon-qkclip-lr0.02-s{seed}"]["heads_clipped_total"] == clipped > 0
    loss = next(c for c in results["claims"] if "no loss" in c["paper"])
    assert loss["agrees"] is None  # two seeds: nothing can be claimed
    report = (out / "report.md").read_text()
    for png in ("max_logit.png", "loss.png", "qk_clip.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert "Paper claim vs small-scale result" in report and "| muon+qk-clip (0.02) |" in report
