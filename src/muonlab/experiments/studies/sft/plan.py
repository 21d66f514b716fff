"""The ``sft`` study's runs: pretraining bases of matched loss, and every (pretrain, fine-tune) cell's bracketed
fine-tuning lr sweep.

1. Pretraining, per seed: Muon for ``pretrain_tokens``; AdamW for a multiple of as many tokens (each multiple
   its own full cosine schedule), searched until AdamW's base reaches Muon's base loss: Table 6 compares
   fine-tuning optimizers, and a worse (or better) base would decide the comparison by itself. The search
   (``next_multiple``) starts at ``adamw_pretrain_multiple``, steps ×√2 down or up while every multiple tried
   lands on one side of Muon's base loss, then interpolates between the two sides; it stops when the mean
   gap is within ``base_tolerance`` nats or after ``base_tries`` multiples (then the closest is used, and the
   report says the bases are not matched).
2. Fine-tuning, per cell: a bracketed lr sweep (``muonlab.analysis.lr_sweep.bracket``: the first seed over
   ``sft_lrs``, one ×``sft_lr_step`` step past an edge while the best is there, then every seed at the best
   lr and its neighbours), each seed's run starting from that seed's base; the AdamW-pretrained cells wait
   for the base search. Runs are named ``pre-muon-s<seed>``, ``pre-adamw-x<multiple>-s<seed>`` and
   ``sft-<pre>-<sft>-lr<lr>-s<seed>``, and appear as the searches decide them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from typing import Any

from ....analysis.lr_sweep import Bracket, SweepSpec, bracket, grid_value
from ....analysis.runs import Run
from ....train.config import SFT_DEFAULTS, ConfigError, TrainConfig
from ...study import PlannedRun

__all__ = ["CELLS", "OPTIMIZERS", "PRESETS", "base_search", "losses_from", "next_multiple", "plan", "pretrain_name",
           "projected_plan", "sweeps", "sweep_name"]

OPTIMIZERS = ("adamw", "muon")
CELLS = tuple((pre, sft) for pre in OPTIMIZERS for sft in OPTIMIZERS)
"""The four (pretraining optimizer, fine-tuning optimizer) cells of Table 6."""

PRESETS: dict[str, dict[str, Any]] = {
    # 4 layers, d=128 (M10 of PAPERS.md §5.1), Muon pretrained on 1.57M tokens (≈ 1.6 epochs of the English corpus),
    # AdamW's base searched from 1.68× as many: the search from 2× ended there on a 2-core Intel Xeon (2×: 0.105
    # nats *below* Muon's base, 1.41×: 0.106 above, 1.68×: +0.0008, 3 seeds each), so starting at 1.68× spares the
    # six pretraining runs of its first two tries; matched within 0.01 nats or 3 multiples. 614,400 fine-tuning
    # tokens (≈ 0.5 epochs of the python-functions set in the English BPE). Each cell's SFT lr bracketed from
    # {1e-3, 3e-3, 1e-2} (×3 steps).
    "cpu": dict(
        seeds=(0, 1, 2), pretrain_corpus="english", vocab_size=4096, model="demo", d_model=128, seq_len=256,
        batch_size=16, pretrain_tokens=1_572_864, adamw_pretrain_multiple=1.68, base_tolerance=0.01, base_tries=3,
        lr=3e-3, weight_decay=0.1, sft_tokens=614_400,
        sft_lrs=(1e-3, 3e-3, 1e-2), sft_lr_step=3.0, sft_lr_caps=(1e-4, 0.1), sft_weight_decay=0.1, compile=False,
        device="auto",
    ),
    # One GPU: 8 layers of d=512 (25.7M non-embedding parameters; 4.2M in the embedding and head at a 4,096-token
    # BPE), Muon pretrained on 8.4M tokens, AdamW on 16.8M: that is ≈ 2.4 and 4.8 epochs of the built-in English
    # corpus, more than the CPU preset repeats it, so the preset names a user corpus (``--set pretrain_corpus=
    # <registered name>``) of ≥ 20M tokens; ≈ 3 fine-tuning epochs. Expected cost: not yet measured.
    "gpu": dict(
        seeds=(0, 1, 2), pretrain_corpus="user-corpus", vocab_size=4096, model="8", d_model=0, seq_len=512,
        batch_size=32, pretrain_tokens=8_388_608, adamw_pretrain_multiple=2.0, base_tolerance=0.01, base_tries=3,
        lr=3e-3, weight_decay=0.1, sft_tokens=3_145_728,
        sft_lrs=(1e-3, 3e-3, 1e-2), sft_lr_step=3.0, sft_lr_caps=(1e-4, 0.1), sft_weight_decay=0.1, compile=True,
        device="cuda",
    ),
}


ONE_SIDED_STEP = 2**0.5
"""While every AdamW multiple tried lands on one side of Muon's base loss, the next is ×/÷ this."""


def pretrain_name(optimizer: str, seed: int, multiple: float = 1.0) -> str:
    """``pre-muon-s0``; an AdamW base carries its multiple of Muon's tokens: ``pre-adamw-x1.41-s0``."""
    return f"pre-muon-s{seed}" if optimizer == "muon" else f"pre-adamw-x{multiple:g}-s{seed}"


def sweep_name(pre: str, sft: str, lr: float, seed: int) -> str:
    return f"sft-{pre}-{sft}-lr{grid_value(lr):g}-s{seed}"


def pretrain_tokens(p: Mapping[str, Any], multiple: float = 1.0) -> int:
    """``multiple`` × ``pretrain_tokens`` (Muon's), in whole steps."""
    per_step = p["seq_len"] * p["batch_size"]
    return max(1, round(multiple * p["pretrain_tokens"] / per_step)) * per_step


def next_multiple(gaps: Mapping[float, float], tolerance: float, tries: int) -> tuple[float | None, float | None]:
    """``(the multiple to try next, the chosen multiple)``, one of them None, from ``gaps``: for each AdamW
    multiple tried, its mean base loss − Muon's (positive: AdamW's base is worse, it needs more tokens).

    Chosen: the multiple of smallest ``|gap|`` once it is ≤ ``tolerance`` or ``tries`` multiples are tried.
    Next: between the largest multiple still short (gap > 0) and the smallest one past (gap < 0), where the
    line through their gaps against log(multiple) crosses 0; with one side only, ``ONE_SIDED_STEP`` beyond
    the outermost multiple. Rounded to 3 significant digits; a multiple already tried ends the search.
    """
    closest = min(gaps, key=lambda m: abs(gaps[m]))
    if abs(gaps[closest]) <= tolerance or len(gaps) >= tries:
        return None, closest
    short = [m for m, g in gaps.items() if g > 0]
    past = [m for m, g in gaps.items() if g < 0]
    if short and past:
        lo, hi = max(short), min(past)
        t = gaps[lo] / (gaps[lo] - gaps[hi])
        guess = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
    else:
        guess = max(short) * ONE_SIDED_STEP if short else min(past) / ONE_SIDED_STEP
    guess = float(f"{guess:.3g}")
    return (None, closest) if guess in gaps else (guess, None)


def _final_losses(runs: list[Run]) -> list[float]:
    return [r.final("val_loss") for r in runs]


def base_search(p: Mapping[str, Any], done: Mapping[str, Run]) -> tuple[list[float], float | None]:
    """The AdamW multiples planned so far, in order, and the chosen one (None while the search goes on)."""
    seeds, multiples = p["seeds"], [p["adamw_pretrain_multiple"]]
    muon = [done[n] for s in seeds if (n := pretrain_name("muon", s)) in done]
    gaps: dict[float, float] = {}
    while len(muon) == len(seeds):
        adamw = [done[n] for s in seeds if (n := pretrain_name("adamw", s, multiples[-1])) in done]
        if len(adamw) < len(seeds):
            break
        gaps[multiples[-1]] = statistics.fmean(_final_losses(adamw)) - statistics.fmean(_final_losses(muon))
        following, chosen = next_multiple(gaps, p["base_tolerance"], p["base_tries"])
        if chosen is not None:
            return multiples, chosen
        multiples.append(following)
    return multiples, None


def _pretrain_config(p: Mapping[str, Any], optimizer: str, seed: int, multiple: float = 1.0) -> TrainConfig:
    tokens = pretrain_tokens(p, multiple)
    steps = tokens // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        corpus=p["pretrain_corpus"], tokenizer="bpe", vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], seq_len=p["seq_len"], batch_size=p["batch_size"], train_tokens=tokens,
        optimizer=optimizer, lr=p["lr"], weight_decay=p["weight_decay"], schedule="cosine",
        warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 6), eval_batches=8, log_every=10,
        telemetry_every=50, checkpoint_every=max(1, steps // 4), compile=p["compile"], device=p["device"], seed=seed,
    )


def _sft_config(p: Mapping[str, Any], base: str, sft: str, lr: float, seed: int) -> TrainConfig:
    steps = p["sft_tokens"] // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        **SFT_DEFAULTS, init_from=base, seq_len=p["seq_len"], batch_size=p["batch_size"],
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


def _planned(p: Mapping[str, Any], losses: Losses, multiples: list[float], chosen: float | None) -> list[PlannedRun]:
    """Muon's bases, AdamW's bases at each multiple of the search (a later multiple needs every base before it),
    then each cell's sweep cells: a first-round run needs its base only (``init_from``), a later one also the
    cell's first round (the results that placed it); AdamW-pretrained cells only once ``chosen`` is known."""
    seeds = p["seeds"]
    runs = [PlannedRun(pretrain_name("muon", s), _pretrain_config(p, "muon", s)) for s in seeds]
    for m in multiples:
        needs = tuple(r.name for r in runs) if m != multiples[0] else ()
        runs += [PlannedRun(pretrain_name("adamw", s, m), _pretrain_config(p, "adamw", s, m), needs) for s in seeds]
    for cell, state in sweeps(p, losses).items():
        if cell[0] == "adamw" and chosen is None:
            continue
        first_round = tuple(sweep_name(*cell, lr, seeds[0]) for lr in p["sft_lrs"])
        for lr, seed in state.cells:
            name = sweep_name(*cell, lr, seed)
            base = pretrain_name(cell[0], seed, chosen or 1.0)
            runs.append(PlannedRun(name, _sft_config(p, base, cell[1], lr, seed),
                                   () if name in first_round else first_round))
    return runs


def losses_from(done: Mapping[str, Run]) -> Losses:
    def losses(cell: tuple[str, str]) -> dict[tuple[float, int], float]:
        prefix = f"sft-{cell[0]}-{cell[1]}-lr"
        return {(grid_value(r.config["lr"]), int(r.config["seed"])): r.final("val_loss") for name, r in done.items()
                if name.startswith(prefix)}
    return losses


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """The runs decided by the results in ``done`` (module docstring)."""
    if p["adamw_pretrain_multiple"] <= 0 or p["base_tries"] < 1 or p["base_tolerance"] < 0:
        raise ConfigError(f"sft: adamw_pretrain_multiple={p['adamw_pretrain_multiple']} must be > 0, base_tries="
                          f"{p['base_tries']} ≥ 1 and base_tolerance={p['base_tolerance']} ≥ 0")
    return _planned(p, losses_from(done), *base_search(p, done))


def projected_plan(p: Mapping[str, Any]) -> list[PlannedRun]:
    """The plan as it ends when AdamW's first multiple matches Muon's base, each sweep's best first-seed lr is its
    grid's middle value and no sweep extends (what ``--dry-run`` costs; another multiple adds a pretraining run
    per seed, an extension a fine-tuning run per seed per step)."""
    grid = sorted(grid_value(lr) for lr in p["sft_lrs"])
    centre = grid[len(grid) // 2]
    first = p["adamw_pretrain_multiple"]
    return _planned(p, lambda cell: {(lr, s): abs(lr / centre - 1.0) for lr in grid for s in p["seeds"]}, [first],
                    first)
