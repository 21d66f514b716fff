"""The numbers and claim checks of the ``weight-decay`` study (``weight_decay.py``), from its run folders.

Per arm (``analysis.weight_decay_plots.arm_of``), mean ± sample std over seeds of: the final validation
loss and the loss at ``EARLY_FRACTION`` of training; for every logged ``weight_rms/<type>`` and
``output_rms/…`` key its final value and its growth over the second half of training
(value at the end / value at mid-training − 1: ≈ 0 for a plateau); the peak max attention logit per
layer over the first ``LOGIT_WINDOW`` of training, and over all of it. The Muon (no wd) − Muon (wd)
validation-loss difference is taken per seed (the two runs of a seed share initialisation and data
order), then averaged.

The claims (PAPERS.md §5.1): M5 (vanilla Muon leads early, Muon + weight decay wins late, and only
without weight decay do the weight and output RMS keep growing), M12 (weight decay on the norm gains
keeps every block's output RMS lower) and M11 (Muon's early max logit ≥ AdamW's in some layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ...analysis.runs import Run
from ...analysis.weight_decay_plots import ARM_LABELS, paired_difference
from ..protocol import MIN_SEEDS, ClaimCheck, Gap, MeanStd, epochs, mean_std

__all__ = ["EARLY_FRACTION", "LOGIT_WINDOW", "decay_exponent", "early_lead_claim", "final_loss_claim",
           "max_logit_claim", "norm_decay_claim", "numbers_by_arm", "rms_growth_claim", "value_at"]

EARLY_FRACTION = 24_000 / 66_000
"""Where Moonlight's vanilla Muon leads (iteration 24k of the 66k in Figure 2), as a fraction of training."""
LOGIT_WINDOW = 0.2
"""The "early" training of App. D's max-logit claim: the first fifth of the steps (fixed before the runs)."""


def value_at(run: Run, key: str, fraction: float) -> tuple[int, float] | None:
    """``(step, value)`` of ``key`` at the logged step nearest ``fraction`` of the run's steps; None if unlogged."""
    steps, _, values = run.series(key)
    if not len(steps):
        return None
    target = fraction * float(run.config.get("total_steps") or steps[-1])
    i = int(np.argmin(np.abs(steps - target)))
    return int(steps[i]), float(values[i])


def _late_growth(run: Run, key: str) -> float | None:
    """``key`` at the end / ``key`` at mid-training − 1."""
    mid, end = value_at(run, key, 0.5), value_at(run, key, 1.0)
    return None if mid is None or end is None or mid[1] == 0 else end[1] / mid[1] - 1


def _early_peak(run: Run, key: str) -> float | None:
    """The largest ``key`` logged in the first ``LOGIT_WINDOW`` of the run's steps."""
    steps, _, values = run.series(key)
    early = values[steps <= LOGIT_WINDOW * float(run.config.get("total_steps") or steps[-1])]
    return float(early.max()) if len(early) else None


def decay_exponent(run: Run) -> float | None:
    """λ·Σ_t η_t over the run: weight decay alone (W ← W − η_t·λ·W each step) would shrink a weight by
    e^(−this); the sum over steps is the trapezoid rule over the logged ``lr``. None with < 2 logged steps."""
    steps, _, lr = run.series("lr")
    if len(steps) < 2:
        return None
    return float(run.config.get("weight_decay", 0.0)) * float(np.sum(np.diff(steps) * (lr[1:] + lr[:-1]) / 2))


def _summary(values: Sequence[float | None]) -> dict[str, Any] | None:
    """``asdict(mean_std)`` of the values that exist; None when none does."""
    present = [v for v in values if v is not None]
    return asdict(mean_std(present)) if present else None


def _keys(runs: Sequence[Run], prefix: str) -> list[str]:
    return sorted({k for run in runs for row in run.rows for k in row if k.startswith(prefix)})


def _arm_numbers(runs: Sequence[Run]) -> dict[str, Any]:
    rms_keys = _keys(runs, "weight_rms/") + _keys(runs, "output_rms/")
    logit_keys = _keys(runs, "max_logit/layer")
    return {
        "runs": [r.name for r in runs],
        "final_val_loss": _summary([r.final("val_loss") for r in runs]),
        "early_val_loss": _summary([at[1] if (at := value_at(r, "val_loss", EARLY_FRACTION)) else None
                                    for r in runs]),
        "epochs": _summary([epochs(r) for r in runs]),
        "decay_exponent": _summary([decay_exponent(r) for r in runs]),
        "rms": {key: {"final": _summary([r.final(key) for r in runs]),
                      "late_growth": _summary([_late_growth(r, key) for r in runs])} for key in rms_keys},
        "early_max_logit": {key.removeprefix("max_logit/"): _summary([_early_peak(r, key) for r in runs])
                            for key in logit_keys},
        "peak_max_logit": _summary([max((v for k in logit_keys for v in r.series(k)[2]), default=None)
                                    for r in runs]),
    }


def _difference_numbers(nowd: Sequence[Run], wd: Sequence[Run]) -> dict[str, Any] | None:
    """Muon (no wd) − Muon (wd) validation loss per seed over training: the curve, and where it is most negative
    (vanilla's largest lead), where it last turns positive (weight decay ahead from there on), and at the end."""
    got = paired_difference(wd, nowd, "val_loss")
    if got is None:
        return None
    steps, mean, std, per_seed = got
    lead = int(np.argmin(mean))
    positive_from = next((i for i in range(len(mean)) if (mean[i:] > 0).all()), None)
    return {
        "seeds": sorted(per_seed),
        "steps": steps.tolist(), "mean": mean.tolist(), "std": None if std is None else std.tolist(),
        "final": _summary([float(d[-1]) for d in per_seed.values()]),
        "largest_vanilla_lead": {"step": int(steps[lead]), "mean": float(mean[lead]),
                                 "std": None if std is None else float(std[lead])},
        "weight_decay_ahead_from_step": None if positive_from is None else int(steps[positive_from]),
    }


def numbers_by_arm(groups: Mapping[str, Sequence[Run]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(numbers per arm, Muon (no wd) − Muon (wd) difference numbers or None)`` (module docstring)."""
    numbers = {arm: _arm_numbers(runs) for arm, runs in groups.items()}
    differences = (_difference_numbers(groups["muon-nowd"], groups["muon-wd"])
                   if "muon-nowd" in groups and "muon-wd" in groups else None)
    return numbers, differences


def _gap_text(gap: Gap, what: str) -> str:
    if gap.spread is None:
        return f"{what} = {gap.difference:+.4f} nats; spread unknown (one seed)"
    return (f"{what} = {gap.difference:+.4f} nats, {gap.in_spreads:.1f}× the larger seed std {gap.spread:.4f} "
            f"({'separated' if gap.separated else 'within the spread'})")


def _direction(gap: Gap, expected_sign: int) -> bool | None:
    """Whether ``gap.difference`` has the expected sign, when the gap separates the arms; None otherwise."""
    return (gap.difference * expected_sign > 0) if gap.separated else None


def _paired_at(differences: Mapping[str, Any] | None, step: int) -> str:
    """The per-seed Muon (no wd) − Muon (wd) difference at ``step``, as text ('' when not computed there)."""
    if not differences or step not in differences["steps"]:
        return ""
    i = differences["steps"].index(step)
    std = differences["std"][i] if differences["std"] else None
    spread = f" ± {std:.4f}" if std is not None else ""
    return f"; paired per seed {differences['mean'][i]:+.4f}{spread} ({len(differences['seeds'])} seeds)"


def early_lead_claim(groups: Mapping[str, Sequence[Run]], differences: Mapping[str, Any] | None) -> ClaimCheck | None:
    """M5, early part: vanilla Muon is ahead of Muon + weight decay at ``EARLY_FRACTION`` of training."""
    if "muon-nowd" not in groups or "muon-wd" not in groups:
        return None
    at = {arm: [value_at(r, "val_loss", EARLY_FRACTION) for r in groups[arm]] for arm in ("muon-nowd", "muon-wd")}
    gap = Gap(mean_std(v for _, v in at["muon-wd"]), mean_std(v for _, v in at["muon-nowd"]))
    step = at["muon-wd"][0][0]
    return ClaimCheck(
        paper="Vanilla Muon converges faster at first: it leads Muon with weight decay by 0.023 at iteration 24k "
              "of 66k (Moonlight Figure 2)",
        result=f"validation loss at step {step} ({100 * EARLY_FRACTION:.0f} % of training): Muon (no wd) {gap.b}, "
               f"Muon (wd) {gap.a}",
        agrees=_direction(gap, -1),
        by_how_much=_gap_text(gap, "no wd − wd") + " (paper: −0.023)" + _paired_at(differences, step),
    )


def final_loss_claim(groups: Mapping[str, Sequence[Run]], differences: Mapping[str, Any] | None) -> ClaimCheck | None:
    """M5, the end: Muon + weight decay ends at a lower validation loss than vanilla Muon (and than AdamW)."""
    if "muon-nowd" not in groups or "muon-wd" not in groups:
        return None
    final = {arm: mean_std(r.final("val_loss") for r in runs) for arm, runs in groups.items()}
    gap = Gap(final["muon-wd"], final["muon-nowd"])
    text = _gap_text(gap, "no wd − wd") + " (paper: +0.017)"
    if differences and differences["final"]:
        text += f"; paired per seed {MeanStd(**differences['final'])}"
        if differences["weight_decay_ahead_from_step"] is not None:
            text += f"; weight decay ahead from step {differences['weight_decay_ahead_from_step']} on"
    if "adamw" in final:
        text += f"; AdamW − Muon (wd) = {final['adamw'].mean - final['muon-wd'].mean:+.4f}"
    return ClaimCheck(
        paper="Over-trained (≈ 5× compute-optimal tokens), Muon with weight decay ends below vanilla Muon: it wins "
              "by 0.017 at iteration 66k, and below AdamW (Moonlight Figure 2)",
        result=f"final validation loss: Muon (no wd) {gap.b}, Muon (wd) {gap.a}"
               + (f", AdamW {final['adamw']}" if "adamw" in final else ""),
        agrees=_direction(gap, +1),
        by_how_much=text,
    )


def _verdict(gaps: Sequence[Gap]) -> str:
    """``holds`` when every gap separates its arms with b > a, ``contradicts`` when one separates them with
    b < a, else ``within noise``."""
    if any(g.separated and g.difference < 0 for g in gaps):
        return "contradicts"
    return "holds" if all(g.separated and g.difference > 0 for g in gaps) else "within noise"


def rms_growth_claim(numbers: Mapping[str, Any], matrix_types: Sequence[str]) -> ClaimCheck | None:
    """M5, the mechanism: without weight decay the weight and block-output RMS grow more over the second half
    of training and end higher than with it (each gap beyond the seed spread), for every hidden-matrix type
    shown and the max block output; one such gap the other way disagrees."""
    if "muon-nowd" not in numbers or "muon-wd" not in numbers:
        return None
    keys = [f"weight_rms/{t}" for t in matrix_types] + ["output_rms/max"]
    rows, verdicts = [], []
    for key in keys:
        nowd, wd = numbers["muon-nowd"]["rms"].get(key), numbers["muon-wd"]["rms"].get(key)
        if not (nowd and wd and nowd["late_growth"] and wd["late_growth"]):
            continue
        growth = Gap(MeanStd(**wd["late_growth"]), MeanStd(**nowd["late_growth"]))
        final = Gap(MeanStd(**wd["final"]), MeanStd(**nowd["final"]))
        verdicts.append(_verdict([growth, final]))
        rows.append(f"{key.split('/', 1)[1].removeprefix('layers.*.')}: {100 * growth.b.mean:+.1f} % vs "
                    f"{100 * growth.a.mean:+.1f} %, ends {final.b.mean / final.a.mean:.3f}× ({verdicts[-1]})")
    if not verdicts:
        return None
    return ClaimCheck(
        paper="Without weight decay the weight and layer-output RMS keep growing (past bf16's high-precision range "
              "at 800M), with weight decay they stay bounded (Moonlight §2.2)",
        result=f"the no-wd arm grew more over the second half and ended higher, both beyond the seed spread, in "
               f"{verdicts.count('holds')} of {len(verdicts)} quantities (hidden-matrix weight RMS types and the "
               f"max block-output RMS); the other way in {verdicts.count('contradicts')}",
        agrees=(False if "contradicts" in verdicts else True if set(verdicts) == {"holds"} else None),
        by_how_much="second-half growth, no wd vs wd, and final no-wd / wd: " + "; ".join(rows),
    )


def norm_decay_claim(numbers: Mapping[str, Any]) -> ClaimCheck | None:
    """M12: with weight decay on the norm gains, every block's output RMS ends lower than without it."""
    if "muon-wd" not in numbers or "muon-wd-nonorm" not in numbers:
        return None
    on, off = numbers["muon-wd"]["rms"], numbers["muon-wd-nonorm"]["rms"]
    layers = sorted(k for k in on if k.startswith("output_rms/layer") and k in off)
    lower = [k.removeprefix("output_rms/") for k in layers if on[k]["final"]["mean"] < off[k]["final"]["mean"]]
    gap = Gap(MeanStd(**off["output_rms/max"]["final"]), MeanStd(**on["output_rms/max"]["final"]))
    gains = [k for k in on if k.startswith("weight_rms/") and k.endswith("norm.weight") and k in off]
    spread = f"{gap.in_spreads:.1f}× the larger seed std {gap.spread:.3g}" if gap.spread else "spread unknown"
    gain_text = "; ".join(f"{k.removeprefix('weight_rms/')} {on[k]['final']['mean']:.3f} vs "
                          f"{off[k]['final']['mean']:.3f}" for k in gains)
    return ClaimCheck(
        paper="Weight decay on the RMSNorm gains prevents excessively high output RMS in each layer (Moonlight "
              "App. D: crucial for stability)",
        result=f"final max block-output RMS: norms decayed {gap.b}, not decayed {gap.a}; lower with decayed "
               f"gains in {len(lower)} of {len(layers)} blocks ({', '.join(lower) or 'none'})",
        agrees=_direction(gap, -1),
        by_how_much=f"decayed − not decayed = {gap.difference:+.3g} ({gap.difference / gap.a.mean:+.1%}; {spread}); "
                    f"final gain RMS, decayed vs not: {gain_text}",
    )


def max_logit_claim(numbers: Mapping[str, Any]) -> ClaimCheck | None:
    """M11: Muon's (λ > 0) peak max attention logit early in training ≥ AdamW's (same λ) in at least one layer."""
    if "adamw" not in numbers or "muon-wd" not in numbers:
        return None
    muon, adamw = numbers["muon-wd"]["early_max_logit"], numbers["adamw"]["early_max_logit"]
    layers = [k for k in muon if k in adamw and muon[k] and adamw[k]]
    if not layers:
        return None
    ratios = {k: muon[k]["mean"] / adamw[k]["mean"] for k in layers}
    seeds = min(muon[layers[0]]["n"], adamw[layers[0]]["n"])
    cells = "; ".join(f"{k}: Muon {MeanStd(**muon[k])}, AdamW {MeanStd(**adamw[k])}, ratio {r:.2f}"
                      for k, r in ratios.items())
    return ClaimCheck(
        paper="The max attention logit grows more under Muon early in training, past 100 in specific layers, "
              "while AdamW keeps it lower (Moonlight App. D)",
        result=f"peak max logit over the first {100 * LOGIT_WINDOW:.0f} % of training, "
               f"{ARM_LABELS['muon-wd']} vs {ARM_LABELS['adamw']}: Muon ≥ AdamW in "
               f"{sum(r >= 1 for r in ratios.values())} of {len(ratios)} layers",
        agrees=None if seeds < MIN_SEEDS else any(r >= 1 for r in ratios.values()),
        by_how_much=cells + " (the paper's > 100 needs scale: not expected here)",
    )
