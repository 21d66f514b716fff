"""The ``sft`` study's numbers, paired verdicts and report sections, from its run folders.

Each cell's chosen lr is its sweep's (the best mean over fully seeded lrs); the cell's losses are ``{seed:
final fine-tuning validation loss}`` there. Verdicts are paired over seeds (``muonlab.analysis.paired``):
Muon/Muon against the best other cell, and, for the mismatched pair, Muon SFT − AdamW SFT on the AdamW
base, which agrees with "no significant advantage" when its 95 % interval lies above −``NO_ADVANTAGE_MARGIN``.
AdamW's base is searched to match Muon's (``plan.base_search``); the chosen bases' paired loss difference
says whether they were matched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ....analysis.lr_sweep import Bracket
from ....analysis.paired import MIN_SEEDS, PairedDifference
from ....analysis.runs import Run
from ...protocol import ClaimCheck, by_seed, claim_section, epochs, paired
from ...study import Analysis, Finished
from . import plots
from .plan import CELLS, OPTIMIZERS, base_search, losses_from, pretrain_name, pretrain_tokens, sweep_name, sweeps

__all__ = ["NO_ADVANTAGE_MARGIN", "analyse", "cell_runs", "claims"]

NO_ADVANTAGE_MARGIN = 0.02
"""Nats: "no significant advantage" of Muon SFT holds when Muon − AdamW SFT's 95 % interval lies above −this."""


def cell_runs(p: Mapping[str, Any], runs: Mapping[str, Run]) -> tuple[dict[tuple[str, str], dict[int, Run]],
                                                                      dict[tuple[str, str], Bracket]]:
    """Each cell's runs at its chosen lr, by seed (cells whose sweep is pending are left out), and the sweeps."""
    state = sweeps(p, losses_from(runs))
    out = {}
    for cell, sweep in state.items():
        if sweep.best is not None:
            out[cell] = {s: runs[n] for s in p["seeds"] if (n := sweep_name(*cell, sweep.best, s)) in runs}
    return out, state


def _label(cell: tuple[str, str]) -> str:
    return f"pretrain {cell[0]} → SFT {cell[1]}"


def claims(cells: Mapping[tuple[str, str], Mapping[int, float]]) -> list[ClaimCheck]:
    """Table 6's two claims from ``{cell: {seed: final fine-tuning loss}}`` (module docstring)."""
    mm = ("muon", "muon")
    others = [c for c in cells if c != mm]
    best_other = min(others, key=lambda c: np.mean(list(cells[c].values())))
    lead = paired(cells[best_other], cells[mm])  # Muon/Muon − the best other cell
    mismatched = paired(cells[("adamw", "adamw")], cells[("adamw", "muon")])
    interval = mismatched.interval
    if mismatched.verdict(-1) is True:
        no_advantage = False
    else:
        no_advantage = (True if mismatched.n >= MIN_SEEDS and interval is not None
                        and interval[0] > -NO_ADVANTAGE_MARGIN else None)
    return [
        ClaimCheck(
            paper="Muon-pretrained + Muon-SFT is the best pair (Table 6: e.g. MMLU 55.7 vs 55.3 / 50.2 / 52.0, "
                  "GSM8K 68.0 vs 62.1 / 64.9 / 64.6)",
            result="final fine-tuning validation loss: " + "; ".join(
                f"{_label(c)} {np.mean(list(v.values())):.4f}" for c, v in cells.items()),
            agrees=lead.verdict(-1),
            by_how_much=f"Muon/Muon − {_label(best_other)} (the best other cell) = {lead.text()}",
        ),
        ClaimCheck(
            paper="with a mismatched pair, SFT with Muon shows no significant advantage over AdamW (§3.5.1: "
                  "AdamW-pretrained, Muon vs AdamW SFT: MMLU 55.3 vs 52.0, HumanEval 53.7 vs 53.1)",
            result=f"AdamW-pretrained: SFT Muon {mismatched.mean_b:.4f}, SFT AdamW {mismatched.mean_a:.4f}",
            agrees=no_advantage,
            by_how_much=f"Muon − AdamW SFT = {mismatched.text()}; no advantage means the interval lies above "
                        f"−{NO_ADVANTAGE_MARGIN:g} nats",
        ),
    ]


def _sweep_table(state: Mapping[tuple[str, str], Bracket], runs: Mapping[str, Run], seeds) -> str:
    lines = ["| cell | lr: mean final loss (seeds) | chosen |", "|---|---|---|"]
    for cell, sweep in state.items():
        cells: dict[float, list[float]] = {}
        for lr, seed in sweep.cells:
            if (name := sweep_name(*cell, lr, seed)) in runs:
                cells.setdefault(lr, []).append(runs[name].final("val_loss"))
        text = ", ".join(f"{lr:g}: {np.mean(v):.4f} ({len(v)})" for lr, v in sorted(cells.items()))
        chosen = f"{sweep.best:g} ({sweep.status})" if sweep.best is not None else "pending"
        lines.append(f"| {_label(cell)} | {text} | {chosen} |")
    return "\n".join(lines)


def _bases(p: Mapping[str, Any], runs: Mapping[str, Run], multiple: float) -> dict[str, list[Run]]:
    """Each pretraining optimizer's finished bases, AdamW's at ``multiple``."""
    return {o: [runs[n] for s in p["seeds"] if (n := pretrain_name(o, s, multiple)) in runs] for o in OPTIMIZERS}


def _base_match(p: Mapping[str, Any], runs: Mapping[str, Run]) -> tuple[PairedDifference | None, str, dict]:
    """The chosen bases' paired difference (AdamW − Muon), a sentence, and the search as numbers."""
    multiples, chosen = base_search(p, runs)
    muon = by_seed(_bases(p, runs, 1.0)["muon"])
    tried = {m: paired(muon, by_seed(_bases(p, runs, m)["adamw"])) for m in multiples}
    search = {"multiples": multiples, "chosen": chosen, "tolerance": p["base_tolerance"],
              "gaps": {f"{m:g}": d.mean for m, d in tried.items() if d is not None}}
    d = tried.get(chosen) if chosen is not None else None
    if d is None:
        return None, "the AdamW base search did not finish", search
    steps = ", ".join(f"{m:g}× {tried[m].mean:+.4f}" for m in multiples if tried[m] is not None)
    matched = abs(d.mean) <= p["base_tolerance"]
    text = (f"AdamW bases at {steps} nats from Muon's (mean gap per multiple of Muon's tokens); chosen "
            f"{chosen:g}×: AdamW base − Muon base = {d.text()}: "
            + (f"matched (mean gap within ±{p['base_tolerance']:g} nats)" if matched else
               f"not matched within ±{p['base_tolerance']:g} nats after {len(multiples)} multiples (the closest is "
               "used; the fine-tuning comparison carries the gap)"))
    return d, text, search


def _setting(p: Mapping[str, Any], runs: Mapping[str, Run], chosen: float | None) -> str:
    bases = _bases(p, runs, chosen or 1.0)
    pre = bases["muon"] + bases["adamw"]
    tuned = [r for r in runs.values() if r.name.startswith("sft-")]
    pre_epochs = [e for e in (epochs(r) for r in pre) if e is not None]
    sft_epochs = [e for e in (epochs(r) for r in tuned) if e is not None]
    adamw = (f"AdamW {pretrain_tokens(p, chosen):,} ({chosen:g}×, the multiple that matched Muon's base loss best)"
             if chosen else "AdamW: base search unfinished")
    return "\n".join([
        f"- Pretraining: {pre[0].config.get('model')} model (d_model {p['d_model'] or 'preset'}), "
        f"{p['pretrain_corpus']} corpus, BPE vocabulary {p['vocab_size']}; Muon {pretrain_tokens(p):,} "
        f"tokens, {adamw}" + (f" (at most {max(pre_epochs):.2f} epochs)" if pre_epochs else "") + ", cosine "
        f"schedule, lr {p['lr']:g} and weight decay {p['weight_decay']:g} for both optimizers (Muon reuses AdamW's, "
        "§2.2).",
        f"- Fine-tuning: built-in python-functions set (signature + docstring → body; loss on the body only), "
        f"tokenized with the pretrained model's English BPE, {p['sft_tokens']:,} tokens per run"
        + (f" ({max(sft_epochs):.2f} epochs)" if sft_epochs else "") + f", no warmup, linear decay to 0 "
        f"(Moonlight §3.5.1), weight decay {p['sft_weight_decay']:g}; each cell's lr bracketed from "
        f"{', '.join(f'{x:g}' for x in p['sft_lrs'])} (×{p['sft_lr_step']:g} steps past an edge, caps "
        f"{p['sft_lr_caps'][0]:g}–{p['sft_lr_caps'][1]:g}; every seed at the best lr and its neighbours).",
    ])


def analyse(finished: Finished) -> Analysis:
    """Final fine-tuning validation loss per (pretrain, fine-tune) cell, paired over seeds, against the claims."""
    p, runs, out = finished.params, finished.runs, finished.out
    by_cell, state = cell_runs(p, runs)
    losses = {cell: by_seed(rs.values()) for cell, rs in by_cell.items()}
    checks = claims(losses) if set(losses) == set(CELLS) else []
    base, base_text, search = _base_match(p, runs)
    groups = {_label(c): list(rs.values()) for c, rs in by_cell.items()}
    figures = [
        ("Final fine-tuning validation loss per cell (mean ± std over seeds)",
         plots.plot_cells(groups, out / "sft_cells.png")),
        ("Fine-tuning validation loss over training per cell (mean ± std over seeds)",
         plots.plot_curves(groups, out / "sft_curves.png")),
        ("Learning-rate sweeps (first seed)",
         plots.plot_sweep({_label(c): {lr: runs[n] for lr, s in sweep.cells if s == p["seeds"][0]
                                        and (n := sweep_name(*c, lr, s)) in runs} for c, sweep in state.items()},
                          out / "sft_lr_sweep.png")),
        ("Pretraining validation loss per optimizer",
         plots.plot_curves(_bases(p, runs, search["chosen"] or 1.0), out / "pretrain_curves.png")),
    ]
    means = {c: float(np.mean(list(v.values()))) for c, v in losses.items()}
    results = {
        "cells": {f"{pre}->{sft}": {"lr": state[(pre, sft)].best, "status": state[(pre, sft)].status,
                                    "by_seed": {str(s): v for s, v in losses.get((pre, sft), {}).items()}}
                  for pre, sft in CELLS},
        "base_adamw_minus_muon": base.as_dict() if base else None, "base_search": search,
        "claims": [c.__dict__ for c in checks], "claims_agree": [c.agrees for c in checks],
    }
    table = ["| pretrain \\ SFT | AdamW | Muon |", "|---|---|---|"]
    for pre in OPTIMIZERS:
        table.append(f"| {pre} | " + " | ".join(f"{means[(pre, t)]:.4f}" if (pre, t) in means else "—"
                                                 for t in OPTIMIZERS) + " |")
    summary = "final fine-tuning validation loss: " + ", ".join(f"{c[0]}→{c[1]} {v:.4f}" for c, v in means.items())
    sections = [("Headline", "Final fine-tuning validation loss (nats per trained token; lower is better), mean over "
                             "seeds at each cell's chosen learning rate (unpaired):\n\n" + "\n".join(table)
                 + f"\n\nBases: {base_text}."),
                ("Paper claim vs small-scale result", "Verdicts are paired over seeds (95 % t interval of the per-seed "
                 "differences).\n\n" + claim_section(checks)),
                ("Setting", _setting(p, runs, search["chosen"])),
                ("Learning-rate sweeps", _sweep_table(state, runs, p["seeds"]))]
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)
