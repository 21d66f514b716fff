"""``sft``: Moonlight's pretrain × fine-tune optimizer table (arXiv 2502.16982 §3.5.1, Table 6) at small scale.

Moonlight fine-tuned Muon- and AdamW-pretrained models with each optimizer and found the matched
Muon/Muon pair best, while "when the SFT optimizer differs from the pretraining optimizer, SFT with
Muon does not show a significant advantage over AdamW". This study trains, per seed:

1. stage 0, pretraining: the same small Llama-style model on the built-in English corpus with AdamW
   and with Muon (Muon reusing AdamW's learning rate and weight decay, as Moonlight does);
2. stage 1, a fine-tuning learning-rate sweep with the first seed only: each pretrained model
   fine-tuned with each optimizer at every learning rate of ``sft_lrs`` on the built-in
   ``python-functions`` set (standard-library signature + docstring → body, loss on the body only),
   with Moonlight's SFT schedule (no warmup, linear decay to 0);
3. stage 2: the other seeds at each (pretrain, fine-tune) cell's best learning rate of the sweep.

The seed sets the pretraining's initialisation and data order and the fine-tuning's data order;
within a seed both fine-tuning optimizers start from the same pretrained weights and see the same
batches. The report compares the four cells' final fine-tuning validation loss (on the held-out
functions' bodies) over the seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ...analysis import sft_plots as plots
from ...analysis.runs import Run
from ...train.config import SFT_DEFAULTS, TrainConfig
from ..protocol import ClaimCheck, Gap, MeanStd, claim_section, epochs, mean_std
from ..study import Analysis, Finished, PlannedRun, Study

OPTIMIZERS = ("adamw", "muon")
CELLS = tuple((pre, sft) for pre in OPTIMIZERS for sft in OPTIMIZERS)
"""The four (pretraining optimizer, fine-tuning optimizer) cells of Table 6."""

PRESETS: dict[str, dict[str, Any]] = {
    # 4 layers, d=128 (M10 of PAPERS.md §5.1), 1.57M pretraining tokens (≈ 1.6 epochs of the English corpus),
    # 1.23M fine-tuning tokens (≈ 1 epoch of the python-functions set in the English BPE). 30 runs. The sweep
    # reaches 1e-2 because every cell's best of {3e-4, 1e-3, 3e-3} was 3e-3, the grid's edge.
    "cpu": dict(
        seeds=(0, 1, 2), vocab_size=4096, model="demo", d_model=128, seq_len=256, batch_size=16,
        pretrain_tokens=1_572_864, lr=3e-3, weight_decay=0.1, sft_tokens=1_228_800,
        sft_lrs=(3e-4, 1e-3, 3e-3, 1e-2),
        sft_weight_decay=0.1, compile=False, device="auto",
    ),
    # One GPU: 8 layers of d=512, 8.4M pretraining tokens, ≈ 3 fine-tuning epochs.
    "gpu": dict(
        seeds=(0, 1, 2), vocab_size=8192, model="8", d_model=0, seq_len=512, batch_size=32,
        pretrain_tokens=8_388_608, lr=3e-3, weight_decay=0.1, sft_tokens=3_145_728, sft_lrs=(3e-4, 1e-3, 3e-3),
        sft_weight_decay=0.1, compile=True, device="cuda",
    ),
}


def pretrain_name(optimizer: str, seed: int) -> str:
    return f"pre-{optimizer}-s{seed}"


def sweep_name(pre: str, sft: str, lr: float, seed: int) -> str:
    return f"sft-{pre}-{sft}-lr{lr:g}-s{seed}"


def best_name(pre: str, sft: str, seed: int) -> str:
    """A run at the cell's best learning rate (named without it: run names never depend on results)."""
    return f"sft-{pre}-{sft}-best-s{seed}"


def _pretrain_config(p: Mapping[str, Any], optimizer: str, seed: int) -> TrainConfig:
    steps = p["pretrain_tokens"] // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        corpus="english", tokenizer="bpe", vocab_size=p["vocab_size"], model=p["model"], d_model=p["d_model"],
        seq_len=p["seq_len"], batch_size=p["batch_size"], train_tokens=p["pretrain_tokens"], optimizer=optimizer,
        lr=p["lr"], weight_decay=p["weight_decay"], schedule="cosine", warmup_steps=max(1, steps // 20),
        eval_every=max(1, steps // 6), eval_batches=8, log_every=10, telemetry_every=50, checkpoint_every=steps // 4,
        compile=p["compile"], device=p["device"], seed=seed,
    )


def _sft_config(p: Mapping[str, Any], pre: str, sft: str, lr: float, seed: int) -> TrainConfig:
    steps = p["sft_tokens"] // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        **SFT_DEFAULTS, init_from=pretrain_name(pre, seed), seq_len=p["seq_len"], batch_size=p["batch_size"],
        train_tokens=p["sft_tokens"], optimizer=sft, lr=lr, weight_decay=p["sft_weight_decay"],
        eval_every=max(1, steps // 6), eval_batches=8, log_every=10, telemetry_every=50,
        checkpoint_every=steps // 3, compile=p["compile"], device=p["device"], seed=seed,
    )


def best_lr(p: Mapping[str, Any], done: Mapping[str, Run], pre: str, sft: str) -> float | None:
    """The sweep's learning rate with the lowest final fine-tuning validation loss (first seed), or None
    while any sweep run of the cell is unfinished."""
    seed = p["seeds"][0]
    names = {lr: sweep_name(pre, sft, lr, seed) for lr in p["sft_lrs"]}
    if not all(name in done for name in names.values()):
        return None
    return min(p["sft_lrs"], key=lambda lr: done[names[lr]].final("val_loss"))


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """Pretraining per (optimizer, seed); the first seed's sweep per cell and learning rate; the other
    seeds per cell at its best learning rate (provisionally the sweep's middle value until it is known)."""
    first, others = p["seeds"][0], p["seeds"][1:]
    runs = [PlannedRun(pretrain_name(o, s), _pretrain_config(p, o, s)) for s in p["seeds"] for o in OPTIMIZERS]
    for pre, sft in CELLS:
        runs += [PlannedRun(sweep_name(pre, sft, lr, first), _sft_config(p, pre, sft, lr, first))
                 for lr in p["sft_lrs"]]
    for pre, sft in CELLS:
        sweep = tuple(sweep_name(pre, sft, lr, first) for lr in p["sft_lrs"])
        lr = best_lr(p, done, pre, sft)
        lr = p["sft_lrs"][len(p["sft_lrs"]) // 2] if lr is None else lr
        runs += [PlannedRun(best_name(pre, sft, s), _sft_config(p, pre, sft, lr, s), needs=sweep) for s in others]
    return runs


def cell_runs(p: Mapping[str, Any], runs: Mapping[str, Run]) -> dict[tuple[str, str], list[Run]]:
    """Each cell's fine-tuning runs at its best learning rate, one per seed."""
    out = {}
    for pre, sft in CELLS:
        lr = best_lr(p, runs, pre, sft)
        first = runs[sweep_name(pre, sft, lr, p["seeds"][0])]
        out[(pre, sft)] = [first, *(runs[best_name(pre, sft, s)] for s in p["seeds"][1:])]
    return out


def _label(cell: tuple[str, str]) -> str:
    return f"pretrain {cell[0]} → SFT {cell[1]}"


def _claims(cells: Mapping[tuple[str, str], MeanStd]) -> list[ClaimCheck]:
    best = min(cells, key=lambda c: cells[c].mean)
    runner_up = min((c for c in cells if c != best), key=lambda c: cells[c].mean)
    mm = ("muon", "muon")
    gap = Gap(cells[mm], cells[runner_up if best == mm else best])
    if best == mm:
        agrees = True if gap.separated else None
        size = (f"Muon/Muon lowest, {abs(gap.difference):.4f} nats below the next cell ({_label(runner_up)}); "
                + (f"{gap.in_spreads:.1f}× the seed-to-seed std" if gap.in_spreads is not None else "spread unknown"))
    else:
        agrees = False if gap.separated else None
        size = (f"{_label(best)} is lowest, {abs(gap.difference):.4f} nats below Muon/Muon "
                + (f"({gap.in_spreads:.1f}× the seed-to-seed std)" if gap.in_spreads is not None else ""))
    mismatched = Gap(cells[("adamw", "adamw")], cells[("adamw", "muon")])
    advantage = mismatched.difference < 0 and mismatched.separated
    return [
        ClaimCheck(
            paper="Muon-pretrained + Muon-SFT is the best pair (Table 6: e.g. MMLU 55.7 vs 55.3 / 50.2 / 52.0, "
                  "GSM8K 68.0 vs 62.1 / 64.9 / 64.6)",
            result="final fine-tuning validation loss: "
                   + "; ".join(f"{_label(c)} {cells[c]}" for c in CELLS),
            agrees=agrees, by_how_much=size,
        ),
        ClaimCheck(
            paper="with a mismatched pair, SFT with Muon shows no significant advantage over AdamW (§3.5.1: "
                  "AdamW-pretrained, Muon vs AdamW SFT: MMLU 55.3 vs 52.0, HumanEval 53.7 vs 53.1)",
            result=f"AdamW-pretrained: SFT Muon {cells[('adamw', 'muon')]} vs SFT AdamW {cells[('adamw', 'adamw')]}",
            agrees=None if min(mismatched.a.n, mismatched.b.n) < 3 else not advantage,
            by_how_much=f"Muon − AdamW SFT = {mismatched.difference:+.4f} nats"
                        + (f" ({mismatched.in_spreads:.1f}× the seed-to-seed std; "
                           f"{'a' if advantage else 'no'} separated Muon-SFT advantage)"
                           if mismatched.in_spreads is not None else ""),
        ),
    ]


def _sweep_table(p: Mapping[str, Any], runs: Mapping[str, Run]) -> str:
    seed = p["seeds"][0]
    lines = ["| cell | " + " | ".join(f"lr {lr:g}" for lr in p["sft_lrs"]) + " | chosen |",
             "|---|" + "---|" * (len(p["sft_lrs"]) + 1)]
    for cell in CELLS:
        losses = [runs[sweep_name(*cell, lr, seed)].final("val_loss") for lr in p["sft_lrs"]]
        lines.append(f"| {_label(cell)} | " + " | ".join(f"{v:.4f}" for v in losses)
                     + f" | {best_lr(p, runs, *cell):g} |")
    edges = [_label(c) for c in CELLS if best_lr(p, runs, *c) in (min(p["sft_lrs"]), max(p["sft_lrs"]))]
    note = (f"\n\nThe best learning rate lies at the edge of the grid for {', '.join(edges)}: the optimum may lie "
            "beyond it, so those cells may be under-tuned." if edges else
            "\n\nEvery cell's best learning rate lies inside the grid.")
    return "\n".join(lines) + note


def _setting(p: Mapping[str, Any], runs: Mapping[str, Run]) -> str:
    pre = [runs[pretrain_name(o, s)] for s in p["seeds"] for o in OPTIMIZERS]
    tuned = [r for r in runs.values() if r.name.startswith("sft-")]
    pre_epochs = [e for e in (epochs(r) for r in pre) if e is not None]
    sft_epochs = [e for e in (epochs(r) for r in tuned) if e is not None]
    return "\n".join([
        f"- Pretraining: {pre[0].config.get('model')} model (d_model {p['d_model'] or 'preset'}), English corpus "
        f"(King James Bible), BPE vocabulary {p['vocab_size']}, {p['pretrain_tokens']:,} tokens per run"
        + (f" ({max(pre_epochs):.2f} epochs)" if pre_epochs else "") + f", cosine schedule, lr {p['lr']:g} and "
        f"weight decay {p['weight_decay']:g} for both optimizers (Muon reuses AdamW's, Moonlight §2.2).",
        f"- Fine-tuning: built-in python-functions set (signature + docstring → body; loss on the body only), "
        f"tokenized with the pretrained model's English BPE, {p['sft_tokens']:,} tokens per run"
        + (f" ({max(sft_epochs):.2f} epochs)" if sft_epochs else "") + f", no warmup, linear decay to 0 "
        f"(Moonlight §3.5.1), weight decay {p['sft_weight_decay']:g}; learning rates "
        f"{', '.join(map(str, p['sft_lrs']))} swept with seed {p['seeds'][0]}, the other seeds at each cell's best.",
        "- The chosen learning rate's seed-0 run is one of the cell's seeds, so the chosen cells' seed-0 "
        "losses carry a small selection bias; the other seeds do not.",
    ])


def analyse(finished: Finished) -> Analysis:
    """Final fine-tuning validation loss per (pretrain, fine-tune) cell over the seeds, against the claims."""
    p, runs, out = finished.params, finished.runs, finished.out
    by_cell = cell_runs(p, runs)
    cells = {cell: mean_std(r.final("val_loss") for r in rs) for cell, rs in by_cell.items()}
    pretrained = {o: mean_std(runs[pretrain_name(o, s)].final("val_loss") for s in p["seeds"]) for o in OPTIMIZERS}
    checks = _claims(cells)
    figures = [
        ("Final fine-tuning validation loss per cell (mean ± std over seeds)",
         plots.plot_cells({_label(c): rs for c, rs in by_cell.items()}, out / "sft_cells.png")),
        ("Fine-tuning validation loss over training per cell (mean ± std over seeds)",
         plots.plot_curves({_label(c): rs for c, rs in by_cell.items()}, out / "sft_curves.png")),
        ("Learning-rate sweep (first seed)",
         plots.plot_sweep({_label(c): {lr: runs[sweep_name(*c, lr, p["seeds"][0])] for lr in p["sft_lrs"]}
                           for c in CELLS}, out / "sft_lr_sweep.png")),
        ("Pretraining validation loss (English) per optimizer",
         plots.plot_curves({o: [runs[pretrain_name(o, s)] for s in p["seeds"]] for o in OPTIMIZERS},
                           out / "pretrain_curves.png")),
    ]
    best = min(cells, key=lambda c: cells[c].mean)
    summary = "final fine-tuning validation loss: " + ", ".join(f"{c[0]}→{c[1]} {cells[c].mean:.4f}" for c in CELLS)
    results = {
        "cells": {f"{pre}->{sft}": {"lr": best_lr(p, runs, pre, sft), **asdict(cells[(pre, sft)])}
                  for pre, sft in CELLS},
        "best_cell": f"{best[0]}->{best[1]}",
        "pretrain_val_loss": {o: asdict(v) for o, v in pretrained.items()},
        "sweep": {f"{pre}->{sft}": {str(lr): runs[sweep_name(pre, sft, lr, p["seeds"][0])].final("val_loss")
                                    for lr in p["sft_lrs"]} for pre, sft in CELLS},
        "claims_agree": [c.agrees for c in checks],
    }
    table = ["| pretrain \\ SFT | AdamW | Muon |", "|---|---|---|"]
    for pre in OPTIMIZERS:
        table.append(f"| {pre} (pretrain val {pretrained[pre].mean:.4f}) | {cells[(pre, 'adamw')]} | "
                     f"{cells[(pre, 'muon')]} |")
    sections = [("Headline", "Final fine-tuning validation loss (nats per trained token; lower is better), "
                             "mean ± std over seeds at each cell's chosen learning rate:\n\n" + "\n".join(table)),
                ("Paper claim vs small-scale result", claim_section(checks)),
                ("Setting", _setting(p, runs)),
                ("Learning-rate sweep", _sweep_table(p, runs))]
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)


STUDY = Study(
    name="sft",
    title="Pretrain × fine-tune optimizer: does Muon/Muon win? (Moonlight Table 6)",
    claim="Moonlight (arXiv 2502.16982 §3.5.1, Table 6): Muon-pretrained + Muon-SFT is best; with a mismatched "
          "pair, Muon SFT shows no significant advantage over AdamW SFT.",
    presets=PRESETS,
    plan=plan,
    analyse=analyse,
)
