"""The ``sft`` study: its plan (AdamW's base searched to match Muon's loss, each cell's bracketed fine-tuning lr
sweep) and its paired verdicts on made-up run folders with known answers (yes, no and cannot tell)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from muonlab.analysis.runs import Run
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.sft.plan import ONE_SIDED_STEP, PRESETS, base_search, next_multiple, plan, sweep_name
from muonlab.experiments.studies.sft.report import analyse, claims
from muonlab.experiments.study import Finished

P = {**PRESETS["cpu"], "seeds": (0, 1, 2), "adamw_pretrain_multiple": 2.0}  # the search from 2×, as tested below


def test_the_plan_pretrains_adamw_longer_and_sweeps_each_cell_from_its_first_seed(tmp_path):
    first = get_study("sft").planned(P, tmp_path, {})
    by_name = {p.name: p for p in first}
    assert [p.name for p in first][:6] == ["pre-muon-s0", "pre-muon-s1", "pre-muon-s2", "pre-adamw-x2-s0",
                                          "pre-adamw-x2-s1", "pre-adamw-x2-s2"]
    assert by_name["pre-adamw-x2-s0"].config.train_tokens == 2 * by_name["pre-muon-s0"].config.train_tokens
    assert len(first) == 6 + 2 * 3  # before any result: the Muon-pretrained cells' first rounds only
    sweep = by_name["sft-muon-adamw-lr0.001-s0"]
    assert sweep.config.task == "sft" and sweep.config.optimizer == "adamw" and sweep.config.lr == 1e-3
    assert sweep.config.init_from == str(tmp_path / "pre-muon-s0") and sweep.needs == ("pre-muon-s0",)
    assert sweep.config.schedule == "linear" and sweep.config.final_lr_ratio == 0.0 and sweep.config.warmup_steps == 0


def _run(name: str, loss: float, optimizer: str, seed: int) -> Run:
    rows = [{"step": 10, "val_loss": loss + 1.0, "tokens": 100.0}, {"step": 20, "val_loss": loss, "tokens": 200.0}]
    return Run(name, Path(name), {"optimizer": optimizer, "seed": seed, "model": "demo", "lr": 0.0}, rows)


def _grown(cell_loss, best_lr=3e-3, adamw_base=lambda tokens_ratio: 3.501, params=P) -> dict[str, Run]:
    """Every run the plan asks for, to the end: Muon's bases at 3.5, AdamW's at ``adamw_base(its tokens / Muon's)``
    (each + 0.01 · seed); a cell's loss at lr ``cell_loss(cell, seed)`` + 0.05 · |log3(lr / best_lr)|."""
    runs: dict[str, Run] = {}
    while new := [r for r in plan(params, runs) if r.name not in runs]:
        for r in new:
            c = r.config
            if r.name.startswith("pre-"):
                ratio = c.train_tokens / params["pretrain_tokens"]
                loss = adamw_base(ratio) if c.optimizer == "adamw" else 3.5
                runs[r.name] = _run(r.name, loss + 0.01 * c.seed, c.optimizer, c.seed)
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
    headline = dict(analysis.sections)["Headline"]
    assert "chosen 2×: AdamW base − Muon base = +0.0010" in headline and "matched (mean gap within ±0.01" in headline
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


def test_next_multiple_steps_to_the_other_side_then_interpolates_in_log_tokens():
    assert ONE_SIDED_STEP == pytest.approx(2**0.5)  # multiples are rounded to 3 significant digits
    assert next_multiple({2.0: -0.105}, 0.01, 3) == (1.41, None)
    assert next_multiple({1.0: 0.3}, 0.01, 3) == (1.41, None)
    # gap +0.1 at 1.0, −0.3 at 2.0: the line in log(multiple) crosses 0 at 2^(1/4)
    assert next_multiple({1.0: 0.1, 2.0: -0.3}, 0.01, 3) == (1.19, None)
    assert next_multiple({2.0: -0.105, 1.41: 0.004}, 0.01, 3) == (None, 1.41)  # within the tolerance
    assert next_multiple({2.0: -0.2, 1.41: 0.1, 1.6: 0.05}, 0.01, 3) == (None, 1.6)  # out of tries: the closest


def test_a_base_search_finds_the_matching_multiple_and_the_adamw_cells_wait_for_it(tmp_path):
    # AdamW's base loss falls 0.3 nats per doubling of its tokens and equals Muon's (3.5) at 1.5× Muon's tokens
    def adamw_base(ratio):
        return 3.5 - 0.3 * math.log2(ratio / 1.5)
    runs = {}
    for name in ("pre-muon-s0", "pre-muon-s1", "pre-muon-s2", "pre-adamw-x2-s0", "pre-adamw-x2-s1", "pre-adamw-x2-s2"):
        seed, optimizer = int(name[-1]), name.split("-")[1]
        runs[name] = _run(name, (adamw_base(2.0) if optimizer == "adamw" else 3.5) + 0.01 * seed, optimizer, seed)
    assert base_search(P, runs) == ([2.0, 1.41], None)
    waiting = {r.name: r for r in plan(P, runs)}
    assert not any(n.startswith("sft-adamw-") for n in waiting)  # the AdamW-pretrained cells wait for the search
    assert set(waiting["pre-adamw-x1.41-s0"].needs) == set(runs)
    done = _grown(lambda cell, seed: 3.0, adamw_base=adamw_base)
    multiples, chosen = base_search(P, done)
    assert multiples == [2.0, 1.41, 1.5] and chosen == 1.5  # 1.41 falls short (+0.026): interpolated to 1.5
    tuned = {r.name: r for r in plan(P, done)}["sft-adamw-muon-lr0.003-s1"]
    assert tuned.config.init_from == "pre-adamw-x1.5-s1"  # the planned run's name; the study makes it its folder
    headline = dict(analyse(Finished(P, done, tmp_path)).sections)["Headline"]
    assert "chosen 1.5×" in headline and "matched" in headline and "not matched" not in headline


def test_a_base_search_out_of_tries_says_the_bases_are_not_matched(tmp_path):
    params = {**P, "base_tries": 2}
    done = _grown(lambda cell, seed: 3.0, adamw_base=lambda ratio: 3.2 - 0.01 * ratio, params=params)  # always below
    assert base_search(params, done) == ([2.0, 1.41], 1.41)
    headline = dict(analyse(Finished(params, done, tmp_path)).sections)["Headline"]
    assert "not matched within ±0.01 nats after 2 multiples" in headline
