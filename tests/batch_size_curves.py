"""Made-up ``batch-size`` study runs whose loss curves give known answers (shared by the batch-size and pareto tests).

Every run's training loss is ``1.5 + 3·exp(−t/τ)`` at ``t`` tokens trained before each step, so it reaches a
loss ``L`` after ``T_L = τ·ln(3 / (L − 1.5))`` tokens. ``τ`` is constant up to the optimizer's critical batch
``KNEE`` and grows as ``B^(1 + m)`` past it (steps ``∝ B^m``, App. F), AdamW's ``SCALE`` times Muon's below both.
"""

from __future__ import annotations

import math
from pathlib import Path

from muonlab.analysis.runs import Run
from muonlab.experiments.studies.batch_size import plan as batch_size

BUDGET = 262_144  # tokens a run in the made-up study (32 steps at the largest batch, 1,024 at the smallest)
KNEE = {"adamw": 1024, "muon": 2048}  # critical batch sizes (tokens) of the made-up runs
SLOPE = {"adamw": -0.2, "muon": -0.5}  # post-critical slopes m of log steps against log B
SCALE = {"adamw": 1.2, "muon": 1.0}  # below both knees AdamW needs 1.2× Muon's tokens


def params(**changes) -> dict:
    """The batch-size study's cpu preset on both corpora (the preset itself runs one), with ``changes``."""
    return {**batch_size.PRESETS["cpu"], "corpora": ("english", "python"), **changes}


def tau(optimizer: str, batch_tokens: int, seed: int, corpus_scale: float) -> float:
    """Tokens of the made-up loss curve's time constant: constant up to the knee, then ∝ B^(1 + m)."""
    grow = max(1.0, batch_tokens / KNEE[optimizer]) ** (1.0 + SLOPE[optimizer])
    return BUDGET / 12 * SCALE[optimizer] * grow * (1 + 0.01 * seed) * corpus_scale


def curve_run(name: str, config, corpus_scale: float, val_loss: float) -> Run:
    """Loss 1.5 + 3·exp(−t/τ) at t tokens trained before each step: T_L = τ·ln(3 / (L − 1.5))."""
    per_step = config.tokens_per_step()
    constant = tau(config.optimizer, per_step, config.seed, corpus_scale)
    rows = [{"step": s, "tokens": s * per_step, "loss": 1.5 + 3.0 * math.exp(-(s - 1) * per_step / constant)}
            for s in range(1, config.total_steps() + 1)]
    rows[-1]["val_loss"] = val_loss
    record = {"optimizer": config.optimizer, "seed": config.seed, "lr": config.lr, "tokens_per_step": per_step,
              "corpus": config.corpus, "batch_size": config.batch_size,
              "log_every": 1, "train_split_tokens": 4_000_000}
    return Run(name, Path(name), record, rows)


def made_up_study(p: dict) -> dict[str, Run]:
    """Every run the plan asks for, grown to the end: each end's sweep best at its grid's middle lr (final val
    loss 2.0, else 2.4); the Python runs 1.5× slower than the English."""
    runs: dict[str, Run] = {}
    while new := [r for r in batch_size.plan(p, runs) if r.name not in runs]:
        for planned in new:
            config = planned.config
            end = "smallest" if config.batch_size == p["batch_sizes"][0] else "largest"
            grid = p[f"{config.optimizer}_lrs_{end}"]
            best = config.batch_size not in (p["batch_sizes"][0], p["batch_sizes"][-1]) or config.lr == grid[1]
            runs[planned.name] = curve_run(planned.name, config, 1.5 if config.corpus == "python" else 1.0,
                                           2.0 if best else 2.4)
    return runs
