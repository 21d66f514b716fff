"""``weight-decay``: Moonlight's weight-decay ablation (arXiv 2502.16982 §2.2, Figure 2; App. D) at small scale.

Moonlight trains an 800M model on 100B tokens (≈ 5× its compute-optimal tokens) with AdamW, vanilla
Muon and Muon with weight decay: vanilla Muon leads early (by 0.023 at iteration 24k), but its
weights and layer outputs keep growing in RMS and Muon with weight decay wins late (by 0.017 at
66k). App. D adds that weight decay on the RMSNorm gains keeps every layer's output RMS bounded, and
that the max attention logit grows more under Muon early in training.

The study trains one small model over an over-trained horizon (≈ 100 tokens per non-embedding
parameter, 5× Chinchilla's 20) in four arms, several seeds each (the seed sets initialisation and
data order; within a seed every arm gets the same ones): AdamW (λ), Muon without weight decay, Muon
(λ), and Muon (λ) with the norm gains left undecayed (``decay_norms=False``). Every run logs the
validation loss on the fixed held-out slice, and at telemetry steps the weight RMS per parameter
type, every block's output RMS and the max attention logit per layer (``muonlab.train.weight_telemetry``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ...analysis import weight_decay_plots as plots
from ...analysis.runs import Run
from ...train.config import TrainConfig
from ..protocol import MeanStd, claim_section
from ..study import Analysis, Finished, PlannedRun, Study
from ._weight_decay_claims import (
    EARLY_FRACTION,
    LOGIT_WINDOW,
    early_lead_claim,
    final_loss_claim,
    max_logit_claim,
    norm_decay_claim,
    numbers_by_arm,
    rms_growth_claim,
)

PRESETS: dict[str, dict[str, Any]] = {
    # 12 runs took 8 min 49 s with --workers 2 on a 2-core AMD EPYC (a dry-run calibrated under heavy load had
    # said ≈ 32 min; the budget is 40): a 2-layer d=48 model, 55,536 non-embedding parameters, trained on 4.9M byte
    # tokens of the Python corpus (88 per parameter, ≈ 4.4× Chinchilla; 0.42 epochs of its 11.7M training
    # tokens, so no data repeats) in 2,400 steps of 16 × 128. Byte tokens keep the head small (257 × 48).
    # lr 3e-3: AdamW's best of {1e-3, 3e-3, 1e-2} in 800-step probes of this model (seed 0, λ 0.1: final val loss
    # 2.021, 1.825, 1.973; Muon at 3e-3: 1.754); Muon reuses it, as Moonlight does.
    # λ 0.5: the paper does not state this ablation's λ; what decay does over a run is its total shrink λ·Σ_t η_t
    # (report: "decay sum"), ≈ 3 for the paper's 800M run (lr 8.8e-4, cosine, 66k steps, λ 0.1) but only ≈ 0.4
    # here at λ 0.1 with 28× fewer steps; λ 0.5 brings it to ≈ 2, the paper's regime. Chosen before the runs.
    "cpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="byte", vocab_size=4096, model="tiny", d_model=48, n_layers=2,
        n_heads=1, seq_len=128, batch_size=16, train_tokens=4_915_200, lr=3e-3, adamw_lr=3e-3, weight_decay=0.5,
        evaluations=24, telemetry_every=50, compile=False, device="auto",
    ),
    # One GPU, ≤ 8 minutes for the 12 runs one after another (assuming ≈ 30 ms per eager step; not run or
    # calibrated yet): a 2-layer d=96 model (221,664 non-embedding parameters, 2 heads of 48) on 22.1M byte tokens
    # (100 per parameter, ≈ 1.9 epochs of the Python corpus) in 1,200 steps of 72 × 256.
    "gpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="byte", vocab_size=4096, model="tiny", d_model=96, n_layers=2,
        n_heads=2, seq_len=256, batch_size=72, train_tokens=22_118_400, lr=3e-3, adamw_lr=3e-3, weight_decay=0.1,
        evaluations=24, telemetry_every=25, compile=False, device="cuda",
    ),
}


def _arms(p: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each arm's changes to the shared config (``plots.arm_of`` names a run's arm back from its config)."""
    wd = p["weight_decay"]
    return {"adamw": dict(optimizer="adamw", lr=p["adamw_lr"], weight_decay=wd),
            "muon-nowd": dict(optimizer="muon", weight_decay=0.0),
            "muon-wd": dict(optimizer="muon", weight_decay=wd),
            "muon-wd-nonorm": dict(optimizer="muon", weight_decay=wd, decay_norms=False)}


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """Per seed, the four arms ``adamw-s<seed>``, ``muon-nowd-s<seed>``, ``muon-wd-s<seed>`` and
    ``muon-wd-nonorm-s<seed>``: cosine schedule to 0.1× with 5 % warmup, ``evaluations`` evaluations, telemetry
    (weight, output RMS, max logits, update RMS) every ``telemetry_every`` steps."""
    steps = p["train_tokens"] // (p["seq_len"] * p["batch_size"])
    base = TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], n_layers=p["n_layers"], n_heads=p["n_heads"], seq_len=p["seq_len"],
        batch_size=p["batch_size"], train_tokens=p["train_tokens"], lr=p["lr"], schedule="cosine",
        warmup_steps=max(1, steps // 20), eval_every=max(1, steps // p["evaluations"]), eval_batches=8,
        log_every=max(1, min(10, p["telemetry_every"])), telemetry_every=p["telemetry_every"],
        checkpoint_every=max(1, steps // 4), compile=p["compile"], device=p["device"],
    )
    return [PlannedRun(f"{arm}-s{seed}", base.replace(seed=seed, **changes))
            for seed in p["seeds"] for arm, changes in _arms(p).items()]


def _cell(numbers: Mapping[str, Any] | None, digits: int = 4) -> str:
    if numbers is None:
        return "—"
    spread = f" ± {numbers['std']:.{digits}f}" if numbers["std"] is not None else ""
    return f"{numbers['mean']:.{digits}f}{spread}"


def _loss_table(numbers: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| arm | final val loss | val loss at 36 % of training | epochs |", "|---|---|---|---|"]
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
    lines.append("| max over layers, peak over training | "
                 + " | ".join(_cell(numbers[a]["peak_max_logit"], 2) for a in arms) + " |")
    return "\n".join(lines)


def _setting(p: Mapping[str, Any], runs: Sequence[Run], numbers: Mapping[str, Mapping[str, Any]]) -> str:
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
        f"norms at the same lr), AdamW lr {p['adamw_lr']:g}; λ = {p['weight_decay']:g} where on; cosine schedule "
        "to 0.1× after 5 % warmup. One lr for all arms, as Moonlight reuses AdamW's (the cpu preset's 3e-3 is "
        "AdamW's best of {1e-3, 3e-3, 1e-2} in 800-step probes with seed 0; the gpu preset's is not tuned).",
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
    runs = list(finished.runs.values())
    groups = plots.group_by_arm(runs)
    numbers, differences = numbers_by_arm(groups)
    hidden, norms = plots.matrix_types(runs), plots.norm_types(runs)
    checks = [c for c in (early_lead_claim(groups, differences), final_loss_claim(groups, differences),
                          rms_growth_claim(numbers, hidden), norm_decay_claim(numbers), max_logit_claim(numbers))
              if c is not None]
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
    results = {"arms": numbers, "muon_nowd_minus_wd": differences, "claims": [asdict(c) for c in checks]}
    val = {a: MeanStd(**n["final_val_loss"]) for a, n in numbers.items()}
    summary = "; ".join(f"{plots.ARM_LABELS.get(a, a)}: final val loss {v}" for a, v in val.items())
    sections = [
        ("Setting", _setting(p, runs, numbers)),
        ("Validation loss by arm", _loss_table(numbers)),
        ("Weight and block-output RMS by arm",
         _rms_table(numbers, [*(f"weight_rms/{t}" for t in hidden + norms), "output_rms/max"])),
        ("Max attention logit by arm", _logit_table(numbers)),
        ("Paper claim vs small-scale result", claim_section(checks)),
    ]
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)


STUDY = Study(
    name="weight-decay",
    title="muonlab weight-decay: Muon needs weight decay when over-training (Moonlight Figure 2, App. D)",
    claim="Moonlight (arXiv 2502.16982 §2.2, Figure 2): over-training 5× past compute-optimal, vanilla Muon leads "
          "early (0.023 at 24k iterations) but its weight and output RMS keep growing, and Muon with weight decay "
          "wins late (0.017 at 66k); App. D: weight decay on the norm gains bounds every layer's output RMS.",
    presets=PRESETS,
    plan=plan,
    analyse=analyse,
)
