"""The ``batch-size`` study's runs: the lr sweeps at both batch ends, then every batch at the interpolated lr
(the study's docstring has the protocol)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ....analysis.runs import Run
from ....train.config import TrainConfig
from ...study import PlannedRun

OPTIMIZERS = ("adamw", "muon")
WARMUP_FRACTION = 0.05
"""Linear warmup over this fraction of a run's steps, then cosine decay to 0.1× (Essential AI §2.2)."""

PRESETS: dict[str, dict[str, Any]] = {
    # 4 layers, d=128 (0.92M parameters), byte tokens, 128-token sequences; batches of 256–8,192 tokens (32×);
    # 1.18M tokens a run (0.29 epochs of the English corpus's 4.02M training bytes): 64 runs, 75.5M tokens and
    # 4.6e14 training FLOPs (+ 1.5e14 of Newton–Schulz) in all: 75 min 41 s two at a time on a 2-core AMD EPYC
    # (the dry-run said 66 min).
    "cpu": dict(
        seeds=(0, 1, 2), corpora=("english", "python"), batch_sizes=(2, 4, 8, 16, 32, 64), seq_len=128,
        d_model=128, n_layers=4, head_dim=32, train_tokens=1_179_648, lrs_smallest=(5e-4, 1e-3, 2e-3),
        lrs_largest=(2e-3, 4e-3, 8e-3), weight_decay=0.1, ema_tokens=4096, targets=5, token_optimal_margin=0.03,
        eval_tokens=65_536, compile=False, device="auto",
    ),
    # One GPU: d=256, 256-token sequences, batches of 2,048–65,536 tokens (32×), 2.6M tokens a run (0.65 epochs
    # of the English corpus): 32,480 steps in all, sized at ≈ 10 ms a step for ≈ 7 minutes (not yet measured on a GPU).
    "gpu": dict(
        seeds=(0, 1, 2), corpora=("english", "python"), batch_sizes=(8, 16, 32, 64, 128, 256), seq_len=256,
        d_model=256, n_layers=4, head_dim=64, train_tokens=2_621_440, lrs_smallest=(5e-4, 1e-3, 2e-3),
        lrs_largest=(2e-3, 4e-3, 8e-3), weight_decay=0.1, ema_tokens=16_384, targets=5, token_optimal_margin=0.03,
        eval_tokens=262_144, compile=False, device="cuda",
    ),
}


def sweep_name(optimizer: str, corpus: str, batch: int, lr: float, seed: int) -> str:
    return f"{optimizer}-{corpus}-b{batch}-lr{lr:g}-s{seed}"


def tuned_name(optimizer: str, corpus: str, batch: int, seed: int) -> str:
    """A run at the batch's interpolated learning rate (named without it: names never depend on results)."""
    return f"{optimizer}-{corpus}-b{batch}-tuned-s{seed}"


def seeds_at(p: Mapping[str, Any], batch: int) -> tuple[int, ...]:
    """Every seed at the smallest, the middle and the largest batch; the first seed elsewhere."""
    batches = p["batch_sizes"]
    return tuple(p["seeds"]) if batch in (batches[0], batches[len(batches) // 2], batches[-1]) else (p["seeds"][0],)


def interpolated_lr(batch: float, smallest: float, largest: float, lr_smallest: float, lr_largest: float) -> float:
    """The learning rate at ``batch``, linear in log lr against log batch between the two tuned ends:
    ``log lr = log lr_s + (log B − log B_s)/(log B_l − log B_s) · (log lr_l − log lr_s)``, to 4 significant
    digits (so the ends give their tuned values exactly)."""
    t = (math.log(batch) - math.log(smallest)) / (math.log(largest) - math.log(smallest))
    return float(f"{math.exp(math.log(lr_smallest) + t * (math.log(lr_largest) - math.log(lr_smallest))):.4g}")


def _ends(p: Mapping[str, Any]) -> tuple[tuple[int, tuple[float, ...]], tuple[int, tuple[float, ...]]]:
    return (p["batch_sizes"][0], p["lrs_smallest"]), (p["batch_sizes"][-1], p["lrs_largest"])


def best_lr(p: Mapping[str, Any], done: Mapping[str, Run], optimizer: str, corpus: str, batch: int,
            lrs: tuple[float, ...]) -> float | None:
    """The sweep's learning rate at ``batch`` with the lowest final validation loss (first seed), or None while
    a sweep run is unfinished."""
    names = {lr: sweep_name(optimizer, corpus, batch, lr, p["seeds"][0]) for lr in lrs}
    if not all(n in done for n in names.values()):
        return None
    return min(lrs, key=lambda lr: done[names[lr]].final("val_loss"))


def tuned_lrs(p: Mapping[str, Any], done: Mapping[str, Run], optimizer: str, corpus: str) -> tuple[float, float]:
    """The best learning rates at the smallest and the largest batch (each end's grid middle until its sweep is
    done: the provisional value of a run that needs it)."""
    ends = [best_lr(p, done, optimizer, corpus, batch, lrs) for batch, lrs in _ends(p)]
    return tuple(lr if lr is not None else lrs[len(lrs) // 2] for lr, (_, lrs) in zip(ends, _ends(p)))


def _check(p: Mapping[str, Any]) -> None:
    batches = list(p["batch_sizes"])
    if len(batches) < 3 or batches != sorted(set(batches)):
        raise ValueError(f"batch_sizes={tuple(batches)} must hold at least three distinct sizes in ascending order "
                         "(the App. F fit has three parameters)")
    uneven = [b for b in batches if p["train_tokens"] % (b * p["seq_len"])]
    if uneven:
        raise ValueError(f"train_tokens={p['train_tokens']} is not a whole number of steps at batch sizes {uneven} "
                         f"(× seq_len={p['seq_len']}); every run must train the same tokens")
    if p["d_model"] % p["head_dim"]:
        raise ValueError(f"d_model={p['d_model']} is not a multiple of head_dim={p['head_dim']}")


def _config(p: Mapping[str, Any], corpus: str, optimizer: str, batch: int, lr: float, seed: int) -> TrainConfig:
    per_step = batch * p["seq_len"]
    steps = p["train_tokens"] // per_step
    return TrainConfig(
        corpus=corpus, tokenizer="byte", model="demo", d_model=p["d_model"], n_layers=p["n_layers"],
        n_heads=p["d_model"] // p["head_dim"], seq_len=p["seq_len"], batch_size=batch,
        train_tokens=p["train_tokens"], optimizer=optimizer, lr=lr, weight_decay=p["weight_decay"],
        schedule="cosine", warmup_steps=max(1, round(WARMUP_FRACTION * steps)), eval_every=steps,
        eval_batches=max(1, p["eval_tokens"] // per_step), log_every=1, telemetry_every=0,
        checkpoint_every=max(1, steps // 4), compile=p["compile"], device=p["device"], seed=seed,
    )


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """Stage 0: the sweeps at both ends (first seed); stage 1: every other (batch, seed) at the interpolated
    learning rate, needing the sweeps it is interpolated from."""
    _check(p)
    first = p["seeds"][0]
    runs = [PlannedRun(sweep_name(o, c, batch, lr, first), _config(p, c, o, batch, lr, first))
            for c in p["corpora"] for o in OPTIMIZERS for batch, lrs in _ends(p) for lr in lrs]
    (smallest, _), (largest, _) = _ends(p)
    for c in p["corpora"]:
        for o in OPTIMIZERS:
            lr_small, lr_large = tuned_lrs(p, done, o, c)
            for batch in p["batch_sizes"]:
                ends = [(b, lrs) for b, lrs in _ends(p) if b == batch] or _ends(p)  # a middle batch needs both
                needs = tuple(sweep_name(o, c, b, lr, first) for b, lrs in ends for lr in lrs)
                lr = interpolated_lr(batch, smallest, largest, lr_small, lr_large)
                runs += [PlannedRun(tuned_name(o, c, batch, s), _config(p, c, o, batch, lr, s), needs=needs)
                         for s in seeds_at(p, batch) if not (s == first and batch in (smallest, largest))]
    return runs


def arm_runs(p: Mapping[str, Any], runs: Mapping[str, Run], optimizer: str, corpus: str, batch: int) -> list[Run]:
    """The runs of ``optimizer`` on ``corpus`` at ``batch`` and its tuned learning rate, one per seed (at the
    ends, the first seed's is the sweep's best run)."""
    first = p["seeds"][0]
    head = tuned_name(optimizer, corpus, batch, first)
    for end, lrs in _ends(p):
        if batch == end:
            head = sweep_name(optimizer, corpus, batch, best_lr(p, runs, optimizer, corpus, batch, lrs), first)
    return [runs[head], *(runs[tuned_name(optimizer, corpus, batch, s)] for s in seeds_at(p, batch)[1:])]


def sweeps(p: Mapping[str, Any], runs: Mapping[str, Run]) -> dict[str, dict[float, float | None]]:
    """Final validation loss by learning rate of every sweep, labelled "<Optimizer> <corpus> b<batch>"."""
    labels = {"adamw": "AdamW", "muon": "Muon"}
    return {f"{labels[o]} {c} b{batch}": {lr: runs[sweep_name(o, c, batch, lr, p["seeds"][0])].final("val_loss")
                                          for lr in lrs}
            for c in p["corpora"] for o in OPTIMIZERS for batch, lrs in _ends(p)}
