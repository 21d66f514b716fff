"""The ``qk-clip`` study's runs: Muon, Muon + QK-Clip and AdamW at one shared lr, and each optimizer's own
bracketed lr sweep (``muonlab.analysis.lr_sweep.bracket``).

At the shared lr ``lr`` (high, so that Muon's max logit grows past τ), every seed trains Muon, Muon +
QK-Clip at τ and AdamW. Each optimizer also gets its own bracketed sweep over its grid (first seed over
the grid, one step past an edge while the best is there, then every seed at the best cell and its
neighbours), so the max logits can be compared with each optimizer at its *own* best lr, not only at
an lr that is far from AdamW's optimum. Runs are named ``<variant>-lr<lr>-s<seed>`` (variant ``muon``,
``muon-qkclip`` or ``adamw``); a run that both a sweep and the shared arms ask for is trained once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ....analysis.lr_sweep import Bracket, SweepSpec, bracket, grid_value
from ....analysis.runs import Run
from ....train.config import TrainConfig
from ...study import PlannedRun

__all__ = ["OPTIMIZERS", "PRESETS", "brackets", "plan", "projected_plan", "run_name"]

OPTIMIZERS = ("muon", "adamw")

PRESETS: dict[str, dict[str, Any]] = {
    # Found with short probes: d=128, 2 layers of 2 heads (head_dim 64), shared lr 2e-2, no weight decay; unclipped
    # Muon's max logit climbs past 2τ there. Runs of 384 steps of 8 × 128 tokens (0.39 epochs of the English corpus).
    # 9 runs at the shared lr, and two bracketed sweeps of ≈ 4 + 2 × 3 runs each (more if a sweep extends): ≈ 27
    # runs. Measured: 29 runs, 11.8 min two at a time on a 2-core Intel Xeon (dry-run 13.3 min).
    "cpu": dict(
        seeds=(0, 1, 2), corpus="english", tokenizer="bpe", vocab_size=4096, model="demo", d_model=128, n_layers=2,
        n_heads=2, seq_len=128, batch_size=8, train_tokens=393_216, lr=2e-2, muon_lrs=(5e-3, 1e-2, 2e-2, 4e-2),
        adamw_lrs=(1.25e-3, 2.5e-3, 5e-3, 1e-2), lr_step=2.0, lr_caps=(1e-4, 0.32), weight_decay=0.0, tau=60.0,
        telemetry_every=8, compile=False, device="auto",
    ),
    # One GPU: the same recipe on a 6-layer d=384 model (head_dim 128; 10.6M non-embedding parameters, 3.1M in the
    # embedding and head at a 4,096-token BPE) on the Python corpus, 2.6M tokens a run (under one epoch, as on the
    # CPU). Its τ is the CPU preset's, not calibrated on this model: probe the unclipped peak first (--set tau=...).
    # Expected cost: not yet measured.
    "gpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="bpe", vocab_size=4096, model="small", d_model=384, n_layers=6,
        n_heads=3, seq_len=512, batch_size=32, train_tokens=2_621_440, lr=2e-2, muon_lrs=(5e-3, 1e-2, 2e-2, 4e-2),
        adamw_lrs=(7.5e-4, 1.5e-3, 3e-3, 6e-3), lr_step=2.0, lr_caps=(1e-4, 0.32), weight_decay=0.0, tau=60.0,
        telemetry_every=10, compile=True, device="cuda",
    ),
}


def run_name(variant: str, lr: float, seed: int) -> str:
    return f"{variant}-lr{grid_value(lr):g}-s{seed}"


def _config(p: Mapping[str, Any], optimizer: str, lr: float, seed: int, tau: float = 0.0) -> TrainConfig:
    """Every run logs a metrics row at every step (QK-Clip's per-step max logits and clip counts are all kept) and
    measures max logits and optimizer telemetry every ``telemetry_every`` steps."""
    steps = p["train_tokens"] // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], n_layers=p["n_layers"], n_heads=p["n_heads"], seq_len=p["seq_len"],
        batch_size=p["batch_size"], train_tokens=p["train_tokens"], optimizer=optimizer, lr=grid_value(lr),
        weight_decay=p["weight_decay"], schedule="cosine", warmup_steps=max(1, steps // 20),
        eval_every=max(1, steps // 8), eval_batches=8, log_every=1, telemetry_every=p["telemetry_every"],
        checkpoint_every=max(1, steps // 2), qk_clip_tau=tau, compile=p["compile"], device=p["device"], seed=seed,
    )


def _spec(p: Mapping[str, Any], optimizer: str) -> SweepSpec:
    low, high = p["lr_caps"]
    return SweepSpec(tuple(p[f"{optimizer}_lrs"]), tuple(p["seeds"]), p["lr_step"], low, high)


Losses = Callable[[str], Mapping[tuple[float, int], float]]
"""``losses(optimizer) -> {(lr, seed): final validation loss}`` of its finished runs without QK-Clip."""


def brackets(p: Mapping[str, Any], losses: Losses) -> dict[str, Bracket]:
    """Each optimizer's sweep state."""
    return {o: bracket(_spec(p, o), losses(o)) for o in OPTIMIZERS}


def _planned(p: Mapping[str, Any], losses: Losses) -> list[PlannedRun]:
    """The shared-lr arms (need nothing), then each sweep's cells (a first-round run needs nothing; a later one
    needs the optimizer's first round, the results that placed it)."""
    shared = p["lr"]
    runs = {}
    for s in p["seeds"]:
        runs[run_name("muon", shared, s)] = PlannedRun(run_name("muon", shared, s), _config(p, "muon", shared, s))
        runs[run_name("muon-qkclip", shared, s)] = PlannedRun(run_name("muon-qkclip", shared, s),
                                                              _config(p, "muon", shared, s, p["tau"]))
        runs[run_name("adamw", shared, s)] = PlannedRun(run_name("adamw", shared, s), _config(p, "adamw", shared, s))
    for o, state in brackets(p, losses).items():
        first_round = tuple(run_name(o, lr, p["seeds"][0]) for lr in p[f"{o}_lrs"])
        for lr, s in state.cells:
            name = run_name(o, lr, s)
            if name not in runs:
                needs = () if name in first_round else first_round
                runs[name] = PlannedRun(name, _config(p, o, lr, s), needs)
    return list(runs.values())


def losses_from(done: Mapping[str, Run]) -> Losses:
    """The sweeps' losses from finished runs (runs with QK-Clip on are no sweep's)."""
    def losses(optimizer: str) -> dict[tuple[float, int], float]:
        return {(grid_value(r.config["lr"]), int(r.config["seed"])): r.final("val_loss") for r in done.values()
                if r.config.get("optimizer") == optimizer and not float(r.config.get("qk_clip_tau") or 0.0)}
    return losses


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """The runs decided by the results in ``done`` (module docstring)."""
    return _planned(p, losses_from(done))


def projected_plan(p: Mapping[str, Any]) -> list[PlannedRun]:
    """The plan as it ends when each sweep's best first-seed cell is its grid's second-highest value and no sweep
    extends (what ``--dry-run`` costs; an extension adds a run per seed per step)."""
    def bowl(optimizer: str) -> dict[tuple[float, int], float]:
        grid = sorted(grid_value(lr) for lr in p[f"{optimizer}_lrs"])
        centre = grid[-2]
        return {(lr, s): abs(lr / centre - 1.0) for lr in grid for s in p["seeds"]}
    return _planned(p, bowl)
