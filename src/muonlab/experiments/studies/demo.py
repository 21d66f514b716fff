"""``demo``: Moonlight's central claim on a laptop CPU — Muon at AdamW's learning rate and weight decay.

The same small Llama-style model is trained on the built-in English corpus (the King James Bible)
with AdamW, and with Muon reusing AdamW's learning rate and weight decay unchanged: the
0.2·sqrt(max(A, B)) update scale (Moonlight, arXiv 2502.16982 §2.2) is what makes that possible.
Each optimizer is trained with several seeds (initialisation and data order; within a seed both
optimizers get the same ones), so the report can say whether the gap between the optimizers
exceeds the seed-to-seed spread. ``muonlab demo`` runs this study.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ...analysis import plots
from ...analysis.runs import Run
from ...train.config import TrainConfig
from ..protocol import ClaimCheck, Gap, MeanStd, claim_section, mean_std, paired_by_seed, tokens_to_reach
from ..study import Analysis, Finished, PlannedRun, Study

OPTIMIZERS = ("adamw", "muon")

PRESETS: dict[str, dict[str, Any]] = {
    # The fixed workload of the demo, the same on every machine so its numbers stay comparable: 6 runs of
    # 96 steps of 16 × 256 tokens (0.39 epochs of the English corpus), eager (on a 2-core CPU compiling costs
    # more than it saves at this length). lr: AdamW's best of {1.5e-3, 3e-3, 6e-3} on this workload (final
    # val loss 4.744 ± 0.026 and 4.725 ± 0.038 over 3 seeds, 5.018 with seed 0).
    "cpu": dict(
        seeds=(0, 1, 2), corpus="english", tokenizer="bpe", vocab_size=4096, model="demo", d_model=160,
        seq_len=256, batch_size=16, train_tokens=393_216, lr=3e-3, weight_decay=0.1, compile=False, device="auto",
    ),
    # One GPU: an 8-layer d=512 model on the larger Python corpus, 8.4M tokens a run (≈ 2.4 epochs).
    "gpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="bpe", vocab_size=8192, model="8", d_model=0,
        seq_len=512, batch_size=64, train_tokens=8_388_608, lr=3e-3, weight_decay=0.1, compile=True, device="cuda",
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


def _claim(gap: Gap, paired: MeanStd, speedup: MeanStd | None) -> ClaimCheck:
    muon_lower = gap.difference < 0
    size = (f"Muon {abs(gap.difference):.4f} nats {'lower' if muon_lower else 'higher'} at equal tokens "
            f"({gap.in_spreads:.1f}× the seed-to-seed std {gap.spread:.4f}); per seed, Muon − AdamW = {paired}"
            if gap.spread else f"Muon − AdamW = {gap.difference:+.4f} nats; spread unknown (one seed)")
    if speedup is not None:
        size += (f"; Muon reached AdamW's final validation loss with {speedup.mean:.2f}× fewer tokens "
                 f"({speedup}; paper: ≈ 2× less compute at equal loss)")
    return ClaimCheck(
        paper="Muon with the 0.2·sqrt(max(A, B)) scale reuses AdamW's lr and weight decay and trains better "
              "than AdamW (Moonlight §2.2; ≈ 2× compute efficiency, Figure 3)",
        result=f"final validation loss AdamW {gap.a}, Muon {gap.b}",
        agrees=muon_lower if gap.separated else None,
        by_how_much=size,
    )


def _speedup(pairs) -> MeanStd | None:
    """Per seed, AdamW's tokens over the tokens Muon needed to reach AdamW's final validation loss
    (interpolated between evaluations); None if a Muon run never reached it."""
    ratios = []
    for _, adamw, muon in pairs:
        needed = tokens_to_reach(muon, adamw.final("val_loss"))
        if needed is None:
            return None
        ratios.append(adamw.final("tokens") / needed)
    return mean_std(ratios)


def _headline(gap: Gap) -> str:
    """Each optimizer's final validation loss over the seeds, the gap, and whether it exceeds the spread."""
    lines = []
    for name, arm in (("adamw", gap.a), ("muon", gap.b)):
        spread = f"seed-to-seed std {arm.std:.4f}" if arm.std is not None else "seed-to-seed std unknown (one seed)"
        lines.append(f"- **{name}**: mean final validation loss {arm.mean:.4f} over {arm.n} "
                     f"seed{'s' if arm.n != 1 else ''}, {spread}")
    verdict = (f"It is {gap.in_spreads:.1f}× the larger seed-to-seed std ({gap.spread:.4f}), so it exceeds the "
               "spread between seeds." if gap.separated else
               "With fewer than 3 seeds, or a gap within the seed-to-seed std, these runs do not separate the "
               "optimizers.")
    direction = "lower" if gap.difference < 0 else "higher"
    return "\n".join([*lines, "", f"muon − adamw = {gap.difference:+.4f}: Muon's final validation loss is "
                                  f"{abs(gap.difference):.4f} nats {direction} than AdamW's. {verdict}"])


def analyse(finished: Finished) -> Analysis:
    """The gap between the optimizers' final validation losses against the seed-to-seed spread."""
    runs = list(finished.runs.values())
    pairs = paired_by_seed(runs, "adamw", "muon")
    adamw = mean_std(a.final("val_loss") for _, a, _ in pairs)
    muon = mean_std(m.final("val_loss") for _, _, m in pairs)
    gap = Gap(adamw, muon)
    paired = mean_std(m.final("val_loss") - a.final("val_loss") for _, a, m in pairs)
    speedup = _speedup(pairs)
    out = finished.out
    figures = [
        ("Validation loss vs tokens", plots.plot_val_loss(runs, out / "val_loss_vs_tokens.png", x="tokens")),
        ("Validation loss by optimizer, mean ± std over seeds",
         plots.plot_val_loss_by_optimizer(runs, out / "val_loss_by_optimizer.png")),
        ("Update RMS per step", plots.plot_update_rms(runs, out / "update_rms.png")),
    ]
    summary = (f"final validation loss: AdamW {adamw.mean:.4f}, Muon {muon.mean:.4f} (Muon "
               f"{'lower' if gap.difference < 0 else 'higher'} by {abs(gap.difference):.4f} nats; seed-to-seed std "
               + (f"{gap.spread:.4f})" if gap.spread is not None else "unknown with one seed)"))
    results = {
        "final_val_loss": {"adamw": asdict(adamw), "muon": asdict(muon)},
        "muon_minus_adamw": gap.difference,
        "paired_muon_minus_adamw": asdict(paired),
        "seed_std": gap.spread,
        "gap_in_seed_stds": gap.in_spreads,
        "separated": gap.separated,
        "tokens_ratio_to_adamw_final_loss": None if speedup is None else asdict(speedup),
    }
    sections = [("Headline", _headline(gap)),
                ("Paper claim vs small-scale result", claim_section([_claim(gap, paired, speedup)]))]
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)


STUDY = Study(
    name="demo",
    title="muonlab demo: Muon vs AdamW at AdamW's lr and weight decay",
    claim="Moonlight (arXiv 2502.16982 §2.2): with its update scaled by 0.2·sqrt(max(A, B)), Muon reuses "
          "AdamW's learning rate and weight decay unchanged and reaches a lower loss (≈ 2× compute efficiency).",
    presets=PRESETS,
    plan=plan,
    analyse=analyse,
)
