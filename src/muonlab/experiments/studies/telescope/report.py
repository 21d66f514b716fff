"""The ``telescope`` study's numbers, claims and report sections, from what its runs measured.

Kept apart from the plan (``plan``) so each reads in one sitting; the plots are ``plots``.
Distances between (lr, λ) points are counted in *cells*:
``|log(a / b)| / log(spacing)`` per hyperparameter, with the spacing of the last calibration level
(the fine mesh) or of the brute-force grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ....analysis.fits import fit_saturating_power
from ....analysis.paired import MIN_SEEDS, PairedDifference
from ....analysis.runs import Run
from ...protocol import ClaimCheck, by_seed, claim_section, mean_std, paired
from ...study import Analysis, Finished
from ...telescoping import Level, best_point, ledger
from . import plots
from .plan import (
    HPARAMS,
    brute_grid,
    brute_names,
    check_name,
    final_loss,
    final_name,
    level_names,
    levels,
    run_flops,
)

PAPER_ALPHA, PAPER_E = 0.31, 1.31
"""The paper's fit of the per-level minimum losses, L(d) = A/d^α + E (§3.4; nats at its scale)."""
PAPER_SAVED = 0.5
"""Compute saved against a full grid at the final size: "typically higher than 50 %" (Figure 13)."""
_LABEL = {"lr": "lr", "weight_decay": "λ"}
EVEN_COST = 2.0
"""Levels "cost about the same" here when the dearest level costs at most this many times the cheapest."""


@dataclass(frozen=True)
class Search:
    """What the runs measured: each calibration level's grid with its runs (in grid order), the
    brute-force grid with its runs, the final run, the telescoped choice, the seed-noise runs per arm
    ("telescoped", "brute"), the searched hyperparameters and the training FLOPs of one run per width.
    ``brute_status``: whether the brute-force grid's best point ended "interior" or "at the cap"."""

    levels: list[tuple[Level, list[Run]]]
    brute: tuple[Level, list[Run]]
    brute_status: str
    final: Run
    choice: dict[str, float]
    checks: Mapping[str, list[Run]]
    hparams: tuple[str, ...]
    flops: Mapping[int, float]


def _wall(run: Run) -> float:
    wall = run.final("wall_s")
    return 0.0 if wall is None else wall


def parabola_vertex(x: Sequence[float], y: Sequence[float]) -> float:
    """The x of the lowest point of the parabola through three points ``(x[i], y[i])``; the middle x when
    they are not convex (no minimum between them), clipped to ``[x[0], x[2]]``."""
    (x0, x1, x2), (y0, y1, y2) = x, y
    denominator = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denominator
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denominator
    if a <= 0:
        return x1
    return min(max(-b / (2 * a), min(x0, x2)), max(x0, x2))


def refined_optimum(grid: Level, losses: Sequence[float]) -> tuple[dict[str, float], dict[str, bool]]:
    """The grid's best point refined along each hyperparameter by a parabola in log space through it and its
    two neighbours on that axis (the others held); and, per hyperparameter, whether the best point lies on
    the grid's edge (then it is not refined: the optimum may lie beyond the grid)."""
    finite = [(loss, i) for i, loss in enumerate(losses) if math.isfinite(loss)]
    best = grid.points[min(finite)[1]]
    by_point = {tuple(p.values()): loss for p, loss in zip(grid.points, losses)}
    refined, edge = {}, {}
    for name in grid.center:
        values = sorted({p[name] for p in grid.points})
        k = values.index(best[name])
        edge[name] = k in (0, len(values) - 1)
        if edge[name]:
            refined[name] = best[name]
            continue
        trio = [values[k - 1], values[k], values[k + 1]]
        ys = [by_point.get(tuple({**best, name: v}.values()), math.nan) for v in trio]
        ok = all(math.isfinite(y) for y in ys)
        refined[name] = math.exp(parabola_vertex([math.log(v) for v in trio], ys)) if ok else best[name]
    return refined, edge


def cells_apart(a: Mapping[str, float], b: Mapping[str, float], spacing: Mapping[str, float]) -> dict[str, float]:
    """Per hyperparameter, ``|log(a / b)| / log(spacing)``: how many grid cells separate two points."""
    return {name: abs(math.log(a[name] / b[name])) / math.log(spacing[name]) for name in spacing}


def level_rows(search: Search) -> list[dict[str, Any]]:
    """Per calibration level: width, grid, centre, best point, min / spread of the loss, FLOPs and wall time."""
    rows = []
    for level, runs in search.levels:
        losses = [final_loss(r) for r in runs]
        finite = [v for v in losses if math.isfinite(v)]
        best = level.points[losses.index(min(finite))]
        rows.append({
            "level": level.index, "width": level.width, "runs": len(runs),
            "points_per_axis": round(len(runs) ** (1 / len(search.hparams))), "spacing": level.spacing,
            "center": level.center, "best": dict(best), "min_loss": min(finite),
            "spread": max(finite) - min(finite), "std": mean_std(finite).std, "losses": losses,
            "flops": len(runs) * search.flops[level.width], "wall_s": sum(_wall(r) for r in runs),
        })
    return rows


def measured_ledger(search: Search, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Training wall time per level, of the final run and of the brute-force grid, and the full grid at the
    final width estimated as level 0's grid size × the final run's time."""
    search_s = sum(r["wall_s"] for r in rows)
    final_s = _wall(search.final)
    full = len(search.levels[0][1]) * final_s
    return {"levels_s": [r["wall_s"] for r in rows], "search_s": search_s, "final_s": final_s,
            "brute_s": sum(_wall(r) for r in search.brute[1]), "full_grid_at_final_s": full,
            "saved_fraction_at_final_width": 1.0 - (search_s + final_s) / full if full else None}


def _location_claim(distance: Mapping[str, float], coarse: Mapping[str, float], edge: Mapping[str, bool],
                    width: int) -> ClaimCheck:
    """Within one fine cell of the refined brute-force optimum; an optimum on the grid's edge (the grid grew to
    its cap there) is named, since the true optimum may lie beyond it."""
    worst = max(distance.values())
    at_edge = [n for n, e in edge.items() if e]
    return ClaimCheck(
        paper="the telescoped (lr, λ) lies within one fine-grid cell of the brute-force optimum at the top "
              "calibration width (§3.4, Figure 6; E7b)",
        result=f"d={width}, from the refined brute-force optimum: "
               + "; ".join(f"{_LABEL[n]} {distance[n]:.2f} fine cells ({coarse[n]:.2f} brute-force cells)"
                           for n in distance)
               + (f"; the brute-force optimum is at the cap in {', '.join(_LABEL[n] for n in at_edge)} "
                  "(the grid may not grow further there; it may lie beyond)" if at_edge else ""),
        agrees=worst <= 1.0,
        by_how_much=f"at most {worst:.2f} fine cells apart (1 allowed)",
    )


def _noise_claim(d: PairedDifference, noise: float | None, width: int) -> ClaimCheck:
    """Within seed noise: the paired 95 % interval of telescoped − brute-force lies inside ± the seed-to-seed std
    of the brute-force optimum's runs (agrees), or entirely beyond it (disagrees); else cannot tell."""
    interval = d.interval
    if d.n < MIN_SEEDS or interval is None or not noise:
        agrees = None
    elif -noise < interval[0] and interval[1] < noise:
        agrees = True
    elif interval[0] >= noise or interval[1] <= -noise:
        agrees = False
    else:
        agrees = None
    return ClaimCheck(
        paper="the telescoped choice's loss is within seed noise of the brute-force optimum's (E7b)",
        result=f"d={width}, fresh seeds: telescoped {d.mean_b:.4f}, brute-force optimum {d.mean_a:.4f}",
        agrees=agrees,
        by_how_much=f"telescoped − brute-force = {d.text()}; within noise means the interval lies inside ± the "
                    f"brute-force runs' seed std ({noise:.4f})" if noise else f"telescoped − brute-force = {d.text()}",
    )


def _spread_claim(rows: Sequence[Mapping[str, Any]]) -> ClaimCheck:
    spreads = [r["spread"] for r in rows if r["runs"] > 1]
    shrinks = len(spreads) >= 2 and all(b < a for a, b in zip(spreads, spreads[1:]))
    return ClaimCheck(
        paper="each level of the telescope reduces the spread of the losses further (§3.4, Figure 14)",
        result="loss range (max − min) per level: " + ", ".join(f"L{r['level']} (d={r['width']}, {r['runs']} runs) "
                                                                f"{r['spread']:.4f}" for r in rows),
        agrees=shrinks if len(spreads) >= 2 else None,
        by_how_much=f"{spreads[0] / spreads[-1]:.1f}× narrower at the last searched level than at level 0"
        if len(spreads) >= 2 and spreads[-1] > 0 else "fewer than two searched levels",
    )


def _cost_claim(book: Mapping[str, Any], measured: Mapping[str, Any], widths: Sequence[int], final: int) -> ClaimCheck:
    c = book["final_cost"]
    expected = math.log2(final / widths[0]) + 1
    saved_s = measured["saved_fraction_at_final_width"]
    return ClaimCheck(
        paper=f"tuning costs O(C log N) and saves > {PAPER_SAVED:.0%} of a full grid at the final width "
              "(§3.3, Figure 13)",
        result=f"search + final = {book['total_cost'] / c:.2f} C in FLOPs (log2(N/N0) + 1 = {expected:g}); a full "
               f"{book['levels'][0]['runs']}-point grid at d={final} would cost "
               f"{book['full_grid_cost_at_final_width'] / c:.0f} C",
        agrees=book["saved_fraction_at_final_width"] > PAPER_SAVED,
        by_how_much=f"{book['saved_fraction_at_final_width']:.0%} of the FLOPs saved"
                    + (f", {saved_s:.0%} of the measured training time" if saved_s is not None else "")
                    + f"; the final run is {book['final_share']:.0%} of the total (paper: 20–99 %)",
    )


def _even_claim(rows: Sequence[Mapping[str, Any]], book: Mapping[str, Any]) -> ClaimCheck:
    flops = [r["cost"] for r in book["levels"]]
    walls = [r["wall_s"] for r in rows]
    ratio = max(walls) / min(walls) if min(walls) > 0 else math.inf
    return ClaimCheck(
        paper="each level costs about the same (4× fewer runs, each ≈ 4× dearer; §3.3; E7a: measured wall time)",
        result="training wall time per level: " + ", ".join(f"L{r['level']} {r['wall_s']:.0f} s" for r in rows)
               + "; FLOPs per level: " + ", ".join(f"{f:.2e}" for f in flops),
        agrees=ratio <= EVEN_COST,
        by_how_much=f"dearest / cheapest level: {ratio:.2f}× in wall time, {max(flops) / min(flops):.2f}× in FLOPs "
                    f"(about the same: ≤ {EVEN_COST:g}×)",
    )


def _fit_claim(widths: Sequence[int], minima: Sequence[float], fit) -> ClaimCheck:
    falling = all(b < a for a, b in zip(minima, minima[1:]))
    return ClaimCheck(
        paper=f"per-level minimum losses fall with width as L(d) = A/d^α + E, α = {PAPER_ALPHA}, E = {PAPER_E}, "
              "R² ≈ 1, the final model below every calibration width (§3.4)",
        result=f"minima {', '.join(f'd={w}: {m:.4f}' for w, m in zip(widths, minima))}; fit α = {fit.alpha:.2f}, "
               f"E = {fit.E:.3f}, R² = {fit.r2:.3f}",
        agrees=falling and fit.r2 >= 0.95,
        by_how_much=f"{len(widths)} points for 3 parameters"
                    + ("" if falling else "; the minima do not fall at every doubling"),
    )


def _fmt(point: Mapping[str, float]) -> str:
    return f"lr {point['lr']:.4g}, λ {point['weight_decay']:.4g}"


def _levels_table(rows: Sequence[Mapping[str, Any]], search: Search) -> str:
    lines = ["| level | width | grid | spacing (lr, λ) | centre | best | min loss | spread | FLOPs | wall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["points_per_axis"]
        lines.append(f"| L{r['level']} | {r['width']} | {n}×{n} | ×{r['spacing']['lr']:.3f}, "
                     f"×{r['spacing']['weight_decay']:.3f} | {_fmt(r['center'])} | {_fmt(r['best'])} | "
                     f"{r['min_loss']:.4f} | {r['spread']:.4f} | {r['flops']:.2e} | {r['wall_s']:.0f} s |")
    final, width = search.final, search.final.config.get("d_model")
    lines.append(f"| final | {width} | 1 | — | {_fmt(search.choice)} | {_fmt(search.choice)} | "
                 f"{final_loss(final):.4f} | — | {search.flops[width]:.2e} | {_wall(final):.0f} s |")
    return "\n".join(lines)


def _grid_table(grid: Level, losses: Sequence[float]) -> str:
    """The brute-force losses as a table: one row per lr, one column per λ, the best in bold."""
    lrs = sorted({p["lr"] for p in grid.points})
    wds = sorted({p["weight_decay"] for p in grid.points})
    by_point = {(p["lr"], p["weight_decay"]): loss for p, loss in zip(grid.points, losses)}
    best = min((v for v in losses if math.isfinite(v)), default=math.nan)
    lines = ["| lr \\ λ | " + " | ".join(f"{w:.4g}" for w in wds) + " |", "|---|" + "---|" * len(wds)]
    for lr in lrs:
        cells = [by_point[(lr, w)] for w in wds]
        lines.append(f"| {lr:.4g} | " + " | ".join(f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines)


def _brute_shape(grid: Level) -> str:
    """``6×8 (lr 0.0053–0.17, λ 0.0044–0.57)``: values per hyperparameter and their range."""
    values = {name: sorted({q[name] for q in grid.points}) for name in grid.center}
    return ("×".join(str(len(v)) for v in values.values()) + " ("
            + ", ".join(f"{_LABEL[n]} {v[0]:.2g}–{v[-1]:.2g}" for n, v in values.items()) + ")")


def _setting(p: Mapping[str, Any], search: Search) -> str:
    grid = search.brute[0]
    n = p["brute_points"]
    return "\n".join([
        f"- Model: {p['n_layers']} Llama-style blocks, heads of {p['head_dim']} (the width grows by adding heads), "
        f"muP with base width {p['mup_base_width']} (`muonlab.models.mup`), Muon on the hidden matrices and "
        f"AdamW elsewhere; {p['corpus']} corpus, {p['tokenizer']} tokens; every run {p['train_tokens']:,} tokens "
        f"({p['batch_size']} × {p['seq_len']} a step), warmup 10 % then cosine to 0.1×.",
        f"- Telescope: widths {', '.join(map(str, p['widths']))}, level 0 a {p['grid_points']}×{p['grid_points']} "
        f"grid around lr {p['lr_center']:g}, λ {p['wd_center']:g} spaced ×{p['lr_spacing']:g} and "
        f"×{p['wd_spacing']:g}; each level halves the mesh (log space) and has 4× fewer runs, centred on the "
        f"previous level's best; the final run at d={p['final_width']}.",
        f"- Check: a brute-force {n}×{n} grid at d={grid.width} over level 0's box (spacing "
        f"×{grid.spacing['lr']:.3g}, ×{grid.spacing['weight_decay']:.3g}), grown by a whole line one step beyond "
        "any edge its best point sat on until the best was interior or the next line would leave lr ∈ "
        f"[{p['brute_lr_caps'][0]:g}, {p['brute_lr_caps'][1]:g}], λ ∈ [{p['brute_wd_caps'][0]:g}, "
        f"{p['brute_wd_caps'][1]:g}]: it ended {_brute_shape(grid)}, best point {search.brute_status}; the best "
        "point refined along each axis by a parabola in log space through its neighbours.",
        f"- Seeds: every search and brute-force run uses seed {p['search_seed']} (initialisation and data order); "
        f"the telescoped choice and the brute-force grid's best point are trained again at d={grid.width} with "
        f"the fresh seeds {', '.join(map(str, p['check_seeds']))} (no selection bias). Seed noise is the sample "
        "std over those seeds; the two are within noise unless the gap exceeds the larger std.",
        "- Loss: final validation loss on a fixed held-out slice (16 batches), the same in every run.",
    ])


def telescope_analysis(search: Search, p: Mapping[str, Any], out: Path) -> Analysis:
    """The levels, the brute-force check, seed noise, the cost ledger, the L(d) fit: claims, plots, report."""
    rows = level_rows(search)
    grid, brute_runs = search.brute
    brute_losses = [final_loss(r) for r in brute_runs]
    refined, edge = refined_optimum(grid, brute_losses)
    fine = search.levels[-1][0].spacing
    distance = cells_apart(search.choice, refined, fine)
    coarse = cells_apart(search.choice, refined, grid.spacing)
    seeds = {arm: [final_loss(r) for r in runs] for arm, runs in search.checks.items()}
    arms = {arm: mean_std(losses) for arm, losses in seeds.items()}
    d = paired(*(by_seed(search.checks[arm], final_loss) for arm in ("brute", "telescoped")))
    final_width = int(search.final.config.get("d_model"))
    book = ledger([level for level, _ in search.levels], search.flops.__getitem__, final_width)
    measured = measured_ledger(search, rows)
    brute_flops = len(brute_runs) * search.flops[grid.width]
    widths = [r["width"] for r in rows] + [final_width]
    minima = [r["min_loss"] for r in rows] + [final_loss(search.final)]
    fit = fit_saturating_power(widths, minima)
    checks = [_location_claim(distance, coarse, edge, grid.width), _noise_claim(d, arms['brute'].std, grid.width),
              _cost_claim(book, measured, p["widths"], final_width), _even_claim(rows, book), _spread_claim(rows),
              _fit_claim(widths, minima, fit)]
    figures = [
        ("Each level's (lr, λ) grid with its final validation losses; ★ the level's best, + its centre",
         plots.plot_levels([(level, r["losses"]) for (level, _), r in zip(search.levels, rows)], out / "levels.png")),
        (f"Brute-force grid at d={grid.width} with the telescope's path and choice; seed noise of both choices",
         plots.plot_brute(grid, brute_losses, [r["best"] for r in rows], refined, fine, seeds, out / "brute.png")),
        ("Per-level minimum loss against width with the L(d) = A/d^α + E fit; the losses of every level",
         plots.plot_minima(widths, minima, fit, [r["losses"] for r in rows], out / "minima_fit.png")),
        ("Cost ledger per level (FLOPs and measured training time) against the brute-force grid and a full grid "
         "at the final width", plots.plot_ledger(book, measured, brute_flops, out / "ledger.png")),
    ]
    results = {
        "levels": rows, "choice": search.choice,
        "final": {"width": final_width, "loss": final_loss(search.final), "wall_s": _wall(search.final)},
        "brute": {"width": grid.width, "spacing": grid.spacing, "best": best_point(grid.points, brute_losses),
                  "refined": refined, "edge": edge, "status": search.brute_status, "shape": _brute_shape(grid),
                  "points": list(grid.points), "losses": brute_losses},
        "distance_fine_cells": distance, "distance_brute_cells": coarse,
        "seed_noise": {arm: asdict(v) for arm, v in arms.items()} | {
            "telescoped_minus_brute": d.as_dict(), "noise": arms["brute"].std, "within_noise": checks[1].agrees},
        "ledger_flops": {**book, "brute_force_cost": brute_flops}, "ledger_wall_s": measured,
        "fit": {"A": fit.A, "alpha": fit.alpha, "E": fit.E, "r2": fit.r2, "widths": widths, "minima": minima},
        "claims_agree": [c.agrees for c in checks],
    }
    headline = (f"Telescoped choice {_fmt(search.choice)}; the brute-force optimum at d={grid.width} (refined) "
                f"{_fmt(refined)}: {max(distance.values()):.2f} fine cells apart at most. At d={grid.width} with "
                f"fresh seeds: telescoped {arms['telescoped']}, brute-force {arms['brute']}. The search and the final "
                f"run cost {book['total_cost'] / book['final_cost']:.2f}× the final run's FLOPs, "
                f"{book['saved_fraction_at_final_width']:.0%} less than a full grid at d={final_width}; the "
                f"per-level minima fit L(d) = {fit.A:.3g}/d^{fit.alpha:.3f} + {fit.E:.3f} (R² {fit.r2:.3f}).")
    sections = [("Headline", headline), ("Paper claim vs small-scale result", claim_section(checks)),
                ("Levels", _levels_table(rows, search)),
                (f"Brute-force grid at d={grid.width} (final validation loss, seed {p['search_seed']})",
                 _grid_table(grid, brute_losses)), ("Setting", _setting(p, search))]
    summary = (f"telescoped {_fmt(search.choice)} is {max(distance.values()):.2f} fine cells from the brute-force "
               f"optimum; loss {d.mean:+.4f} vs brute force, paired (seed std {arms['brute'].std or math.nan:.4f}); "
               f"{book['saved_fraction_at_final_width']:.0%} of a full final-width grid saved")
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)


def analyse(finished: Finished) -> Analysis:

    """Per-level grids, the brute-force check, the seed-noise comparison, the ledger and the L(d) fit."""
    p, runs = finished.params, finished.runs
    grids, choice = levels(p, runs)
    seed = p["search_seed"]
    grid, status = brute_grid(p, runs)
    search = Search(
        levels=[(level, [runs[n] for n in level_names(level, seed)]) for level in grids],
        brute=(grid, [runs[n] for n in brute_names(grid, seed)]),
        brute_status=status,
        final=runs[final_name(p)],
        choice=choice,
        checks={arm: [runs[check_name(arm, p, s)] for s in p["check_seeds"]] for arm in ("telescoped", "brute")},
        hparams=HPARAMS,
        flops={w: run_flops(p, w) for w in (*p["widths"], p["final_width"])},
    )
    return telescope_analysis(search, p, finished.out)
