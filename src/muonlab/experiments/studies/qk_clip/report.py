"""The ``qk-clip`` study's numbers and claims, from its run folders.

Arms: at the shared lr, ``muon``, ``muon+qk-clip`` and ``adamw``; at each optimizer's own best lr (its
bracketed sweep's choice), ``muon@own`` and ``adamw@own``. Every claim that compares arms is paired over
seeds (``muonlab.analysis.paired``); thresholds fixed before the runs: ``BOUND_SLACK`` and
``NO_PENALTY_MARGIN``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from ....analysis.logits import band, max_over_layers, plot_max_logits
from ....analysis.paired import MIN_SEEDS, PairedDifference
from ....analysis.runs import Run
from ...protocol import ClaimCheck, MeanStd, by_seed, claim_section, mean_std, paired
from ...study import Analysis, Finished
from . import plan as qk_plan
from . import plots

__all__ = ["BOUND_SLACK", "NO_PENALTY_MARGIN", "arms", "bound_claim", "logit_claim", "loss_claim", "peak"]

BOUND_SLACK = 0.10
"""How far above τ the clipped runs' pre-clip max logit may get and still count as bounded at τ (fixed
before the runs): the logit is measured on the next batch, after one more update, so it can exceed τ."""
NO_PENALTY_MARGIN = 0.02
"""K2's "no loss penalty" holds when the 95 % interval of QK-Clip − Muon (paired) lies below this many nats."""


def peak(run: Run, every: int | None = None) -> float:
    """The largest pre-clip max logit over layers and logged steps (only steps divisible by ``every`` if given)."""
    steps, values = band([run], "max_logit/max")[:2]
    return float(max(v for s, v in zip(steps, values) if every is None or s % every == 0))


def arms(p: Mapping[str, Any], runs: Mapping[str, Run]) -> tuple[dict[str, dict[int, Run]], dict[str, Any]]:
    """``({arm: {seed: run}}, {optimizer: {"lr", "status"}})``: the shared-lr arms, and each optimizer at its own
    chosen lr once its sweep is complete (left out while it is pending)."""
    out: dict[str, dict[int, Run]] = {"muon": {}, "muon+qk-clip": {}, "adamw": {}}
    for s in p["seeds"]:
        for arm, variant in (("muon", "muon"), ("muon+qk-clip", "muon-qkclip"), ("adamw", "adamw")):
            name = qk_plan.run_name(variant, p["lr"], s)
            if name in runs:
                out[arm][s] = runs[name]
    chosen = {}
    for o, state in qk_plan.brackets(p, qk_plan.losses_from(runs)).items():
        chosen[o] = {"lr": state.best, "status": state.status}
        if state.best is not None:
            out[f"{o}@own"] = {s: runs[n] for s in p["seeds"] if (n := qk_plan.run_name(o, state.best, s)) in runs}
    return {a: r for a, r in out.items() if r}, chosen


def bound_claim(tau: float, muon: Mapping[int, float], clip: Mapping[int, float]) -> ClaimCheck:
    """QK-Clip caps the max logit at τ: every clipped seed's peak within ``BOUND_SLACK`` of τ while unclipped Muon
    exceeds τ (a single seed above disproves it; fewer than ``MIN_SEEDS`` cannot show it)."""
    muon_peak, clip_peak = max(muon.values()), max(clip.values())
    over = clip_peak / tau - 1
    if muon_peak <= tau:
        agrees = None
    elif over > BOUND_SLACK:
        agrees = False
    else:
        agrees = True if len(clip) >= MIN_SEEDS else None
    return ClaimCheck(
        paper="QK-Clip caps the max attention logit at τ (K2 §2.1: τ = 100, where unclipped Muon's max logits "
              "exceeded 1000)",
        result=f"peak pre-clip max logit over training, highest seed: Muon {muon_peak:.1f}, Muon + QK-Clip "
               f"{clip_peak:.1f} (τ = {tau:g}; {len(clip)} seeds)",
        agrees=agrees,
        by_how_much=(f"unclipped Muon reaches {muon_peak / tau:.2f}× τ; with QK-Clip the logit measured on the next "
                     f"batch gets at most {100 * over:+.1f} % {'above' if over > 0 else 'from'} τ "
                     f"(bounded counts up to +{100 * BOUND_SLACK:.0f} %)"
                     if muon_peak > tau else "cannot tell: unclipped Muon never exceeded τ"),
    )


def loss_claim(d: PairedDifference) -> ClaimCheck:
    """No loss penalty: QK-Clip − Muon separated above 0 disagrees; its 95 % interval below ``NO_PENALTY_MARGIN``
    (with ``MIN_SEEDS`` seeds) agrees; anything else cannot tell."""
    interval = d.interval
    if d.verdict(+1) is True:
        agrees = False
    else:
        agrees = True if d.n >= MIN_SEEDS and interval is not None and interval[1] < NO_PENALTY_MARGIN else None
    return ClaimCheck(
        paper="QK-Clip costs no loss (K2 §2.1: no loss penalty from QK-Clip)",
        result=f"final validation loss Muon {d.mean_a:.4f}, Muon + QK-Clip {d.mean_b:.4f} (shared lr)",
        agrees=agrees,
        by_how_much=f"QK-Clip − Muon = {d.text()}; no penalty means the interval lies below "
                    f"+{NO_PENALTY_MARGIN:g} nats",
    )


def logit_claim(own: PairedDifference | None, shared: PairedDifference, chosen: Mapping[str, Any],
                shared_lr: float) -> ClaimCheck:
    """Muon's peak max logit above AdamW's, paired over seeds, each optimizer at its own best lr (the verdict);
    at the shared lr beside it, labelled."""
    own_text = ("cannot tell: a sweep is not complete" if own is None else
                f"Muon at {chosen['muon']['lr']:g} ({chosen['muon']['status']}) − AdamW at {chosen['adamw']['lr']:g} "
                f"({chosen['adamw']['status']}) = {own.text('')}")
    return ClaimCheck(
        paper="the max attention logit grows more under Muon than under AdamW (Moonlight App. D; K2 §2.1)",
        result=f"peak max logit on telemetry steps, each optimizer at its own best lr: {own_text}",
        agrees=own.verdict(+1) if own is not None else None,
        by_how_much=f"at the shared lr {shared_lr:g} (labelled: AdamW far from its own optimum there): Muon − AdamW "
                    f"= {shared.text('')}",
    )


def _variant_numbers(runs: Mapping[int, Run], every: int) -> dict[str, Any]:
    peaks = [peak(r) for r in runs.values()]
    return {
        "runs": [r.name for r in runs.values()],
        "lr": float(next(iter(runs.values())).config["lr"]),
        "final_val_loss": asdict(mean_std(r.final("val_loss") for r in runs.values())),
        "peak_max_logit": asdict(mean_std(peaks)),
        "peak_max_logit_max_over_seeds": max(peaks),
        "peak_max_logit_on_telemetry_steps": asdict(mean_std(peak(r, every) for r in runs.values())),
        "final_max_logit": asdict(mean_std(band([r], "max_logit/max")[1][-1] for r in runs.values())),
    }


def _clip_stats(run: Run, tau: float) -> dict[str, Any]:
    """Per QK-Clip run: clipped heads summed over steps, steps that clipped, the smallest γ, first clip step,
    and how often / how far the pre-clip max logit went above τ."""
    steps, _, heads = run.series("qk_clip/heads_clipped")
    _, _, gamma = run.series("qk_clip/min_gamma")
    above = np.array([m for r in run.rows if (m := max_over_layers(r)) is not None and m > tau])
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
        "peak_over_tau": peak(run) / tau,
    }


def _logit(numbers: Mapping[str, Any]) -> str:
    """A ``MeanStd`` dict of max logits, to one decimal."""
    spread = f" ± {numbers['std']:.1f}" if numbers["std"] is not None else ""
    return f"{numbers['mean']:.1f}{spread}"


def _table(numbers: Mapping[str, Mapping[str, Any]], tau: float) -> str:
    lines = ["| arm (lr) | final val loss | peak max logit (mean ± std over seeds) | highest peak | peak on telemetry "
             "steps | final max logit | heads clipped over training (per run) |", "|---|---|---|---|---|---|---|"]
    for variant, n in numbers.items():
        clip = n.get("clipping")
        heads = ", ".join(str(c["heads_clipped_total"]) for c in clip.values()) if clip else "—"
        lines.append(f"| {variant} ({n['lr']:g}) | {MeanStd(**n['final_val_loss'])} | {_logit(n['peak_max_logit'])} | "
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
             f"- Shared lr {p['lr']:g} for Muon, Muon + QK-Clip and AdamW; each optimizer's own lr from its bracketed "
             f"sweep (grids {', '.join(f'{x:g}' for x in p['muon_lrs'])} for Muon, "
             f"{', '.join(f'{x:g}' for x in p['adamw_lrs'])} for AdamW, ×{p['lr_step']:g} steps past an edge); weight "
             f"decay {p['weight_decay']:g} for all, cosine schedule with 5 % warmup; the max logit is max over heads "
             "of max_ij q_i·k_j/√d on the step's batch, before that step's clipping."]
    if "muon" in numbers:
        peak = numbers["muon"]["peak_max_logit_max_over_seeds"]
        lines.append(f"- τ = {tau:g} is {tau / peak:.2f}× unclipped Muon's measured peak ({peak:.1f}): well below "
                     "it, so clipping acts for a large part of training (K2's τ = 100 is far below the logits "
                     "its unclipped runs reach).")
    return "\n".join(lines)


def _claims(p: Mapping[str, Any], arm: Mapping[str, Mapping[int, Run]], chosen: Mapping[str, Any]) -> list[ClaimCheck]:
    tau, every = float(p["tau"]), p["telemetry_every"]
    checks = []
    if "muon" in arm and "muon+qk-clip" in arm:
        checks.append(bound_claim(tau, {s: peak(r) for s, r in arm["muon"].items()},
                                  {s: peak(r) for s, r in arm["muon+qk-clip"].items()}))
        checks.append(loss_claim(paired(by_seed(arm["muon"].values()), by_seed(arm["muon+qk-clip"].values()))))
    if "muon" in arm and "adamw" in arm:
        logits = {a: {s: peak(r, every) for s, r in runs.items()} for a, runs in arm.items()}
        own = (paired(logits["adamw@own"], logits["muon@own"]) if "muon@own" in logits and "adamw@own" in logits
               else None)
        checks.append(logit_claim(own, paired(logits["adamw"], logits["muon"]), chosen, p["lr"]))
    return checks


def analyse(finished: Finished) -> Analysis:
    """Max logits and final validation loss by arm; whether QK-Clip bounds the logit, what it costs, and whether
    Muon's max logit exceeds AdamW's at their own lrs."""
    p, out = finished.params, finished.out
    tau = float(p["tau"])
    arm, chosen = arms(p, finished.runs)
    numbers = {a: _variant_numbers(runs, p["telemetry_every"]) for a, runs in arm.items()}
    if "muon+qk-clip" in numbers:
        numbers["muon+qk-clip"]["clipping"] = {r.name: _clip_stats(r, tau) for r in arm["muon+qk-clip"].values()}
    checks = _claims(p, arm, chosen)
    results = {"tau": tau, "chosen_lr": chosen, "variants": numbers, "claims": [asdict(c) for c in checks]}
    shared = [r for a in ("muon", "muon+qk-clip", "adamw") for r in arm.get(a, {}).values()]
    figures = [
        ("Max attention logit per layer over training at the shared lr (mean ± std over seeds; τ dashed)",
         plot_max_logits(shared, tau, out / "max_logit.png")),
        ("Max attention logit per layer, each optimizer at its own best lr",
         plot_max_logits([r for a in ("muon@own", "adamw@own") for r in arm.get(a, {}).values()], None,
                         out / "max_logit_own_lr.png")),
        ("Training and validation loss by variant at the shared lr (mean ± std over seeds)",
         plots.plot_losses(shared, out / "loss.png")),
        ("QK-Clip activity per run: heads clipped so far and the smallest γ at the steps that clipped",
         plots.plot_clipping(shared, out / "qk_clip.png")),
    ]
    summary = "; ".join(f"{a}: final val loss {MeanStd(**n['final_val_loss'])}, peak max logit "
                        f"{n['peak_max_logit_max_over_seeds']:.1f}" for a, n in numbers.items())
    sections = [("Setting", _setting_text(p, numbers, tau)), ("Numbers by arm", _table(numbers, tau))]
    if "muon+qk-clip" in numbers:
        sections.append(("Clipping", _clipping_text(numbers["muon+qk-clip"]["clipping"], tau)))
    if checks:
        sections.append(("Paper claim vs small-scale result", claim_section(checks)))
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)
