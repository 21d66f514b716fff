"""The ``demo`` study's runs: one per (seed, optimizer), the optimizer the only difference within a seed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ....analysis.runs import Run
from ....train.config import TrainConfig
from ...study import PlannedRun

__all__ = ["OPTIMIZERS", "PRESETS", "plan"]

OPTIMIZERS = ("adamw", "muon")

PRESETS: dict[str, dict[str, Any]] = {
    # The fixed workload of the demo, the same on every machine so its numbers stay comparable: 6 runs of
    # 96 steps of 16 × 256 tokens (0.39 epochs of the English corpus), eager (on a 2-core CPU compiling costs
    # more than it saves at this length); 3 min 20 s on an idle 2-core Intel Xeon (4 min 50 s from a fresh clone,
    # set-up included). lr: AdamW's best of {1.5e-3, 3e-3, 6e-3} on
    # this workload (final val loss 4.744 ± 0.026 and 4.725 ± 0.038 over 3 seeds, 5.018 with seed 0).
    "cpu": dict(
        seeds=(0, 1, 2), corpus="english", tokenizer="bpe", vocab_size=4096, model="demo", d_model=160,
        seq_len=256, batch_size=16, train_tokens=393_216, lr=3e-3, weight_decay=0.1, compile=False, device="auto",
    ),
    # One GPU: an 8-layer d=512 model (≈ 25M non-embedding parameters, 4.2M in the 8,192 × 512 embedding) on the
    # Python corpus (≈ 3.4M BPE tokens), 2.6M tokens a run (160 steps of 32 × 512, ≈ 0.8 epochs: no run repeats data,
    # as on the CPU).
    # Expected cost: not yet measured.
    "gpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="bpe", vocab_size=8192, model="8", d_model=0,
        seq_len=512, batch_size=32, train_tokens=2_621_440, lr=3e-3, weight_decay=0.1, compile=True, device="cuda",
    ),
}


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """One run per (seed, optimizer), named ``<optimizer>-s<seed>``; the optimizer is the only difference in a pair."""
    steps = p["train_tokens"] // (p["seq_len"] * p["batch_size"])
    base = TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], seq_len=p["seq_len"], batch_size=p["batch_size"], train_tokens=p["train_tokens"],
        lr=p["lr"], weight_decay=p["weight_decay"], schedule="cosine", warmup_steps=max(1, steps // 20),
        eval_every=max(1, steps // 6), eval_batches=8, log_every=10, telemetry_every=25,
        checkpoint_every=max(1, steps // 4), compile=p["compile"], device=p["device"],
    )
    return [PlannedRun(f"{optimizer}-s{seed}", base.replace(optimizer=optimizer, seed=seed))
            for seed in p["seeds"] for optimizer in OPTIMIZERS]
