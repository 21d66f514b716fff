"""The ``sft`` study: its plan (bases of matched loss, each cell's bracketed fine-tuning lr sweep) and its paired
verdicts on made-up run folders with known answers (yes, no and cannot tell)."""

from __future__ import annotations

import math
from pathlib import Path

from muonlab.analysis.runs import Run
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.sft.plan import PRESETS, plan, sweep_name
from muonlab.experiments.studies.sft.report import analyse, claims
from muonlab.experiments.study import Finished

P = {**PRESETS["cpu"], "seeds": (0, 1, 2)}


def test_the_plan_pretrains_adamw_longer_and_sweeps_each_cell_from_its_first_seed(tmp_path):
    first = get_study("sft").planned(P, tmp_path, {})
    by_name = {p.name: p for p in first}
    assert [p.name for p in first][:6] == ["pre-adamw-s0", "pre-muon-s0", "pre-adamw-s1", "pre-muon-s1",
                                          "pre-adamw-s2", "pre-muon-s2"]
    assert by_name["pre-adamw-s0"].config.train_tokens == 2 * by_name["pre-muon-s0"].config.train_tokens
    assert len(first) == 6 + 4 * 3  # before any result: each cell's first round only
    sweep = by_name["sft-muon-adamw-lr0.001-s0"]
    assert sweep.config.task == "sft" and sweep.config.optimizer == "adamw" and sweep.config.lr == 1e-3
    assert sweep.config.init_from == str(tmp_path / "pre-muon-s0") and sweep.needs == ("pre-muon-s0",)
    assert sweep.config.schedule == "linear" and sweep.config.final_lr_ratio == 0.0 and sweep.config.warmup_steps == 0


def _run(name: str, loss: float, optimizer: str, seed: int) -> Run:
    rows = [{"step": 10, "val_loss": loss + 1.0, "tokens": 100.0}, {"step": 20, "val_loss": loss, "tokens": 200.0}]
    return Run(name, Path(name), {"optimizer": optimizer, "seed": seed, "model": "demo", "lr": 0.0}, rows)


def _grown(cell_loss, best_lr=3e-3) -> dict[str, Run]:
    """Every run the plan asks for, to the end: bases at 3.5 (AdamW 3.5 + 0.001); a cell's loss at lr
    ``cell_loss(cell, seed)`` + 0.05 · |log3(lr / best_lr)|."""
    runs: dict[str, Run] = {}
    while new := [r for r in plan(P, runs) if r.name not in runs]:
        for r in new:
            c = r.config
            if r.name.startswith("pre-"):
                runs[r.name] = _run(r.name, 3.5 + (0.001 if c.optimizer == "adamw" else 0.0) + 0.01 * c.seed,
                                    c.optimizer, c.seed)
                continue
            cell = tuple(r.name.split("-")[1:3])
            loss = cell_loss(cell, c.seed) + 0.05 * abs(math.log(c.lr / best_lr, 3))
            runs[r.name] = Run(r.name, Path(r.name), {"optimizer": c.optimizer, "seed": c.seed, "lr": c.lr,
                                                      "model": "demo"}, _run(r.name, loss, c.optimizer, c.seed).rows)
    return runs


def test_the_analysis_pairs_the_cells_at_their_chosen_lrs(tmp_path):
    base = {("adamw", "adamw"): 3.0, ("adamw", "muon"): 3.02, ("muon", "adamw"): 2.9, ("muon", "muon"): 2.5}
    runs = _grown(lambda cell, seed: base[cell] + 0.01 * seed)
    assert sweep_name("muon", "muon", 3e-3, 2) in runs and sweep_name("muon", "muon", 1e-2, 2) in runs
    analysis = analyse(Finished(P, runs, tmp_path))
    cells = analysis.results["cells"]
    assert cells["muon->muon"]["lr"] == 3e-3 and cells["muon->muon"]["status"] == "interior"
    assert cells["adamw->muon"]["by_seed"] == {"0": 3.02, "1": 3.03, "2": 3.04}
    # Muon/Muon 0.4 below the best other cell in every seed: yes. Mismatched: Muon SFT 0.02 worse in every seed,
    # interval [+0.02, +0.02] above −0.02: no advantage, agrees.
    assert analysis.results["claims_agree"] == [True, True]
    assert "AdamW base (2× Muon's tokens) − Muon base = +0.0010" in dict(analysis.sections)["Headline"]
    assert all(path is not None and path.is_file() for _, path in analysis.figures)


def test_the_claims_can_say_no_and_cannot_tell():
    seeds = (0, 1, 2)
    no = {("adamw", "adamw"): {s: 3.0 + 0.1 * s for s in seeds}, ("adamw", "muon"): {s: 2.9 + 0.1 * s for s in seeds},
          ("muon", "adamw"): {s: 2.8 + 0.1 * s for s in seeds}, ("muon", "muon"): {s: 2.85 + 0.1 * s for s in seeds}}
    # Muon/Muon 0.05 above muon→adamw in every seed; Muon SFT 0.1 below AdamW SFT on the AdamW base: an advantage.
    assert [c.agrees for c in claims(no)] == [False, False]
    mixed = dict(no)
    mixed[("muon", "muon")] = {0: 2.7, 1: 3.0, 2: 2.95}  # −0.1, +0.1, −0.05 against muon→adamw
    mixed[("adamw", "muon")] = {0: 3.05, 1: 3.0, 2: 3.25}  # +0.05, −0.1, +0.05: interval far below −0.02
    assert [c.agrees for c in claims(mixed)] == [None, None]
