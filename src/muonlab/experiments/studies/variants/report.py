"""The ``variants`` study's verdicts, tables and report, from its run folders (the comparisons: ``claims``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...protocol import claim_section, protocol_section
from ...study import Analysis, Finished
from . import claims, plots
from . import plan as variants_plan

__all__ = ["analyse", "model_results"]


def model_results(p: Mapping[str, Any], runs, samples: int = 2000) -> dict[str, dict[str, Any]]:
    """Per model: ``claims.compare`` of the arms' sweeps, and where each arm's chosen lr sits in its grid."""
    sweeps = variants_plan.sweeps(p)
    cells = variants_plan.cells_from(runs)
    losses = {k: {(lr, s): v for lr, by_seed in c.items() for s, v in by_seed.items()} for k, c in cells.items()}
    state = sweeps.brackets(losses)
    out = {}
    for model in sweeps.models:
        result = claims.compare({a: cells.get((a, model), {}) for a in variants_plan.ARMS}, list(p["seeds"]), samples)
        for arm, row in result["arms"].items():
            row["status"] = state[(arm, model)].status
            row["grid"] = list(state[(arm, model)].grid)
        out[model] = result
    return out


def _table(model: str, result: Mapping[str, Any]) -> str:
    lines = [f"**{model}**", "", "| arm | chosen lr | final val loss (mean ± std) | arm − Muon, paired t | "
             "with the lr choice |", "|---|---|---|---|---|"]
    for arm, row in result["arms"].items():
        where = "" if row["status"] == "interior" else f" ({row['status']})"
        spread = f" ± {row['std']:.4f}" if row["std"] is not None else ""
        d = result["differences"].get(arm)
        paired = selection = "—"
        if d is not None:
            t, s = d["paired"], d["selection"]
            paired = f"{t['mean']:+.4f}" + (f" [{t['low']:+.4f}, {t['high']:+.4f}]" if t["low"] is not None else "")
            selection = f"{s['point']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}]"
        lines.append(f"| {arm} | {row['lr']:g}{where} | {row['mean']:.4f}{spread} | {paired} | {selection} |")
    return "\n".join(lines)


def analyse(finished: Finished) -> Analysis:
    """Each arm at its own optimum in each model, the papers' claims checked against Moonlight Muon, plots."""
    p, out = finished.params, finished.out
    runs = list(finished.runs.values())
    models = model_results(p, runs)
    checked = claims.check_claims(models)
    interior = all(row["status"] == "interior" for r in models.values() for row in r["arms"].values())
    cells = variants_plan.cells_from(runs)
    figures = [("Every arm's sweep per model: mean final validation loss over seeds (filled: every seed)",
                plots.plot_sweeps(cells, list(p["models"]), list(p["seeds"]), out / "variants_sweeps.png")),
               ("Each arm − Moonlight Muon at their own chosen lrs: paired t interval (thick), with the lr choice "
                "(thin)", plots.plot_differences(models, out / "variants_differences.png"))]
    summary = "; ".join(f"{c.paper.split(' (')[0]}: {c.by_how_much}" for c, _ in checked)
    note = ("Every chosen lr is interior to its grid." if interior else
            "**Not every chosen lr is interior to its grid** (marked in the tables): that arm may be under-tuned.")
    sections = [
        ("Paper claims vs small-scale result", claim_section([c for c, _ in checked])),
        ("Arms at their own optimal learning rates", "\n\n".join(_table(m, r) for m, r in models.items())
         + f"\n\n{note} A verdict needs both intervals (95 %) on the same side of 0 (of the margin for per-head's "
         f"\"not worse\": {claims.NOT_WORSE:.1%} of Muon's loss) with ≥ 3 seeds."),
        ("Protocol", protocol_section(runs) + "\n- Learning rates: every arm's own bracketed sweep per model "
         "(the first seed over its grid, extended past an edge while the best is there, then every seed at the best "
         "and its neighbours); the intervals \"with the lr choice\" re-select both lrs in every bootstrap resample."),
    ]
    results = {"models": models, "all_interior": interior,
               "claims": [{"paper": c.paper, "result": c.result, "agrees": c.agrees, "per_model": per_model}
                          for c, per_model in checked],
               "claims_agree": [c.agrees for c, _ in checked]}
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)
