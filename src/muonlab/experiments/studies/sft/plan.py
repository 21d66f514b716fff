"""The ``sft`` study's runs: pretraining bases of matched loss, and every (pretrain, fine-tune) cell's bracketed
fine-tuning lr sweep.

1. Pretraining, per seed: Muon for ``pretrain_tokens``; AdamW for ``adamw_pretrain_multiple`` × as many tokens
   (its own full cosine schedule), so that its base reaches about Muon's base loss: Table 6 compares
   fine-tuning optimizers, and a worse base would decide the comparison by itself. The multiple is stated
   before the runs (from the committed bases: AdamW 3.82 vs Muon 3.47 at equal tokens); the report gives
   the paired base-loss difference, so a mismatch is visible.
2. Fine-tuning, per cell: a bracketed lr sweep (``muonlab.analysis.lr_sweep.bracket``: the first seed over
   ``sft_lrs``, one ×``sft_lr_step`` step past an edge while the best is there, then every seed at the best
   lr and its neighbours), each seed's run starting from that seed's base. Runs are named
   ``sft-<pre>-<sft>-lr<lr>-s<seed>`` and appear as the sweep decides them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ....analysis.lr_sweep import Bracket, SweepSpec, bracket, grid_value
from ....analysis.runs import Run
from ....train.config import SFT_DEFAULTS, TrainConfig
from ...study import PlannedRun

__all__ = ["CELLS", "OPTIMIZERS", "PRESETS", "losses_from", "plan", "pretrain_name", "projected_plan", "sweeps",
           "sweep_name"]

OPTIMIZERS = ("adamw", "muon")
CELLS = tuple((pre, sft) for pre in OPTIMIZERS for sft in OPTIMIZERS)
"""The four (pretraining optimizer, fine-tuning optimizer) cells of Table 6."""

PRESETS: dict[str, dict[str, Any]] = {
    # 4 layers, d=128 (M10 of PAPERS.md §5.1), Muon pretrained on 1.57M tokens (≈ 1.6 epochs of the English corpus,
    # as committed), AdamW on 2× as many (its committed base at equal tokens was 0.35 nats worse: 3.82 vs 3.47);
    # 614,400 fine-tuning tokens (≈ 0.5 epochs of the python-functions set in the English BPE). Each cell's SFT lr
    # bracketed from {1e-3, 3e-3, 1e-2} (×3 steps; the committed Muon cells were best at the old grid's top):
    # 6 pretraining runs and ≈ 4 × (3 + 2 × 3) = 36 fine-tuning runs if no sweep extends. Expected cost: not yet
    # measured.
    "cpu": dict(
        seeds=(0, 1, 2), pretrain_corpus="english", vocab_size=4096, model="demo", d_model=128, seq_len=256,
        batch_size=16,
        pretrain_tokens=1_572_864, adamw_pretrain_multiple=2.0, lr=3e-3, weight_decay=0.1, sft_tokens=614_400,
        sft_lrs=(1e-3, 3e-3, 1e-2), sft_lr_step=3.0, sft_lr_caps=(1e-4, 0.1), sft_weight_decay=0.1, compile=False,
        device="auto",
    ),
    # One GPU: 8 layers of d=512 (25.7M non-embedding parameters; 4.2M in the embedding and head at a 4,096-token
    # BPE), Muon pretrained on 8.4M tokens, AdamW on 16.8M: that is ≈ 2.4 and 4.8 epochs of the built-in English
    # corpus, more than the CPU preset repeats it, so the preset names a user corpus (``--set pretrain_corpus=
    # <registered name>``) of ≥ 20M tokens; ≈ 3 fine-tuning epochs. Expected cost: not yet measured.
    "gpu": dict(
        seeds=(0, 1, 2), pretrain_corpus="user-corpus", vocab_size=4096, model="8", d_model=0, seq_len=512,
        batch_size=32,
        pretrain_tokens=8_388_608, adamw_pretrain_multiple=2.0, lr=3e-3, weight_decay=0.1, sft_tokens=3_145_728,
        sft_lrs=(1e-3, 3e-3, 1e-2), sft_lr_step=3.0, sft_lr_caps=(1e-4, 0.1), sft_weight_decay=0.1, compile=True,
        device="cuda",
    ),
}


def pretrain_name(optimizer: str, seed: int) -> str:
    return f"pre-{optimizer}-s{seed}"


def sweep_name(pre: str, sft: str, lr: float, seed: int) -> str:
    return f"sft-{pre}-{sft}-lr{grid_value(lr):g}-s{seed}"


def pretrain_tokens(p: Mapping[str, Any], optimizer: str) -> int:
    """Muon's ``pretrain_tokens``; AdamW's ``adamw_pretrain_multiple`` × as many, in whole steps."""
    per_step = p["seq_len"] * p["batch_size"]
    multiple = p["adamw_pretrain_multiple"] if optimizer == "adamw" else 1.0
    return max(1, round(multiple * p["pretrain_tokens"] / per_step)) * per_step


def _pretrain_config(p: Mapping[str, Any], optimizer: str, seed: int) -> TrainConfig:
    tokens = pretrain_tokens(p, optimizer)
    steps = tokens // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        corpus=p["pretrain_corpus"], tokenizer="bpe", vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], seq_len=p["seq_len"], batch_size=p["batch_size"], train_tokens=tokens,
        optimizer=optimizer, lr=p["lr"], weight_decay=p["weight_decay"], schedule="cosine",
        warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 6), eval_batches=8, log_every=10,
        telemetry_every=50, checkpoint_every=max(1, steps // 4), compile=p["compile"], device=p["device"], seed=seed,
    )


def _sft_config(p: Mapping[str, Any], pre: str, sft: str, lr: float, seed: int) -> TrainConfig:
    steps = p["sft_tokens"] // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        **SFT_DEFAULTS, init_from=pretrain_name(pre, seed), seq_len=p["seq_len"], batch_size=p["batch_size"],
        train_tokens=p["sft_tokens"], optimizer=sft, lr=grid_value(lr), weight_decay=p["sft_weight_decay"],
        eval_every=max(1, steps // 6), eval_batches=8, log_every=10, telemetry_every=50,
        checkpoint_every=max(1, steps // 3), compile=p["compile"], device=p["device"], seed=seed,
    )


Losses = Callable[[tuple[str, str]], Mapping[tuple[float, int], float]]
"""``losses(cell) -> {(lr, seed): final fine-tuning validation loss}`` of the cell's finished runs."""


def sweeps(p: Mapping[str, Any], losses: Losses) -> dict[tuple[str, str], Bracket]:
    """Each cell's fine-tuning lr sweep."""
    low, high = p["sft_lr_caps"]
    spec = SweepSpec(tuple(p["sft_lrs"]), tuple(p["seeds"]), p["sft_lr_step"], low, high)
    return {cell: bracket(spec, losses(cell)) for cell in CELLS}


def _planned(p: Mapping[str, Any], losses: Losses) -> list[PlannedRun]:
    """Pretraining per (seed, optimizer), then each cell's sweep cells: a first-round run needs its base only
    (``init_from``), a later one also the cell's first round (the results that placed it)."""
    runs = [PlannedRun(pretrain_name(o, s), _pretrain_config(p, o, s)) for s in p["seeds"] for o in OPTIMIZERS]
    for cell, state in sweeps(p, losses).items():
        first_round = tuple(sweep_name(*cell, lr, p["seeds"][0]) for lr in p["sft_lrs"])
        for lr, seed in state.cells:
            name = sweep_name(*cell, lr, seed)
            runs.append(PlannedRun(name, _sft_config(p, *cell, lr, seed), () if name in first_round else first_round))
    return runs


def losses_from(done: Mapping[str, Run]) -> Losses:
    def losses(cell: tuple[str, str]) -> dict[tuple[float, int], float]:
        prefix = f"sft-{cell[0]}-{cell[1]}-lr"
        return {(grid_value(r.config["lr"]), int(r.config["seed"])): r.final("val_loss") for name, r in done.items()
                if name.startswith(prefix)}
    return losses


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """The runs decided by the results in ``done`` (module docstring)."""
    return _planned(p, losses_from(done))


def projected_plan(p: Mapping[str, Any]) -> list[PlannedRun]:
    """The plan as it ends when each sweep's best first-seed lr is its grid's middle value and no sweep extends
    (what ``--dry-run`` costs; an extension adds a run per seed per step)."""
    grid = sorted(grid_value(lr) for lr in p["sft_lrs"])
    centre = grid[len(grid) // 2]
    return _planned(p, lambda cell: {(lr, s): abs(lr / centre - 1.0) for lr in grid for s in p["seeds"]})
