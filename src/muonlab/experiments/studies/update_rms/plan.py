"""The ``update-rms`` study's runs: part (a)'s target-RMS sweep with AdamW, part (b)'s three scale rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ....analysis.runs import Run
from ....train.config import TrainConfig
from ...study import PlannedRun

__all__ = ["PRESETS", "TABLE1_RULES", "plan", "table1_schedule_tokens"]

TABLE1_RULES = {"baseline": "min_side", "update-norm": "update_norm", "adjusted-lr": "moonlight"}
"""Table 1's three variants and the scale rule (``muonlab.optim.scaling``) that is each."""

PRESETS: dict[str, dict[str, Any]] = {
    # The demo's model (d=160, 4 layers) and data; lr 3e-3, wd 0.1: AdamW's best lr on the demo workload,
    # shared by every run as in Table 8. Part (a) SwiGLU (the demo's MLP): 192 steps of 16 × 256 tokens (0.78 epochs
    # of the English corpus); part (b) GELU [H, 4H]: 128 steps of a 640-step schedule. 27 runs, --workers 2:
    # 28 min 53 s on a 2-core AMD EPYC (the dry-run said 25 min 31 s).
    "cpu": dict(
        seeds=(0, 1, 2), corpus="english", tokenizer="bpe", vocab_size=4096, model="demo", d_model=160,
        seq_len=256, batch_size=16, lr=3e-3, weight_decay=0.1, rms_targets=(0.05, 0.1, 0.2, 0.4, 0.8),
        sweep_tokens=786_432, table1_tokens=524_288, table1_fraction=0.2, telemetry_every=8, compile=False,
        device="auto",
    ),
    # One GPU (H100/H200): the demo model at its own width (d=256, 3.2M non-embedding parameters; a 4,096-token BPE
    # keeps the embedding and head at 2.1M, below the rest) on the Python corpus, 16k-token steps, 100 steps a sweep
    # run (1.6M tokens, under one epoch of the corpus, as on the CPU) and 50 of a 250-step schedule for Table 1;
    # eager (compiling 27 short runs costs more than it saves). Expected cost: not yet measured.
    "gpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="bpe", vocab_size=4096, model="demo", d_model=0,
        seq_len=512, batch_size=32, lr=3e-3, weight_decay=0.1, rms_targets=(0.05, 0.1, 0.2, 0.4, 0.8),
        sweep_tokens=1_638_400, table1_tokens=819_200, table1_fraction=0.2, telemetry_every=10, compile=False,
        device="cuda",
    ),
}


def _base(p: Mapping[str, Any], train_tokens: int, schedule_tokens: int, mlp: str) -> TrainConfig:
    """The shared config: cosine schedule with 5 % warmup (of the schedule), 6 evaluations, 3 checkpoints."""
    tokens_per_step = p["seq_len"] * p["batch_size"]
    steps, schedule_steps = train_tokens // tokens_per_step, max(train_tokens, schedule_tokens) // tokens_per_step
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], mlp=mlp, seq_len=p["seq_len"], batch_size=p["batch_size"], train_tokens=train_tokens,
        schedule_tokens=schedule_tokens, lr=p["lr"], weight_decay=p["weight_decay"], schedule="cosine",
        warmup_steps=max(1, schedule_steps // 20), eval_every=max(1, steps // 6), eval_batches=8,
        log_every=max(1, min(10, steps // 20)), telemetry_every=p["telemetry_every"],
        checkpoint_every=max(1, steps // 3), compile=p["compile"], device=p["device"],
    )


def table1_schedule_tokens(p: Mapping[str, Any]) -> int:
    """The lr schedule of part (b): ``table1_tokens`` is ``table1_fraction`` of it."""
    if not 0 < p["table1_fraction"] <= 1:
        raise ValueError(f"table1_fraction must lie in (0, 1], got {p['table1_fraction']}")
    return round(p["table1_tokens"] / p["table1_fraction"])


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """Per seed: ``sweep-adamw-s<seed>``, ``sweep-rms<r>-s<seed>`` for each target r (part a), then
    ``table1-<variant>-s<seed>`` for baseline, update-norm and adjusted-lr (part b)."""
    sweep = _base(p, p["sweep_tokens"], 0, "swiglu")
    table1 = _base(p, p["table1_tokens"], table1_schedule_tokens(p), "gelu")
    runs = []
    for seed in p["seeds"]:
        runs.append(PlannedRun(f"sweep-adamw-s{seed}", sweep.replace(optimizer="adamw", seed=seed)))
        runs += [PlannedRun(f"sweep-rms{r:g}-s{seed}", sweep.replace(optimizer="muon", update_rms=r, seed=seed))
                 for r in p["rms_targets"]]
        runs += [PlannedRun(f"table1-{variant}-s{seed}", table1.replace(optimizer="muon", scale=rule, seed=seed))
                 for variant, rule in TABLE1_RULES.items()]
    return runs
