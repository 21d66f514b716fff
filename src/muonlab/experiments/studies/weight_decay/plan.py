"""The ``weight-decay`` study's runs: AdamW, vanilla Muon, Muon with weight decay at a λ chosen by a bracketed
sweep at the full horizon, and Muon at that λ with the norm gains decayed too.

Weight decay leaves the RMSNorm gains alone by default (``decay_norms=False``): decaying the gains is its own
arm (App. D's claim), so that the "Muon + weight decay" arm measures decay on the matrices only. λ for Muon is
chosen like an lr (``muonlab.analysis.lr_sweep.bracket``): the first seed over ``wd_grid``, one ×``wd_step``
step past an edge while the best is there, then every seed at the best λ and its neighbours; the best mean
final validation loss over fully seeded cells is the choice. Runs: ``adamw-s<seed>``, ``muon-nowd-s<seed>``,
``muon-wd<λ>-s<seed>`` (the sweep's cells) and, once the sweep is done, ``muon-wd<λ>-norms-s<seed>`` at the
chosen λ (its runs need every sweep run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ....analysis.lr_sweep import Bracket, SweepSpec, bracket, grid_value
from ....analysis.runs import Run
from ....train.config import TrainConfig
from ...study import PlannedRun

__all__ = ["PRESETS", "lambda_sweep", "losses_from", "plan", "projected_plan", "run_name"]

PRESETS: dict[str, dict[str, Any]] = {
    # A 2-layer d=48 model, 55,536 non-embedding parameters, on 4.9M byte tokens of the Python corpus (88 per
    # parameter, ≈ 4.4× Chinchilla; 0.42 epochs of its 11.7M training tokens, so no data repeats) in 2,400 steps of
    # 16 × 128. Byte tokens keep the head small (257 × 48). The horizon: in the committed 2,400-step runs vanilla
    # Muon's hidden-matrix weight RMS was still growing (+5 to +8 % over the second half, output RMS +17 %), so
    # this horizon shows the growth Moonlight's Figure 2 argument rests on; a longer one would not fit a 2-core CPU.
    # lr 3e-3 for all: AdamW's best of {1e-3, 3e-3, 1e-2} in 800-step probes (seed 0, λ 0.1: 2.021, 1.825, 1.973);
    # Muon reuses it, as Moonlight does. Muon's λ: bracketed over 0.025–0.2 (the committed λ 0.5 was worse than no
    # decay); AdamW's λ 0.1. ≈ 19 runs (3 + 3 + 4 + 2 × 3 + 3) if the sweep does not extend. Measured: 21 runs,
    # 25.7 min two at a time on a 2-core Intel Xeon (dry-run 26.3 min).
    "cpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="byte", vocab_size=4096, model="tiny", d_model=48, n_layers=2,
        n_heads=1, seq_len=128, batch_size=16, train_tokens=4_915_200, lr=3e-3, adamw_lr=3e-3,
        adamw_weight_decay=0.1, wd_grid=(0.025, 0.05, 0.1, 0.2), wd_step=2.0, wd_caps=(0.003, 1.6), evaluations=24,
        telemetry_every=50, compile=False, device="auto",
    ),
    # One GPU: a 2-layer d=96 model (221,664 non-embedding parameters, 2 heads of 48) on 22.1M byte tokens (100
    # per parameter) in 1,200 steps of 72 × 256: more than the built-in Python corpus holds (11.7M), so the preset
    # names a user corpus (``--set corpus=<registered name>``) of ≥ 25M byte tokens, so no run repeats data.
    # Expected cost: not yet measured.
    "gpu": dict(
        seeds=(0, 1, 2), corpus="user-corpus", tokenizer="byte", vocab_size=4096, model="tiny", d_model=96,
        n_layers=2, n_heads=2, seq_len=256, batch_size=72, train_tokens=22_118_400, lr=3e-3, adamw_lr=3e-3,
        adamw_weight_decay=0.1, wd_grid=(0.025, 0.05, 0.1, 0.2), wd_step=2.0, wd_caps=(0.003, 1.6), evaluations=24,
        telemetry_every=25, compile=False, device="cuda",
    ),
}


def run_name(arm: str, seed: int, wd: float | None = None) -> str:
    """``adamw-s0``, ``muon-nowd-s0``, ``muon-wd0.1-s0`` (arm ``muon-wd``), ``muon-wd0.1-norms-s0``."""
    if arm == "muon-wd":
        return f"muon-wd{grid_value(wd):g}-s{seed}"
    if arm == "muon-wd-norms":
        return f"muon-wd{grid_value(wd):g}-norms-s{seed}"
    return f"{arm}-s{seed}"


def _base(p: Mapping[str, Any]) -> TrainConfig:
    """Cosine schedule to 0.1× with 5 % warmup, ``evaluations`` evaluations, telemetry (weight, output RMS, max
    logits, update RMS) every ``telemetry_every`` steps; the norm gains not decayed."""
    steps = p["train_tokens"] // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], n_layers=p["n_layers"], n_heads=p["n_heads"], seq_len=p["seq_len"],
        batch_size=p["batch_size"], train_tokens=p["train_tokens"], lr=p["lr"], schedule="cosine",
        warmup_steps=max(1, steps // 20), eval_every=max(1, steps // p["evaluations"]), eval_batches=8,
        log_every=max(1, min(10, p["telemetry_every"])), telemetry_every=p["telemetry_every"],
        checkpoint_every=max(1, steps // 4), decay_norms=False, compile=p["compile"], device=p["device"],
    )


def _spec(p: Mapping[str, Any]) -> SweepSpec:
    low, high = p["wd_caps"]
    return SweepSpec(tuple(p["wd_grid"]), tuple(p["seeds"]), p["wd_step"], low, high)


Losses = Callable[[], Mapping[tuple[float, int], float]]
"""``losses() -> {(λ, seed): final validation loss}`` of the finished Muon runs with decay on the matrices only."""


def lambda_sweep(p: Mapping[str, Any], losses: Losses) -> Bracket:
    """Where the λ sweep stands."""
    return bracket(_spec(p), losses())


def _planned(p: Mapping[str, Any], losses: Losses) -> list[PlannedRun]:
    base = _base(p)
    runs = []
    for seed in p["seeds"]:
        runs += [PlannedRun(run_name("adamw", seed), base.replace(optimizer="adamw", lr=p["adamw_lr"],
                                                                   weight_decay=p["adamw_weight_decay"], seed=seed)),
                 PlannedRun(run_name("muon-nowd", seed), base.replace(optimizer="muon", weight_decay=0.0, seed=seed))]
    state = lambda_sweep(p, losses)
    first_round = tuple(run_name("muon-wd", p["seeds"][0], wd) for wd in p["wd_grid"])
    sweep = []
    for wd, seed in state.cells:
        name = run_name("muon-wd", seed, wd)
        sweep.append(name)
        runs.append(PlannedRun(name, base.replace(optimizer="muon", weight_decay=grid_value(wd), seed=seed),
                               () if name in first_round else first_round))
    if state.complete:
        runs += [PlannedRun(run_name("muon-wd-norms", seed, state.best),
                            base.replace(optimizer="muon", weight_decay=state.best, decay_norms=True, seed=seed),
                            tuple(sweep)) for seed in p["seeds"]]
    return runs


def losses_from(done: Mapping[str, Run]) -> Losses:
    def losses() -> dict[tuple[float, int], float]:
        return {(grid_value(r.config["weight_decay"]), int(r.config["seed"])): r.final("val_loss")
                for r in done.values() if r.config.get("optimizer") == "muon" and r.config.get("weight_decay")
                and not r.config.get("decay_norms", True)}
    return losses


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """The runs decided by the results in ``done`` (module docstring)."""
    return _planned(p, losses_from(done))


def projected_plan(p: Mapping[str, Any]) -> list[PlannedRun]:
    """The plan as it ends when the sweep's best first-seed λ is its grid's second-highest value and the sweep does
    not extend (what ``--dry-run`` costs; an extension adds a run per seed per step)."""
    grid = sorted(grid_value(wd) for wd in p["wd_grid"])
    return _planned(p, lambda: {(wd, s): abs(wd / grid[-2] - 1.0) for wd in grid for s in p["seeds"]})
