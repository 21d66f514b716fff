"""``scaling``: Moonlight's scaling-law comparison (arXiv 2502.16982 §3.2, Figure 3, Table 3) at small scale.

Moonlight fitted ``L = a·C^b`` to compute-optimal runs of Muon and of a tuned AdamW and found that
Muon reaches AdamW's loss with ≈ 52 % of its training FLOPs (≈ 2× compute efficiency), with Muon
*reusing AdamW's learning rate and weight decay*. This study trains, for several widths of one
dense Llama-style model, each near its compute-optimal budget (``tokens_per_param`` tokens per
non-embedding parameter):

1. stage 0: AdamW at every learning rate of ``adamw_lrs`` (the first seed), and Muon at the same
   learning rates at one width (``muon_sweep_width``, claim M7: where Muon's optimum lies);
2. stage 1: AdamW at each width's best learning rate with the other seeds, and Muon at AdamW's
   best learning rate and weight decay, unchanged, with every seed (at the sweep width the first
   seed's run is the sweep's).

Each optimizer's points (mean final validation loss over seeds against the training FLOPs ``C``)
are fitted with a power law; the equal-loss compute ratio ``C_Muon / C_AdamW`` comes with a 95 %
bootstrap interval over seeds (``muonlab.analysis.fits``). The final weights' SVD entropy per
matrix type (§3.4) and the max attention logit per layer (App. D) are compared as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...analysis.runs import Run
from ...models import model_config_for
from ...train.config import TrainConfig
from ..study import Analysis, Finished, PlannedRun, Study
from ._scaling_report import Measured, scaling_analysis

PRESETS: dict[str, dict[str, Any]] = {
    # Byte tokens on the Python corpus (11.7M training bytes): no run repeats data and the head is small, so
    # compute goes to the non-embedding parameters whose count the budget is set from. 4 layers, heads of 16;
    # widths 32–64 span 8.4× in training FLOPs (1.3M–4.3M tokens a run). 34 runs, --workers 2: 35 min 29 s on a
    # 2-core AMD EPYC, killed once and resumed (the dry-run said 30 min 41 s).
    "cpu": dict(
        seeds=(0, 1, 2), widths=(32, 40, 48, 64), n_layers=4, head_dim=16, tokens_per_param=20.0,
        adamw_lrs=(2.5e-3, 5e-3, 1e-2), weight_decay=0.1, muon_sweep_width=48, corpus="python", tokenizer="byte",
        vocab_size=4096, seq_len=256, batch_size=32, compile=False, device="auto",
    ),
    # One GPU: 8 layers, widths 128–384 (heads of 64), BPE 8192 on the Python corpus.
    "gpu": dict(
        seeds=(0, 1, 2), widths=(128, 192, 256, 384), n_layers=8, head_dim=64, tokens_per_param=20.0,
        adamw_lrs=(1.5e-3, 3e-3, 6e-3), weight_decay=0.1, muon_sweep_width=192, corpus="python", tokenizer="bpe",
        vocab_size=8192, seq_len=512, batch_size=32, compile=True, device="cuda",
    ),
}


def model_for(p: Mapping[str, Any], width: int):
    """The ``ModelConfig`` of one width (``muonlab.models.model_config_for``)."""
    vocab = 257 if p["tokenizer"] == "byte" else p["vocab_size"]
    return model_config_for("demo", vocab, p["seq_len"], d_model=width, n_layers=p["n_layers"],
                            n_heads=width // p["head_dim"])


def non_embedding_params(p: Mapping[str, Any], width: int) -> int:
    return model_for(p, width).num_params(include_embedding=False)


def train_tokens(p: Mapping[str, Any], width: int) -> int:
    """``tokens_per_param`` × non-embedding parameters, rounded to whole steps."""
    per_step = p["seq_len"] * p["batch_size"]
    return max(1, round(p["tokens_per_param"] * non_embedding_params(p, width) / per_step)) * per_step


def sweep_name(optimizer: str, width: int, lr: float, seed: int) -> str:
    return f"{optimizer}-d{width}-lr{lr:g}-s{seed}"


def best_name(optimizer: str, width: int, seed: int) -> str:
    """A run at AdamW's best learning rate for the width (named without it: names never depend on results)."""
    return f"{optimizer}-d{width}-best-s{seed}"


def _config(p: Mapping[str, Any], width: int, optimizer: str, lr: float, seed: int) -> TrainConfig:
    tokens = train_tokens(p, width)
    steps = tokens // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model="demo", d_model=width,
        n_layers=p["n_layers"], n_heads=width // p["head_dim"], seq_len=p["seq_len"], batch_size=p["batch_size"],
        train_tokens=tokens, optimizer=optimizer, lr=lr, weight_decay=p["weight_decay"], schedule="cosine",
        warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 8), eval_batches=16, log_every=10,
        telemetry_every=max(1, steps // 16), spectra_every=steps, checkpoint_every=max(1, steps // 4),
        compile=p["compile"], device=p["device"], seed=seed,
    )


def adamw_best_lr(p: Mapping[str, Any], done: Mapping[str, Run], width: int) -> float | None:
    """The AdamW sweep's learning rate with the lowest final validation loss at ``width`` (first seed),
    or None while a sweep run of that width is unfinished."""
    names = {lr: sweep_name("adamw", width, lr, p["seeds"][0]) for lr in p["adamw_lrs"]}
    if not all(n in done for n in names.values()):
        return None
    return min(p["adamw_lrs"], key=lambda lr: done[names[lr]].final("val_loss"))


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """Stage 0: the AdamW sweep per width and Muon's sweep at one width (first seed); stage 1: the other
    seeds of AdamW and every seed of Muon at AdamW's best learning rate (provisionally the middle one)."""
    if p["muon_sweep_width"] not in p["widths"]:
        raise ValueError(f"muon_sweep_width={p['muon_sweep_width']} must be one of widths={p['widths']}")
    first, others = p["seeds"][0], p["seeds"][1:]
    runs = [PlannedRun(sweep_name("adamw", w, lr, first), _config(p, w, "adamw", lr, first))
            for w in p["widths"] for lr in p["adamw_lrs"]]
    runs += [PlannedRun(sweep_name("muon", p["muon_sweep_width"], lr, first),
                        _config(p, p["muon_sweep_width"], "muon", lr, first)) for lr in p["adamw_lrs"]]
    for w in p["widths"]:
        sweep = tuple(sweep_name("adamw", w, lr, first) for lr in p["adamw_lrs"])
        lr = adamw_best_lr(p, done, w)
        lr = p["adamw_lrs"][len(p["adamw_lrs"]) // 2] if lr is None else lr
        muon_seeds = others if w == p["muon_sweep_width"] else p["seeds"]
        runs += [PlannedRun(best_name("adamw", w, s), _config(p, w, "adamw", lr, s), needs=sweep) for s in others]
        runs += [PlannedRun(best_name("muon", w, s), _config(p, w, "muon", lr, s), needs=sweep) for s in muon_seeds]
    return runs


def arm_runs(p: Mapping[str, Any], runs: Mapping[str, Run], optimizer: str, width: int) -> list[Run]:
    """One run per seed of ``optimizer`` at ``width`` and AdamW's best learning rate there."""
    lr = adamw_best_lr(p, runs, width)
    first = p["seeds"][0]
    has_sweep = optimizer == "adamw" or width == p["muon_sweep_width"]
    head = [runs[sweep_name(optimizer, width, lr, first)]] if has_sweep else [runs[best_name(optimizer, width, first)]]
    return head + [runs[best_name(optimizer, width, s)] for s in p["seeds"][1:]]


def analyse(finished: Finished) -> Analysis:
    """Fits, the equal-loss compute ratio, the sweeps, SVD entropy and max logits, from the run folders."""
    p, runs = finished.params, finished.runs
    first = p["seeds"][0]
    widths = list(p["widths"])
    best = {w: adamw_best_lr(p, runs, w) for w in widths}
    measured = Measured(
        widths=widths,
        compute=[float(model_for(p, w).flops_per_token(p["seq_len"]) * train_tokens(p, w)) for w in widths],
        params=[non_embedding_params(p, w) for w in widths],
        tokens=[train_tokens(p, w) for w in widths],
        adamw_best_lr=[best[w] for w in widths],
        arms={o: [arm_runs(p, runs, o, w) for w in widths] for o in ("adamw", "muon")},
        sweeps={**{f"AdamW d={w}": {lr: runs[sweep_name("adamw", w, lr, first)].final("val_loss")
                                    for lr in p["adamw_lrs"]} for w in widths},
                f"Muon d={p['muon_sweep_width']}": {lr: runs[sweep_name("muon", p["muon_sweep_width"], lr, first)]
                                                    .final("val_loss") for lr in p["adamw_lrs"]}},
        muon_sweep_width=p["muon_sweep_width"],
    )
    return scaling_analysis(measured, p, finished.out)


STUDY = Study(
    name="scaling",
    title="Scaling law: Muon vs tuned AdamW at compute-optimal budgets (Moonlight Figure 3)",
    claim="Moonlight (arXiv 2502.16982 §3.2, Figure 3): reusing AdamW's lr and weight decay, Muon reaches "
          "AdamW's loss with ≈ 52 % of its training FLOPs at compute-optimal budgets (≈ 2× compute efficiency).",
    presets=PRESETS,
    plan=plan,
    analyse=analyse,
)
