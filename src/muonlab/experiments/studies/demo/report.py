"""The ``demo`` study's verdict: the paired difference of the final validation losses, Muon − AdamW.

Within a seed both optimizers start from the same weights and see the same batches, so the verdict is
read from the per-seed differences (``muonlab.analysis.paired``): Muon is lower when their 95 % t interval
lies below 0 with ≥ 3 seeds. The tokens Muon needed to reach AdamW's final loss are reported beside it as
what they are, a measure of *early-training speed* at this short horizon: Figure 3's ≈ 2× is a ratio of
compute-optimal runs' FLOPs at equal loss, which only the ``scaling`` study measures.
"""

from __future__ import annotations

from dataclasses import asdict

from ....analysis import plots
from ....analysis.paired import PairedDifference
from ...protocol import ClaimCheck, MeanStd, by_seed, claim_section, mean_std, paired, paired_by_seed, tokens_to_reach
from ...study import Analysis, Finished

__all__ = ["analyse", "claim", "speedup"]


def claim(difference: PairedDifference, speed: MeanStd | None) -> ClaimCheck:
    """Muon's final loss below AdamW's at AdamW's lr and weight decay: the paired verdict, with its interval."""
    size = f"Muon − AdamW = {difference.text()}"
    if speed is not None:
        size += (f"; early-training speed: Muon reached AdamW's final loss with {speed.mean:.2f}× fewer tokens "
                 f"({speed}) in this short run, which is not Figure 3's compute ratio at compute-optimal budgets "
                 "(see the scaling study)")
    return ClaimCheck(
        paper="Muon with the 0.2·sqrt(max(A, B)) scale reuses AdamW's lr and weight decay and reaches a lower loss "
              "than AdamW (Moonlight §2.2)",
        result=f"final validation loss AdamW {difference.mean_a:.4f}, Muon {difference.mean_b:.4f} "
               f"(paired over {difference.n} seeds)",
        agrees=difference.verdict(-1),
        by_how_much=size,
    )


def speedup(pairs) -> MeanStd | None:
    """Per seed, AdamW's tokens over the tokens Muon needed to reach AdamW's final validation loss
    (interpolated between evaluations); None if a Muon run never reached it."""
    ratios = []
    for _, adamw, muon in pairs:
        needed = tokens_to_reach(muon, adamw.final("val_loss"))
        if needed is None:
            return None
        ratios.append(adamw.final("tokens") / needed)
    return mean_std(ratios)


def _headline(d: PairedDifference) -> str:
    lines = [f"- **{name}**: mean final validation loss {mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
             + f" over {d.n} seed{'s' if d.n != 1 else ''} (unpaired)"
             for name, mean, std in (("adamw", d.mean_a, d.std_a), ("muon", d.mean_b, d.std_b))]
    verdict = ("The 95 % interval of the per-seed differences excludes 0: the runs separate the optimizers."
               if d.separated else "The runs do not separate the optimizers (the interval of the per-seed "
               "differences includes 0, or fewer than 3 seeds).")
    return "\n".join([*lines, "", f"muon − adamw, paired per seed: {d.text()}. {verdict}"])


def analyse(finished: Finished) -> Analysis:
    """The paired difference of the optimizers' final validation losses, and the plots."""
    runs = list(finished.runs.values())
    pairs = paired_by_seed(runs, "adamw", "muon")
    difference = paired(by_seed(a for _, a, _ in pairs), by_seed(m for _, _, m in pairs))
    speed = speedup(pairs)
    out = finished.out
    figures = [
        ("Validation loss vs tokens", plots.plot_val_loss(runs, out / "val_loss_vs_tokens.png", x="tokens")),
        ("Validation loss by optimizer, mean ± std over seeds",
         plots.plot_val_loss_by_optimizer(runs, out / "val_loss_by_optimizer.png")),
        ("Update RMS per step", plots.plot_update_rms(runs, out / "update_rms.png")),
    ]
    summary = (f"final validation loss: AdamW {difference.mean_a:.4f}, Muon {difference.mean_b:.4f}; Muon − AdamW "
               f"paired {difference.mean:+.4f}" + (f" [{difference.interval[0]:+.4f}, {difference.interval[1]:+.4f}]"
                                                  if difference.interval else "")
               + (" (separated)" if difference.separated else " (not separated)"))
    results = {
        "final_val_loss": {"adamw": asdict(mean_std(a.final("val_loss") for _, a, _ in pairs)),
                           "muon": asdict(mean_std(m.final("val_loss") for _, _, m in pairs))},
        "muon_minus_adamw": difference.as_dict(),
        "separated": difference.separated,
        "early_tokens_ratio_to_adamw_final_loss": None if speed is None else asdict(speed),
    }
    sections = [("Headline", _headline(difference)),
                ("Paper claim vs small-scale result", claim_section([claim(difference, speed)]))]
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)

