"""The ``batch-size`` study's numbers, claims and report sections, from what its runs measured.

Kept apart from the plan (``plan``). Tokens to target losses, the ratios and the fits are
:mod:`muonlab.analysis.batch_size` (shared with the pareto study); the plots ``plots``. Claims are
judged at the lowest target loss of each corpus ("near the end of training", PAPERS.md §5.2 E1),
with paired 95 % t intervals over the seeds (a seed's runs share initialisation and data order at every batch
size and for both optimizers), at the batches that have every seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ....analysis.batch_size import OPTIMIZERS, ArmFits, CorpusTokens, corpus_tokens, critical_fits, smoothed_curve
from ....analysis.paired import MIN_SEEDS, PairedDifference, t_quantile_975
from ....analysis.runs import Run
from ...protocol import ClaimCheck, MeanStd, claim_section, epochs, mean_std, paired
from ...study import Analysis, Finished
from . import plots
from .plan import arm_runs, sweeps

__all__ = ["Measured", "analyse", "batch_size_analysis", "measure"]

PAPER_FEWER = (0.10, 0.15)
"""Essential AI §5: Muon needs 10–15 % fewer tokens than AdamW for the same loss."""
PAPER_FEWER_TEXT = ("Muon needs 10–15 % fewer tokens than AdamW for the same loss: R_L(B) = T_AdamW/T_Muon ≈ 1.1–1.2 "
                    "and above 1 at every batch size (Essential AI §2.4, §5; Figure 3)")
PAPER_TREND_TEXT = ("R_L(B) stays above 1 and is nondecreasing as B grows past the critical batch size (Essential AI "
                    "§2.4: the advantage holds or grows with batch size)")
PAPER_EXTRA_TEXT = "the extra tokens T_AdamW − T_Muon strictly increase with B (Essential AI §2.4, Figure 3)"


@dataclass(frozen=True)
class Measured:
    """Per corpus: the tokens to each target (``tables``), the App. F fits and token-optimal batches per
    optimizer (``fits``), each optimizer's learning rate per batch (``lrs``), the first seed's smoothed
    loss curves per optimizer and batch (``curves``); and the most epochs any run trained (``max_epochs``)."""

    tables: Mapping[str, CorpusTokens]
    fits: Mapping[str, Mapping[str, ArmFits]]
    lrs: Mapping[str, Mapping[str, list[float]]]
    curves: Mapping[str, Mapping[str, list[tuple[np.ndarray, np.ndarray]]]]
    max_epochs: float | None


def measure(p: Mapping[str, Any], arms: Mapping[str, Mapping[str, Sequence[Sequence[Run]]]]) -> Measured:
    """``arms[corpus][optimizer][i]``: the runs (one per seed) at ``p["batch_sizes"][i]``."""
    batches = [b * p["seq_len"] for b in p["batch_sizes"]]
    tables, fits, lrs, curves = {}, {}, {}, {}
    for corpus, by_optimizer in arms.items():
        tables[corpus] = corpus_tokens(corpus, batches, by_optimizer, p["targets"], p["ema_tokens"])
        fits[corpus] = critical_fits(tables[corpus], p["token_optimal_margin"])
        lrs[corpus] = {o: [float(runs[0].config["lr"]) for runs in by_optimizer[o]] for o in OPTIMIZERS}
        curves[corpus] = {o: [smoothed_curve(runs[0], p["ema_tokens"]) for runs in by_optimizer[o]]
                          for o in OPTIMIZERS}
    seen = [e for by_o in arms.values() for per_b in by_o.values() for runs in per_b for r in runs
            if (e := epochs(r)) is not None]
    return Measured(tables, fits, lrs, curves, max(seen) if seen else None)


Cell = MeanStd | None
"""Mean ± std over seeds at one (batch, target); None where a seed of either optimizer missed the target."""


def paired_cells(table: CorpusTokens, op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> list[list[Cell]]:
    """``[batch][target]``: mean ± std over seeds of ``op(T_AdamW, T_Muon)`` per seed pair (``R = a/m``,
    ``extra = a − m``), None where any seed of either optimizer did not reach the target."""
    out = []
    for i in range(len(table.batches)):
        row = []
        for j in range(len(table.targets)):
            a, m = table.paired(i, j)
            row.append(mean_std(op(a, m)) if np.isfinite(a).all() and np.isfinite(m).all() else None)
        out.append(row)
    return out


def missed(table: CorpusTokens, batch: int, target: int) -> str:
    """Which optimizer(s) missed the target in some seed: "AdamW", "Muon", "both" or "" (none)."""
    a, m = (not np.isfinite(x).all() for x in table.paired(batch, target))
    return "both" if a and m else "AdamW" if a else "Muon" if m else ""


def _lowest(table: CorpusTokens, values: list[list[Cell]], target: int = -1) -> list[tuple[int, MeanStd]]:
    """``(batch, cell)`` at a target (default the lowest), for the batch sizes where both optimizers reached it."""
    return [(b, row[target]) for b, row in zip(table.batches, values) if row[target] is not None]


def full_range_target(values: list[list[Cell]]) -> int:
    """The lowest target that both optimizers reached at every batch size (every seed); the highest target
    if none was."""
    complete = [j for j in range(len(values[0])) if all(row[j] is not None for row in values)]
    return complete[-1] if complete else 0


def interval(cell: MeanStd) -> tuple[float, float] | None:
    """The 95 % t interval of the mean of a per-seed (paired) quantity, e.g. the per-seed ratio T_AdamW/T_Muon;
    None below ``MIN_SEEDS`` seeds."""
    if cell.std is None or cell.n < MIN_SEEDS:
        return None
    half = t_quantile_975(cell.n - 1) * cell.std / math.sqrt(cell.n)
    return cell.mean - half, cell.mean + half


def _seeded(column: Sequence[MeanStd]) -> list[MeanStd]:
    return [c for c in column if interval(c) is not None]


def _clearly_above_one(column: Sequence[MeanStd]) -> bool:
    """Every batch's mean above 1, and at the batches with ≥ ``MIN_SEEDS`` seeds the 95 % interval of the
    per-seed ratio above 1."""
    seeded = _seeded(column)
    return bool(seeded) and all(c.mean > 1 for c in column) and all(interval(c)[0] > 1 for c in seeded)


def _across(table: CorpusTokens, op: Callable[[np.ndarray, np.ndarray], np.ndarray], b0: int, b1: int,
            target: int) -> PairedDifference | None:
    """``op(T_AdamW, T_Muon)`` at batch ``b1`` − at batch ``b0`` (tokens per step), paired per seed (a seed's runs
    share initialisation and data order at every batch size)."""
    i0, i1 = table.batches.index(b0), table.batches.index(b1)
    values = [op(*table.paired(i, target)) for i in (i0, i1)]
    n = min(len(v) for v in values)
    return paired({k: float(values[0][k]) for k in range(n)}, {k: float(values[1][k]) for k in range(n)})


def _fmt(cell: MeanStd, spec: str) -> str:
    return format(cell.mean, spec) + (f" ± {format(cell.std, spec)}" if cell.std is not None else "")


def _beyond(table: CorpusTokens) -> str:
    """The batch sizes at which a seed of one optimizer (or both) missed the lowest target."""
    misses = [(b, missed(table, i, len(table.targets) - 1)) for i, b in enumerate(table.batches)]
    return "; ".join(f"B={b:,}: " + ("neither optimizer reached it" if who == "both" else f"{who} did not reach it")
                     for b, who in misses if who)


def _fewer_tokens_claim(table: CorpusTokens, ratio: list[list[Cell]]) -> ClaimCheck:
    reached = _lowest(table, ratio)
    column = [c for _, c in reached]
    result = f"{table.corpus}, lowest target L = {table.targets[-1]:.3f} nats/byte: R = " + (
        ", ".join(f"B={b:,}: {_fmt(c, '.3f')}" for b, c in reached) or "no batch size where both reached it")
    beyond = _beyond(table)
    if not column:
        return ClaimCheck(PAPER_FEWER_TEXT, result + (f" ({beyond})" if beyond else ""), None, "—")
    mean_r = float(np.mean([c.mean for c in column]))
    seeded = _seeded(column)
    below = mean_r < 1 and all(interval(c)[1] < 1 for c in seeded)
    return ClaimCheck(
        paper=PAPER_FEWER_TEXT,
        result=result + (f" ({beyond})" if beyond else ""),
        agrees=None if not seeded else True if _clearly_above_one(column) else False if below else None,
        by_how_much=f"Muon needs {(1 - 1 / mean_r) * 100:.1f} % fewer tokens (mean R {mean_r:.3f} over the batch "
                    f"sizes that reached it); paper {PAPER_FEWER[0]:.0%}–{PAPER_FEWER[1]:.0%}",
    )


def _ends(reached: list[tuple[int, MeanStd]]) -> tuple[tuple[int, MeanStd], tuple[int, MeanStd]]:
    """The smallest batch, and the largest with several seeds (else the largest), among ``reached``."""
    seeded = [(b, c) for b, c in reached if c.std is not None]
    return reached[0], (seeded[-1] if len(seeded) > 1 else reached[-1])


def _knees(fits: Mapping[str, ArmFits], target: int) -> str:
    return ", ".join(f"{o} B* = {f.critical_batch:,.0f}" if (f := fits[o].fits[target]) else f"{o} B* not fitted"
                     for o in OPTIMIZERS)


def _trend_claim(table: CorpusTokens, ratio: list[list[Cell]], fits: Mapping[str, ArmFits]) -> ClaimCheck:
    j = full_range_target(ratio)
    reached = _lowest(table, ratio, j)
    if len(reached) < 2:
        return ClaimCheck(PAPER_TREND_TEXT, f"{table.corpus}: fewer than two batch sizes reached a target with "
                                            "both optimizers", None, "—")
    (b0, small), (b1, large) = _ends(reached)
    d = _across(table, np.divide, b0, b1, j)
    slope = float(np.polyfit(np.log2([b for b, _ in reached]), [c.mean for _, c in reached], 1)[0])
    return ClaimCheck(
        paper=PAPER_TREND_TEXT,
        result=f"{table.corpus}, L = {table.targets[j]:.3f} (the lowest target every batch size reached): R = "
               f"{_fmt(small, '.3f')} at B={b0:,} → {_fmt(large, '.3f')} at B={b1:,} (least-squares slope "
               f"{slope:+.3f} per doubling); fitted {_knees(fits, j)} tokens",
        agrees=d.verdict(+1) if d else None,
        by_how_much=f"R at B={b1:,} − R at B={b0:,}, paired per seed: " + (d.text("") if d else "no seed in common")
        + " (grows: the interval above 0; shrinks: below)",
    )


def _extra_claim(table: CorpusTokens, extra: list[list[Cell]]) -> ClaimCheck:
    j = full_range_target(extra)
    reached = _lowest(table, extra, j)
    if len(reached) < 2:
        return ClaimCheck(PAPER_EXTRA_TEXT, f"{table.corpus}: fewer than two batch sizes reached a target with "
                                            "both optimizers", None, "—")
    (b0, small), (b1, large) = _ends(reached)
    d = _across(table, np.subtract, b0, b1, j)
    increases = sum(b.mean > a.mean for (_, a), (_, b) in zip(reached, reached[1:]))
    return ClaimCheck(
        paper=PAPER_EXTRA_TEXT,
        result=f"{table.corpus}, L = {table.targets[j]:.3f}: " + ", ".join(f"B={b:,}: {c.mean:,.0f}"
                                                                          for b, c in reached),
        agrees=d.verdict(+1) if d else None,
        by_how_much=f"from B={b0:,} to B={b1:,}, paired per seed: " + (d.text("tokens") if d else "no seed in common")
                    + f"; up in {increases} of {len(reached) - 1} consecutive steps of B",
    )


def _enough_seeds(table: CorpusTokens) -> bool:
    """Whether some batch size has ``MIN_SEEDS`` seeds (else a direction read off seed means cannot be told)."""
    return max(len(t) for t in table.tokens["adamw"]) >= MIN_SEEDS


def _token_optimal_claim(table: CorpusTokens, fits: Mapping[str, ArmFits]) -> ClaimCheck:
    pairs = [(t, a, m) for t, a, m in zip(table.targets, fits["adamw"].token_optimal, fits["muon"].token_optimal)
             if a is not None and m is not None]
    # Both at the grid's smallest batch: each optimum may lie below the grid, so that target tells nothing.
    smallest = min(table.batches)
    told = [(t, a, m) for t, a, m in pairs if not a == m == smallest]
    larger = sum(m >= a for _, a, m in told)
    return ClaimCheck(
        paper="Muon's token-optimal batch B_tok,L = max {B : T_L(B) ≤ (1 + δ) min T_L} is ≥ AdamW's at most "
              "targets (Essential AI App. D.1, Eq. 6)",
        result=f"{table.corpus}: " + "; ".join(f"L={t:.3f}: AdamW {a:,.0f}, Muon {m:,.0f}" for t, a, m in pairs),
        agrees=larger > len(told) / 2 if told and _enough_seeds(table) else None,
        by_how_much=f"Muon's ≥ AdamW's at {larger} of the {len(told)} targets where they differ from the grid's "
                    f"smallest batch ({len(pairs) - len(told)} of {len(pairs)} have both at {smallest:,}: the grid "
                    "cannot tell)",
    )


def _slope_claim(table: CorpusTokens, fits: Mapping[str, ArmFits]) -> ClaimCheck:
    pairs = [(t, a, m) for t, a, m in zip(table.targets, fits["adamw"].fits, fits["muon"].fits) if a and m]
    flatter = sum(a.m >= m.m for _, a, m in pairs)
    later = sum(m.critical_batch >= a.critical_batch for _, a, m in pairs)
    return ClaimCheck(
        paper="past the critical batch, log S_L = m log B + b2 with m_AdamW ≥ m_Muon (the condition for R not to "
              "vanish), and Muon's critical batch is larger (Essential AI App. F, §2.5)",
        result=f"{table.corpus}: " + "; ".join(
            f"L={t:.3f}: AdamW B*={a.critical_batch:,.0f}, m={a.m:+.2f}; Muon B*={m.critical_batch:,.0f}, "
            f"m={m.m:+.2f}" for t, a, m in pairs),
        agrees=flatter > len(pairs) / 2 if pairs and _enough_seeds(table) else None,
        by_how_much=f"m_AdamW ≥ m_Muon at {flatter} of {len(pairs)} targets; Muon's B* ≥ AdamW's at {later} of "
                    f"{len(pairs)}",
    )


def _corpora_claim(tables: Mapping[str, CorpusTokens], ratios: Mapping[str, list[list[Cell]]]) -> ClaimCheck:
    columns = {c: [cell for _, cell in _lowest(tables[c], r)] for c, r in ratios.items()}
    means = {c: float(np.mean([x.mean for x in column])) for c, column in columns.items() if column}
    separated = [_clearly_above_one(column) for column in columns.values()]
    return ClaimCheck(
        paper="Muon's token advantage holds on both data distributions, DCLM and Python (Essential AI §2.3: "
              "consistent across thresholds and data; §5: two data modalities)",
        result="; ".join(f"{c} (L = {tables[c].targets[-1]:.3f}): mean R = {v:.3f}" for c, v in means.items()),
        agrees=True if all(separated) else False if any(v < 1 for v in means.values()) else None,
        by_how_much=", ".join(f"{c}: {(1 - 1 / v) * 100:.1f} % fewer tokens" for c, v in means.items())
                    + (f"; the larger ratio on {max(means, key=means.get)}" if means else ""),
    )


def claims(measured: Measured, ratios, extras) -> list[ClaimCheck]:
    """Per corpus: fewer tokens, the trend of R, the extra tokens, the token-optimal batch, the slopes; then
    the comparison of the corpora (when there are several)."""
    checks = []
    for c, table in measured.tables.items():
        fits = measured.fits[c]
        checks += [_fewer_tokens_claim(table, ratios[c]), _trend_claim(table, ratios[c], fits),
                   _extra_claim(table, extras[c]), _token_optimal_claim(table, fits), _slope_claim(table, fits)]
    if len(measured.tables) > 1:
        checks.append(_corpora_claim(measured.tables, ratios))
    return checks


def _grid_table(table: CorpusTokens, values: list[list[Cell]], fmt: str) -> str:
    head = "| B (tokens) | seeds | " + " | ".join(f"L = {t:.3f}" for t in table.targets) + " |"
    lines = [head, "|---|---|" + "---|" * len(table.targets)]
    for i, (b, row) in enumerate(zip(table.batches, values)):
        seeds = len(table.tokens["adamw"][i])
        lines.append(f"| {b:,} | {seeds} | " + " | ".join(
            _fmt(c, fmt) if c is not None else f"not reached ({missed(table, i, j)})" for j, c in enumerate(row))
            + " |")
    return "\n".join(lines)


def _fit_cells(arm: ArmFits, j: int) -> str:
    fit, optimal = arm.fits[j], arm.token_optimal[j]
    knee = f"{fit.critical_batch:,.0f} | {fit.m:+.2f}" if fit else "— | —"
    return f"{knee} | {optimal:,.0f}" if optimal is not None else f"{knee} | —"


def _fit_table(table: CorpusTokens, fits: Mapping[str, ArmFits]) -> str:
    lines = ["| L | AdamW B* | m_AdamW | AdamW B_tok | Muon B* | m_Muon | Muon B_tok | fit rmse (log steps) A / M |",
             "|---|---|---|---|---|---|---|---|"]
    for j, t in enumerate(table.targets):
        rmse = " / ".join(f"{f.rmse:.3f}" if (f := fits[o].fits[j]) else "—" for o in OPTIMIZERS)
        lines.append(f"| {t:.3f} | {_fit_cells(fits['adamw'], j)} | {_fit_cells(fits['muon'], j)} | {rmse} |")
    return "\n".join(lines)


def _lr_section(measured: Measured, sweeps: Mapping[str, Mapping[float, float | None]]) -> str:
    lines = ["| sweep (first seed) | learning rate: final validation loss |", "|---|---|"]
    edges = []
    for label, by_lr in sweeps.items():
        best = min(by_lr, key=lambda lr: by_lr[lr])
        lines.append(f"| {label} | " + ", ".join(("**" if lr == best else "") + f"{lr:g}: {loss:.4f}"
                                                  + ("**" if lr == best else "") for lr, loss in by_lr.items()) + " |")
        if best in (min(by_lr), max(by_lr)):
            edges.append(label)
    lines += ["", "| corpus | optimizer | learning rate per batch size (interpolated in log space between the ends) |",
              "|---|---|---|"]
    for c, by_o in measured.lrs.items():
        table = measured.tables[c]
        for o, lrs in by_o.items():
            lines.append(f"| {c} | {o} | " + ", ".join(f"B={b:,}: {lr:.3g}" for b, lr in zip(table.batches, lrs))
                         + " |")
    note = (f"\n\nThe best learning rate lies at the edge of its grid for {', '.join(edges)}: the optimum may lie "
            "beyond, so that end may be under-tuned." if edges else
            "\n\nEvery sweep's best learning rate lies inside its grid.")
    return "\n".join(lines) + note


def _method(p: Mapping[str, Any], measured: Measured) -> str:
    batches = p["batch_sizes"]
    seeded = (batches[0], batches[len(batches) // 2], batches[-1])
    epochs_text = (f"at most {measured.max_epochs:.2f} epochs" if measured.max_epochs is not None else "epochs unknown")
    fresh = ("so every training batch was fresh (no run repeated data)" if measured.max_epochs is not None
             and measured.max_epochs <= 1 else "**so some runs repeated data: their training loss is not on fresh "
             "batches**")
    return "\n".join([
        f"- Every run trained {p['train_tokens']:,} byte tokens ({epochs_text} of its corpus), {fresh}.",
        f"- Smoothed loss: the training loss of every step (on that step's fresh batch, before its update), "
        f"EMA-smoothed with decay 1 − B/{p['ema_tokens']:,} per step: about {p['ema_tokens']:,} tokens averaged and "
        f"a lag of about {p['ema_tokens']:,} tokens at every batch size, for both optimizers alike.",
        f"- Targets: {p['targets']} losses per corpus, evenly spaced from the median run's smoothed loss after 10 % "
        "of its tokens down to the highest lowest-smoothed-loss among the runs at the middle batch size and below "
        "(so each of them reaches every target). A run at a larger batch may miss the lowest targets within its "
        "budget (\"not reached\"); a ratio needs every seed of both optimizers to reach the target, a fit every seed "
        "of its optimizer at three batch sizes or more.",
        f"- Seeds: {', '.join(map(str, p['seeds']))} at batch sizes {', '.join(str(b) for b in seeded)} (sequences "
        f"of {p['seq_len']}); the first seed only at the others (the CPU budget does not allow three seeds at every "
        "batch): spreads are given where there are several seeds. Within a seed both optimizers start from the "
        "same weights and see the same sequences in the same order (at every batch size).",
        f"- Critical batch: App. F's piecewise fit of the seed-mean steps S_L(B) = T_L(B)/B; B* at the largest "
        "batch that reached the target means no diminishing returns were seen there (m = −1 then by convention). "
        f"Token-optimal batch: Eq. 6 with a noise margin δ = {p['token_optimal_margin']:.0%}.",
    ])


def _results(measured: Measured, ratios, extras, checks) -> dict[str, Any]:
    def cell(c: Cell):
        return None if c is None else asdict(c)

    def fit(f):
        return None if f is None else {"B_star": f.critical_batch, "m": f.m, "b1": f.b1, "b2": f.b2, "rmse": f.rmse}

    out: dict[str, Any] = {}
    for c, table in measured.tables.items():
        fits = measured.fits[c]
        out[c] = {
            "batch_tokens": table.batches, "targets": table.targets,
            "tokens_mean": {o: [[None if math.isinf(x) else x for x in row] for row in table.mean_tokens(o).tolist()]
                            for o in OPTIMIZERS},
            "token_ratio": [[cell(x) for x in row] for row in ratios[c]],
            "extra_tokens": [[cell(x) for x in row] for row in extras[c]],
            "critical_batch": {o: [fit(f) for f in fits[o].fits] for o in OPTIMIZERS},
            "token_optimal_batch": {o: fits[o].token_optimal for o in OPTIMIZERS},
            "lr": measured.lrs[c],
        }
    return {"corpora": out, "max_epochs": measured.max_epochs, "claims_agree": [c.agrees for c in checks]}


def _headline(measured: Measured, ratios) -> str:
    lines = []
    for c, table in measured.tables.items():
        low = _lowest(table, ratios[c])
        high = [row[0].mean for row in ratios[c] if row[0] is not None]
        text = (f"R_L(B) = T_AdamW/T_Muon runs {low[0][1].mean:.3f} → {low[-1][1].mean:.3f} from B = {low[0][0]:,} "
                f"to {low[-1][0]:,} tokens (mean {np.mean([x.mean for _, x in low]):.3f}: Muon needs "
                f"{(1 - 1 / np.mean([x.mean for _, x in low])) * 100:.1f} % fewer tokens)" if low else
                "no batch size reached it with both optimizers")
        lines.append(f"- **{c}**: at the lowest target (L = {table.targets[-1]:.3f} nats/byte) {text}; at the highest "
                     f"target (L = {table.targets[0]:.3f}) mean R = "
                     + (f"{np.mean(high):.3f}." if high else "— (not reached with both)."))
    return "\n".join(lines)


def batch_size_analysis(measured: Measured, sweeps: Mapping[str, Mapping[float, float | None]],
                        p: Mapping[str, Any], out: Path) -> Analysis:
    """The claims, tables, plots and results of the study."""
    ratios = {c: paired_cells(t, np.divide) for c, t in measured.tables.items()}
    extras = {c: paired_cells(t, np.subtract) for c, t in measured.tables.items()}
    checks = claims(measured, ratios, extras)
    figures = [
        ("Token ratio R_L(B) = T_AdamW / T_Muon against batch size, per target loss",
         plots.plot_token_ratio(measured.tables, ratios, out / "token_ratio.png")),
        ("Extra tokens T_AdamW − T_Muon against batch size, per target loss",
         plots.plot_extra_tokens(measured.tables, extras, out / "extra_tokens.png")),
        ("Steps to each target loss against batch size, with the App. F piecewise fits",
         plots.plot_steps_to_loss(measured.tables, measured.fits, out / "steps_to_loss.png")),
        ("Smoothed training loss (fresh batches) against tokens, first seed, with the target losses",
         plots.plot_loss_curves(measured.tables, measured.curves, out / "loss_curves.png")),
        ("Learning-rate sweeps at the smallest and the largest batch (first seed)",
         plots.plot_sweeps(sweeps, out / "lr_sweeps.png")),
    ]
    sections = [("Headline", _headline(measured, ratios)),
                ("Paper claim vs small-scale result", claim_section(checks))]
    for c, table in measured.tables.items():
        sections += [(f"Token ratio R_L(B), {c}", _grid_table(table, ratios[c], ".3f")),
                     (f"Extra tokens T_AdamW − T_Muon, {c}", _grid_table(table, extras[c], ",.0f")),
                     (f"Critical and token-optimal batch sizes (tokens), {c}", _fit_table(table, measured.fits[c]))]
    sections += [("Learning rates", _lr_section(measured, sweeps)), ("Method", _method(p, measured))]
    summary = "; ".join(f"{c}: mean R at L={t.targets[-1]:.3f} = "
                        + (f"{np.mean([x.mean for _, x in low]):.3f}" if (low := _lowest(t, ratios[c])) else "—")
                        for c, t in measured.tables.items())
    return Analysis(results=_results(measured, ratios, extras, checks), sections=sections, figures=figures,
                    summary=summary)


def analyse(finished: Finished) -> Analysis:
    """Token ratios, extra tokens and critical batch sizes per corpus and target loss, from the run folders."""
    p, runs = finished.params, finished.runs
    measured = measure(p, {c: {o: [arm_runs(p, runs, o, c, b) for b in p["batch_sizes"]] for o in OPTIMIZERS}
                           for c in p["corpora"]})
    return batch_size_analysis(measured, sweeps(p, runs), p, finished.out)
