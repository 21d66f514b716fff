"""The ``weight-decay`` study's tables, report sections and analysis, from its run folders."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ....analysis.lr_sweep import Bracket
from ....analysis.runs import Run
from ...protocol import MeanStd, claim_section
from ...study import Analysis, Finished
from . import plots
from .claims import (
    EARLY_FRACTION,
    LOGIT_WINDOW,
    arm_numbers,
    early_lead_claim,
    final_loss_claim,
    max_logit_claim,
    norm_decay_claim,
    rms_growth_claim,
    run_numbers,
)
from .plan import lambda_sweep, losses_from, run_name

__all__ = ["analyse", "arm_runs"]


def arm_runs(p: Mapping[str, Any], runs: Mapping[str, Run]) -> tuple[dict[str, dict[int, Run]], Bracket]:
    """``({arm: {seed: run}}, the λ sweep)``: AdamW, vanilla Muon, and once the sweep is done Muon at its chosen λ
    and Muon at that λ with the gains decayed too."""
    sweep = lambda_sweep(p, losses_from(runs))
    names = {"adamw": lambda s: run_name("adamw", s), "muon-nowd": lambda s: run_name("muon-nowd", s)}
    if sweep.best is not None:
        names.update({arm: (lambda s, arm=arm: run_name(arm, s, sweep.best)) for arm in ("muon-wd", "muon-wd-norms")})
    out = {arm: {s: runs[name(s)] for s in p["seeds"] if name(s) in runs} for arm, name in names.items()}
    return {arm: r for arm, r in out.items() if r}, sweep


def _sweep_table(p: Mapping[str, Any], runs: Mapping[str, Run], sweep: Bracket) -> str:
    cells: dict[float, list[float]] = {}
    for wd, seed in sweep.cells:
        if (name := run_name("muon-wd", seed, wd)) in runs:
            cells.setdefault(wd, []).append(runs[name].final("val_loss"))
    lines = ["| λ (Muon, matrices only) | mean final val loss (seeds) |", "|---|---|"]
    lines += [f"| {wd:g}{' (chosen)' if wd == sweep.best else ''} | {np.mean(v):.4f} ({len(v)}) |"
              for wd, v in sorted(cells.items())]
    grid = ", ".join(f"{x:g}" for x in p["wd_grid"])
    low, high = p["wd_caps"]
    return ("\n".join(lines) + f"\n\nThe sweep starts from λ ∈ {{{grid}}} with the first seed, extends one "
            f"×{p['wd_step']:g} step past an edge while the best is there (caps {low:g}–{high:g}), then trains every "
            f"seed at the best λ and its neighbours; the choice is the best mean over fully seeded cells: λ = "
            f"{sweep.best:g} ({sweep.status}).")


def _cell(numbers: Mapping[str, Any] | None, digits: int = 4) -> str:
    if numbers is None:
        return "—"
    spread = f" ± {numbers['std']:.{digits}f}" if numbers["std"] is not None else ""
    return f"{numbers['mean']:.{digits}f}{spread}"


def _loss_table(numbers: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| arm | final val loss (unpaired) | val loss at 36 % of training | epochs |", "|---|---|---|---|"]
    for arm, n in numbers.items():
        lines.append(f"| {plots.ARM_LABELS.get(arm, arm)} | {_cell(n['final_val_loss'])} | "
                     f"{_cell(n['early_val_loss'])} | {_cell(n['epochs'], 2)} |")
    return "\n".join(lines)


def _rms_table(numbers: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> str:
    """Final value and growth over the second half of training, per arm and key (mean ± std over seeds)."""
    arms = list(numbers)
    lines = ["| quantity | " + " | ".join(plots.ARM_LABELS.get(a, a) for a in arms) + " |",
             "|---|" + "---|" * len(arms)]
    for key in keys:
        finals = [_cell(numbers[a]["rms"].get(key, {}).get("final"), 3) for a in arms]
        growth = [_cell(numbers[a]["rms"].get(key, {}).get("late_growth"), 3) for a in arms]
        lines.append(f"| `{key}` final | " + " | ".join(finals) + " |")
        lines.append(f"| `{key}` second-half growth | " + " | ".join(growth) + " |")
    return "\n".join(lines)


def _logit_table(numbers: Mapping[str, Mapping[str, Any]]) -> str:
    arms = list(numbers)
    layers = sorted({k for a in arms for k in numbers[a]["early_max_logit"]})
    lines = [f"| max attention logit | {' | '.join(plots.ARM_LABELS.get(a, a) for a in arms)} |",
             "|---|" + "---|" * len(arms)]
    for key in layers:
        lines.append(f"| {key}, peak over the first {100 * LOGIT_WINDOW:.0f} % | "
                     + " | ".join(_cell(numbers[a]["early_max_logit"].get(key), 2) for a in arms) + " |")
    lines.append(f"| max over layers, peak over the first {100 * LOGIT_WINDOW:.0f} % | "
                 + " | ".join(_cell(numbers[a]["early_max_logit_max"], 2) for a in arms) + " |")
    return "\n".join(lines)


def _setting(p: Mapping[str, Any], runs: Sequence[Run], numbers: Mapping[str, Mapping[str, Any]],
             chosen: float) -> str:
    c = runs[0].config
    exponent = (numbers.get("muon-wd") or {}).get("decay_exponent")
    model = c.get("model_config", {})
    head = "tied head" if model.get("tie_embeddings") else "untied head"
    non_embedding = c.get("num_non_embedding_params") or 0
    per_param = p["train_tokens"] / non_embedding if non_embedding else float("nan")
    split = c.get("train_split_tokens")
    return "\n".join([
        f"- Model: `{p['model']}` at d_model {p['d_model']}, {p['n_layers']} layers, {p['n_heads']} head(s), "
        f"{model.get('mlp', '?')} MLP, {head}: {c.get('num_params', 0):,} parameters, {non_embedding:,} outside "
        "the embedding and head.",
        f"- Horizon: {p['train_tokens']:,} tokens ({per_param:.0f} per non-embedding parameter, ≈ "
        f"{per_param / 20:.1f}× Chinchilla's 20; Moonlight: 100B tokens for 800M, ≈ 5× its own compute-optimal) in "
        f"{c.get('total_steps', 0):,} steps of {p['batch_size']} × {p['seq_len']} tokens"
        + (f"; the {p['corpus']} corpus in {p['tokenizer']} tokens holds {split:,} training tokens, so each run "
           f"saw it {p['train_tokens'] / split:.2f} times" if split else "") + ".",
        f"- Optimizers: Muon lr {p['lr']:g} (Moonlight scale 0.2·sqrt(max(A, B)), AdamW on embedding, head and "
        f"norms at the same lr), AdamW lr {p['adamw_lr']:g} with λ {p['adamw_weight_decay']:g}; Muon's λ "
        f"{chosen:g} chosen by a bracketed sweep at this horizon (see below); the norm gains are not decayed "
        "except in the 'norm gains too' arm; cosine schedule to 0.1× after 5 % warmup.",
        (f"- Strength of weight decay over the run: λ·Σ_t η_t = {exponent['mean']:.2f} (weight decay alone would "
         f"shrink a weight by e^−{exponent['mean']:.2f} = {math.exp(-exponent['mean']):.2f}×); Moonlight's 800M "
         "run: ≈ 3.2, inferred from Table 2's lr 8.8e-4 at 822M, λ = 0.1 and 66k steps under a cosine schedule "
         "to 0.1× (the ablation's lr and schedule are not stated)." if exponent
         else "- Strength of weight decay: unknown (no lr logged)."),
        f"- Early point: the evaluation nearest {100 * EARLY_FRACTION:.0f} % of training (Moonlight's 24k of 66k "
        f"iterations); growth: value at the end / value at mid-training − 1.",
    ])


def analyse(finished: Finished) -> Analysis:
    """Loss, weight and output RMS, and max logits by arm; Moonlight's claims M5, M11 and M12 against them."""
    p, out = finished.params, finished.out
    arms, sweep = arm_runs(p, finished.runs)
    per_run = {arm: {s: run_numbers(r) for s, r in by_seed.items()} for arm, by_seed in arms.items()}
    numbers = {arm: arm_numbers(v) for arm, v in per_run.items()}
    runs = [r for by_seed in arms.values() for r in by_seed.values()]
    hidden, norms = plots.matrix_types(runs), plots.norm_types(runs)
    checks = [c for c in (early_lead_claim(per_run), final_loss_claim(per_run), rms_growth_claim(per_run, hidden),
                          norm_decay_claim(per_run), max_logit_claim(per_run)) if c is not None]
    seed = min(int(r.config["seed"]) for r in runs)
    figures = [
        ("Validation loss per arm and Muon (no wd) − Muon (wd) over training (mean ± std over seeds)",
         plots.plot_val_loss(runs, out / "val_loss.png")),
        ("Weight RMS of the hidden matrices over training",
         plots.plot_weight_rms(runs, hidden, out / "weight_rms.png")),
        ("Weight RMS of the RMSNorm gains over training",
         plots.plot_weight_rms(runs, norms, out / "norm_rms.png", log=False)),
        (f"Block-output RMS: the max over blocks per arm, and every block of seed {seed}",
         plots.plot_output_rms(runs, out / "output_rms.png", seed)),
        ("Max attention logit per layer over training, AdamW and Muon",
         plots.plot_max_logits(runs, out / "max_logit.png")),
    ]
    results = {"arms": numbers, "lambda": {"chosen": sweep.best, "status": sweep.status, "grid": list(sweep.grid)},
               "per_seed": {a: {str(s): n for s, n in v.items()} for a, v in per_run.items()},
               "claims": [asdict(c) for c in checks]}
    summary = "; ".join(f"{plots.ARM_LABELS.get(a, a)}: final val loss {MeanStd(**n['final_val_loss'])}"
                        for a, n in numbers.items())
    sections = [
        ("Setting", _setting(p, runs, numbers, sweep.best)),
        ("Weight decay λ for Muon: bracketed sweep", _sweep_table(p, finished.runs, sweep)),
        ("Validation loss by arm", _loss_table(numbers)),
        ("Weight and block-output RMS by arm",
         _rms_table(numbers, [*(f"weight_rms/{t}" for t in hidden + norms), "output_rms/max"])),
        ("Max attention logit by arm", _logit_table(numbers)),
        ("Paper claim vs small-scale result", "Every verdict is paired over seeds: the mean per-seed difference with "
         "its 95 % t interval (separated when it excludes 0, ≥ 3 seeds); unpaired means ± std in the tables above.\n\n"
         + claim_section(checks)),
    ]
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)
