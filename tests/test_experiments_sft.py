"""The ``sft`` study's plan (stages, init_from, the tuned learning rate) and its analysis on made-up run folders."""

from __future__ import annotations

from pathlib import Path

from muonlab.analysis.runs import Run
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies import sft

SETS = {"seeds": (0, 1, 2), "sft_lrs": (1e-4, 1e-3, 1e-2)}


def _params() -> dict:
    return {**sft.PRESETS["cpu"], **SETS}


def _run(name: str, val_loss: float, optimizer: str = "adamw", seed: int = 0) -> Run:
    rows = [{"step": 10, "val_loss": val_loss + 1.0, "tokens": 100.0},
            {"step": 20, "val_loss": val_loss, "tokens": 200.0}]
    return Run(name, Path(name), {"optimizer": optimizer, "seed": seed, "model": "demo"}, rows)


def test_the_plan_pretrains_sweeps_with_the_first_seed_then_tunes_the_others_at_the_best_lr(tmp_path):
    study = get_study("sft")
    params = _params()
    first = study.planned(params, tmp_path, {})
    names = [p.name for p in first]
    assert names[:6] == ["pre-adamw-s0", "pre-muon-s0", "pre-adamw-s1", "pre-muon-s1", "pre-adamw-s2", "pre-muon-s2"]
    assert len(first) == 6 + 4 * 3 + 4 * 2
    by_name = {p.name: p for p in first}
    sweep = by_name["sft-muon-adamw-lr0.001-s0"]
    assert sweep.config.task == "sft" and sweep.config.optimizer == "adamw" and sweep.config.lr == 1e-3
    assert sweep.config.init_from == str(tmp_path / "pre-muon-s0") and sweep.needs == ("pre-muon-s0",)
    assert sweep.config.schedule == "linear" and sweep.config.final_lr_ratio == 0.0 and sweep.config.warmup_steps == 0
    tuned = by_name["sft-muon-adamw-best-s2"]
    assert tuned.config.init_from == str(tmp_path / "pre-muon-s2") and tuned.config.seed == 2
    assert set(tuned.needs) == {"sft-muon-adamw-lr0.0001-s0", "sft-muon-adamw-lr0.001-s0", "sft-muon-adamw-lr0.01-s0",
                                "pre-muon-s2"}
    assert tuned.config.lr == 1e-3  # provisional: the sweep's middle value

    losses = {1e-4: 3.0, 1e-3: 2.5, 1e-2: 2.1}  # the largest lr wins this cell's sweep
    done = {sft.sweep_name("muon", "adamw", lr, 0): _run("x", v) for lr, v in losses.items()}
    again = {p.name: p for p in study.planned(params, tmp_path, {}, done)}
    assert [p for p in again] == names  # names do not depend on results
    assert again["sft-muon-adamw-best-s2"].config.lr == 1e-2
    assert again["sft-adamw-adamw-best-s2"].config.lr == 1e-3  # that cell's sweep is not done: still provisional


def test_the_analysis_compares_the_cells_at_their_best_learning_rates(tmp_path):
    params = {**_params(), "seeds": (0, 1, 2)}
    # Muon/Muon lowest by far at its best lr (1e-2); other cells best at 1e-3.
    base = {("adamw", "adamw"): 3.0, ("adamw", "muon"): 3.02, ("muon", "adamw"): 2.9, ("muon", "muon"): 2.5}
    runs = {}
    for seed, offset in zip((0, 1, 2), (-0.01, 0.0, 0.01)):
        runs[sft.pretrain_name("adamw", seed)] = _run(sft.pretrain_name("adamw", seed), 4.0 + offset, seed=seed)
        runs[sft.pretrain_name("muon", seed)] = _run(sft.pretrain_name("muon", seed), 3.8 + offset, "muon", seed)
    for (pre, tune), loss in base.items():
        best = 1e-2 if (pre, tune) == ("muon", "muon") else 1e-3
        for lr in params["sft_lrs"]:
            name = sft.sweep_name(pre, tune, lr, 0)
            runs[name] = _run(name, loss - 0.01 + (0.0 if lr == best else 0.5), tune)
        for seed, offset in ((1, 0.0), (2, 0.01)):
            runs[sft.best_name(pre, tune, seed)] = _run(sft.best_name(pre, tune, seed), loss + offset, tune, seed)
    from muonlab.experiments.study import Finished

    analysis = sft.analyse(Finished(params, runs, tmp_path))
    cells = analysis.results["cells"]
    assert cells["muon->muon"]["lr"] == 1e-2 and cells["adamw->adamw"]["lr"] == 1e-3
    assert abs(cells["muon->muon"]["mean"] - 2.5) < 1e-9 and abs(cells["adamw->muon"]["mean"] - 3.02) < 1e-9
    assert analysis.results["best_cell"] == "muon->muon"
    # Claim 1 holds (separated); claim 2: AdamW-pretrained Muon SFT is 0.02 worse, no advantage -> agrees.
    assert analysis.results["claims_agree"] == [True, True]
    assert all(path is not None and path.is_file() for _, path in analysis.figures)
