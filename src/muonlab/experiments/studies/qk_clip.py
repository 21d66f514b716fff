"""``qk-clip``: MuonClip's QK-Clip (Kimi K2, arXiv 2507.20534 §2.1) at small scale.

Moonlight (arXiv 2502.16982 App. D) notes that attention logits grow large under Muon; scaling Muon
to Kimi K2, the max logit exploded, and QK-Clip fixed it: after each optimizer step, every head whose
max pre-softmax logit S_max^h = max q_i·k_j/√d exceeded τ has its query and key weights scaled by
√(τ / S_max^h) each, so that its logit on that batch becomes τ. K2 reports no loss penalty.

The study trains one small Llama-style model (no QK-norm: muonlab's attention has none) in a setting
where the max logit grows large under Muon (a high learning rate, no weight decay, two heads of 64),
with three variants and several seeds each (the seed sets initialisation and data order; within a
seed every variant gets the same ones): Muon, Muon + QK-Clip at τ, and AdamW for reference. Max
logits are logged at every step with QK-Clip on (pre-clip, as the clipping reads them) and at every
``telemetry_every`` steps otherwise. The report says whether QK-Clip bounds the max logit at τ and
whether it costs loss, against the seed-to-seed spread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ...analysis import qk_clip_plots as plots
from ...analysis.runs import Run
from ...train.config import TrainConfig
from ..protocol import ClaimCheck, Gap, MeanStd, claim_section, mean_std
from ..study import Analysis, Finished, PlannedRun, Study

VARIANTS = ("muon", "muon+qk-clip", "adamw")
BOUND_SLACK = 0.10
"""How far above τ the clipped runs' pre-clip max logit may get and still count as bounded at τ (fixed
before the runs): the logit is measured on the next batch, after one more update, so it can exceed τ."""

PRESETS: dict[str, dict[str, Any]] = {
    # Found with short probes (see the report's "Setting"): d=128, 2 layers of 2 heads (head_dim 64), lr 2e-2,
    # no weight decay; unclipped Muon's max logit climbs past 2τ. 9 runs of 384 steps of 8 × 128 tokens.
    "cpu": dict(
        seeds=(0, 1, 2), corpus="english", tokenizer="bpe", vocab_size=4096, model="demo", d_model=128, n_layers=2,
        n_heads=2, seq_len=128, batch_size=8, train_tokens=393_216, lr=2e-2, adamw_lr=2e-2, weight_decay=0.0,
        tau=60.0, telemetry_every=8, compile=False, device="auto",
    ),
    # One GPU: the same recipe on a 6-layer d=384 model (head_dim 128) and the Python corpus. Not run yet: its τ is
    # the CPU preset's, not calibrated on this model; probe the unclipped peak first (--set tau=...).
    "gpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="bpe", vocab_size=8192, model="small", d_model=384, n_layers=6,
        n_heads=3, seq_len=512, batch_size=32, train_tokens=16_777_216, lr=2e-2, adamw_lr=2e-2, weight_decay=0.0,
        tau=60.0, telemetry_every=10, compile=True, device="cuda",
    ),
}


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """Per seed: ``muon-s<seed>``, ``muon-qkclip-s<seed>`` (QK-Clip at τ) and ``adamw-s<seed>`` (its own lr).

    Every run logs a metrics row at every step (so QK-Clip's per-step max logits and clip counts are
    all kept) and measures max logits and optimizer telemetry every ``telemetry_every`` steps.
    """
    steps = p["train_tokens"] // (p["seq_len"] * p["batch_size"])
    base = TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], n_layers=p["n_layers"], n_heads=p["n_heads"], seq_len=p["seq_len"],
        batch_size=p["batch_size"], train_tokens=p["train_tokens"], lr=p["lr"], weight_decay=p["weight_decay"],
        schedule="cosine", warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 8), eval_batches=8,
        log_every=1, telemetry_every=p["telemetry_every"], checkpoint_every=max(1, steps // 2),
        compile=p["compile"], device=p["device"],
    )
    runs = []
    for seed in p["seeds"]:
        runs += [PlannedRun(f"muon-s{seed}", base.replace(optimizer="muon", seed=seed)),
                 PlannedRun(f"muon-qkclip-s{seed}", base.replace(optimizer="muon", qk_clip_tau=p["tau"], seed=seed)),
                 PlannedRun(f"adamw-s{seed}", base.replace(optimizer="adamw", lr=p["adamw_lr"], seed=seed))]
    return runs


def _peak(run: Run, every: int | None = None) -> float:
    """The largest pre-clip max logit over layers and logged steps (only steps divisible by ``every`` if given)."""
    steps, values = plots.band([run], "max_logit/max")[:2]
    return float(max(v for s, v in zip(steps, values) if every is None or s % every == 0))


def _clip_stats(run: Run, tau: float) -> dict[str, Any]:
    """Per QK-Clip run: clipped heads summed over steps, steps that clipped, the smallest γ, first clip step,
    and how often / how far the pre-clip max logit went above τ."""
    steps, _, heads = run.series("qk_clip/heads_clipped")
    _, _, gamma = run.series("qk_clip/min_gamma")
    above = np.array([m for r in run.rows if (m := plots.max_over_layers(r)) is not None and m > tau])
    clipped_steps = steps[heads > 0]
    return {
        "heads_clipped_total": int(heads.sum()),
        "steps_with_clipping": int((heads > 0).sum()),
        "steps_measured": len(heads),
        "first_clip_step": int(clipped_steps[0]) if len(clipped_steps) else None,
        "min_gamma": float(gamma.min()) if len(gamma) else None,
        "steps_above_tau": len(above),
        "median_excess_over_tau": float(np.median(above) / tau - 1) if len(above) else None,
        "p90_excess_over_tau": float(np.percentile(above, 90) / tau - 1) if len(above) else None,
        "peak_over_tau": _peak(run) / tau,
    }


def _variant_numbers(runs: Sequence[Run], every: int) -> dict[str, Any]:
    peaks = [_peak(r) for r in runs]
    return {
        "runs": [r.name for r in runs],
        "final_val_loss": asdict(mean_std(r.final("val_loss") for r in runs)),
        "peak_max_logit": asdict(mean_std(peaks)),
        "peak_max_logit_max_over_seeds": max(peaks),
        "peak_max_logit_on_telemetry_steps": asdict(mean_std(_peak(r, every) for r in runs)),
        "final_max_logit": asdict(mean_std(plots.band([r], "max_logit/max")[1][-1] for r in runs)),
    }


def _bound_claim(tau: float, muon_peak: float, clip_peak: float) -> ClaimCheck:
    over = clip_peak / tau - 1
    agrees = None if muon_peak <= tau else (clip_peak <= tau * (1 + BOUND_SLACK))
    return ClaimCheck(
        paper="QK-Clip caps the max attention logit at τ (K2 §2.1: τ = 100, where unclipped Muon's max logits "
              "exceeded 1000)",
        result=f"peak pre-clip max logit over training and seeds: Muon {muon_peak:.1f}, Muon + QK-Clip {clip_peak:.1f} "
               f"(τ = {tau:g})",
        agrees=agrees,
        by_how_much=(f"unclipped Muon reaches {muon_peak / tau:.2f}× τ; with QK-Clip the logit measured on the next "
                     f"batch gets at most {100 * over:+.1f} % {'above' if over > 0 else 'from'} τ "
                     f"(bounded counts up to +{100 * BOUND_SLACK:.0f} %)"
                     if muon_peak > tau else "cannot tell: unclipped Muon never exceeded τ"),
    )


def _loss_claim(muon: MeanStd, clip: MeanStd, paired: MeanStd) -> ClaimCheck:
    gap = Gap(muon, clip)
    agrees = None if gap.spread is None or min(muon.n, clip.n) < 3 else (not gap.separated or gap.difference < 0)
    return ClaimCheck(
        paper="QK-Clip costs no loss (K2 §2.1: no loss penalty from QK-Clip)",
        result=f"final validation loss Muon {muon}, Muon + QK-Clip {clip}",
        agrees=agrees,
        by_how_much=(f"QK-Clip − Muon = {gap.difference:+.4f} nats ({gap.in_spreads:.1f}× the larger seed std "
                     f"{gap.spread:.4f}; {'separated' if gap.separated else 'within the spread'}); per seed "
                     f"{paired}" if gap.spread else f"QK-Clip − Muon = {gap.difference:+.4f} nats; spread unknown"),
    )


def _logit(numbers: Mapping[str, Any]) -> str:
    """A ``MeanStd`` dict of max logits, to one decimal."""
    spread = f" ± {numbers['std']:.1f}" if numbers["std"] is not None else ""
    return f"{numbers['mean']:.1f}{spread}"


def _table(numbers: Mapping[str, Mapping[str, Any]], tau: float) -> str:
    lines = ["| variant | final val loss | peak max logit (mean ± std over seeds) | highest peak | peak on telemetry "
             "steps | final max logit | heads clipped over training (per run) |", "|---|---|---|---|---|---|---|"]
    for variant, n in numbers.items():
        clip = n.get("clipping")
        heads = ", ".join(str(c["heads_clipped_total"]) for c in clip.values()) if clip else "—"
        lines.append(f"| {variant} | {MeanStd(**n['final_val_loss'])} | {_logit(n['peak_max_logit'])} | "
                     f"{n['peak_max_logit_max_over_seeds']:.1f} ({n['peak_max_logit_max_over_seeds'] / tau:.2f}× τ) | "
                     f"{_logit(n['peak_max_logit_on_telemetry_steps'])} | {_logit(n['final_max_logit'])} | "
                     f"{heads} |")
    return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:+.1f} %"


def _clipping_text(clip: Mapping[str, Mapping[str, Any]], tau: float) -> str:
    lines = [f"QK-Clip runs (τ = {tau:g}), per run: heads clipped summed over steps, steps that clipped of those "
             "measured, first clipping step, smallest γ, steps whose pre-clip max logit exceeded τ (and by how much: "
             "median and 90th percentile over those steps), peak / τ."]
    for name, c in clip.items():
        gamma = f"{c['min_gamma']:.3f}" if c["min_gamma"] is not None else "—"
        lines.append(f"- `{name}`: {c['heads_clipped_total']} heads clipped in {c['steps_with_clipping']} of "
                     f"{c['steps_measured']} steps (first at step {c['first_clip_step']}), min γ {gamma}, "
                     f"{c['steps_above_tau']} steps above τ (median {_percent(c['median_excess_over_tau'])}, "
                     f"90th percentile {_percent(c['p90_excess_over_tau'])} above), peak {c['peak_over_tau']:.3f}× τ")
    return "\n".join(lines)


def _setting_text(p: Mapping[str, Any], numbers: Mapping[str, Mapping[str, Any]], tau: float) -> str:
    head_dim = p["d_model"] // p["n_heads"]
    lines = [f"- Model: `{p['model']}` resized to d_model {p['d_model']}, {p['n_layers']} layers of {p['n_heads']} "
             f"heads (head_dim {head_dim}); no QK-norm (muonlab's attention normalises neither q nor k); "
             f"{p['train_tokens']:,} tokens in steps of {p['batch_size']} × {p['seq_len']} tokens.",
             f"- Muon lr {p['lr']:g}, AdamW lr {p['adamw_lr']:g}, weight decay {p['weight_decay']:g} for all, cosine "
             "schedule with 5 % warmup; the max logit is max over heads of max_ij q_i·k_j/√d on the step's batch, "
             "before that step's clipping."]
    if "muon" in numbers:
        peak = numbers["muon"]["peak_max_logit_max_over_seeds"]
        lines.append(f"- τ = {tau:g} is {tau / peak:.2f}× unclipped Muon's measured peak ({peak:.1f}): well below "
                     "it, so clipping acts for a large part of training (K2's τ = 100 is far below the logits "
                     "its unclipped runs reach).")
    return "\n".join(lines)


def analyse(finished: Finished) -> Analysis:
    """Max logits and final validation loss by variant; whether QK-Clip bounds the logit and what it costs."""
    p, out = finished.params, finished.out
    tau, runs = float(p["tau"]), list(finished.runs.values())
    groups = plots.group_by_variant(runs)
    numbers = {v: _variant_numbers(groups[v], p["telemetry_every"]) for v in VARIANTS if v in groups}
    if "muon+qk-clip" in numbers:
        numbers["muon+qk-clip"]["clipping"] = {r.name: _clip_stats(r, tau) for r in groups["muon+qk-clip"]}
    val = {v: MeanStd(**n["final_val_loss"]) for v, n in numbers.items()}
    checks, results = [], {"tau": tau, "variants": numbers}
    if "muon" in numbers and "muon+qk-clip" in numbers:
        muon_peak = numbers["muon"]["peak_max_logit_max_over_seeds"]
        clip_peak = numbers["muon+qk-clip"]["peak_max_logit_max_over_seeds"]
        by_seed = {int(r.config["seed"]): r.final("val_loss") for r in groups["muon"]}
        paired = mean_std(r.final("val_loss") - by_seed[int(r.config["seed"])] for r in groups["muon+qk-clip"])
        gap = Gap(val["muon"], val["muon+qk-clip"])
        checks = [_bound_claim(tau, muon_peak, clip_peak), _loss_claim(val["muon"], val["muon+qk-clip"], paired)]
        results.update(clip_minus_muon_val_loss=gap.difference, paired_clip_minus_muon=asdict(paired),
                       seed_std=gap.spread, gap_in_seed_stds=gap.in_spreads, loss_gap_separated=gap.separated,
                       clip_peak_over_tau=clip_peak / tau, muon_peak_over_tau=muon_peak / tau,
                       bounded=checks[0].agrees, no_loss_penalty=checks[1].agrees)
    figures = [
        ("Max attention logit per layer over training (mean ± std over seeds; τ dashed)",
         plots.plot_max_logits(runs, tau, out / "max_logit.png")),
        ("Training and validation loss by variant (mean ± std over seeds)", plots.plot_losses(runs, out / "loss.png")),
        ("QK-Clip activity per run: heads clipped so far and the smallest γ at the steps that clipped",
         plots.plot_clipping(runs, out / "qk_clip.png")),
    ]
    summary = "; ".join(f"{v}: final val loss {val[v]}, peak max logit "
                        f"{numbers[v]['peak_max_logit_max_over_seeds']:.1f}" for v in numbers)
    sections = [("Setting", _setting_text(p, numbers, tau)), ("Numbers by variant", _table(numbers, tau))]
    if "muon+qk-clip" in numbers:
        sections.append(("Clipping", _clipping_text(numbers["muon+qk-clip"]["clipping"], tau)))
    if checks:
        sections.append(("Paper claim vs small-scale result", claim_section(checks)))
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)


STUDY = Study(
    name="qk-clip",
    title="muonlab qk-clip: QK-Clip bounds Muon's max attention logit (MuonClip, Kimi K2)",
    claim="Kimi K2 (arXiv 2507.20534 §2.1): under Muon the max attention logit explodes without QK-norm; "
          "QK-Clip (rescale a head's W_q, W_k by √(τ/S_max) after each step when S_max > τ) caps it at τ "
          "with no loss penalty.",
    presets=PRESETS,
    plan=plan,
    analyse=analyse,
)
