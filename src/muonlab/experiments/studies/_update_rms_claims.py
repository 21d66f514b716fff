"""The ``update-rms`` study's paper claims, checked against its numbers (``studies/update_rms.py``).

Each check takes the study's per-variant numbers (``asdict(MeanStd)`` per quantity) and returns a
``ClaimCheck``: the paper's claim with its number, what came out, whether the direction agrees, by
how much. A difference counts only when it exceeds the larger seed-to-seed std with ≥ 3 seeds per
arm (``protocol.Gap``); otherwise the check says "cannot tell". Thresholds fixed before any run:

- ``SAME_WITHIN``: "Adjusted LR leaves the query weight RMS as it is" holds within ±10 % (paper: −2.5 %);
- ``ADAMW_RMS_RANGE``: AdamW's measured update RMS "around 0.2 to 0.4" counts as 0.15–0.4 (PAPERS.md §5.1 M2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..protocol import ClaimCheck, Gap, MeanStd, claim_section, mean_std

__all__ = ["ADAMW_RMS_RANGE", "SAME_WITHIN", "TABLE1_LABELS", "claim_text", "sweep_checks", "table1_checks"]

TABLE1_LABELS = {"baseline": "Baseline", "update-norm": "Update Norm", "adjusted-lr": "Adjusted LR"}
SAME_WITHIN = 0.10
ADAMW_RMS_RANGE = (0.15, 0.4)

Numbers = Mapping[str, Mapping[str, Any]]


def _ms(numbers: Mapping[str, Any] | None) -> MeanStd | None:
    return MeanStd(**numbers) if numbers else None


def _gap_text(gap: Gap, unit: str = "nats") -> str:
    spread = (f" ({gap.in_spreads:.1f}× the larger seed std {gap.spread:.4f}; "
              f"{'separated' if gap.separated else 'within the spread'})" if gap.spread else " (spread unknown)")
    return f"{gap.difference:+.4f} {unit}{spread}"


def _paired(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Per seed, b − a of the final validation loss (the seeds both variants ran), as text."""
    seeds = [s for s in a["final_val_loss_by_seed"] if s in b["final_val_loss_by_seed"]]
    diffs = [b["final_val_loss_by_seed"][s] - a["final_val_loss_by_seed"][s] for s in seeds]
    return f"per seed {mean_std(diffs)}" if diffs else "no seed in common"


def _lower(gap: Gap) -> bool | None:
    """Whether arm b is lower than arm a, when the gap separates them; None when it does not."""
    return gap.difference < 0 if gap.separated else None


def _u_shape(sweep: Numbers, targets: list[float]) -> ClaimCheck:
    loss = {r: _ms(sweep[f"{r:g}"]["final_val_loss"]) for r in targets}
    best = min(targets, key=lambda r: loss[r].mean)
    middle = [r for r in targets if r in (0.2, 0.4)]
    extremes = [r for r in (min(targets), max(targets)) if r != best]
    gaps = {r: Gap(loss[best], loss[r]) for r in extremes}
    if best in middle:
        agrees = True if all(g.separated for g in gaps.values()) else None
    else:
        agrees = False if middle and all(Gap(loss[best], loss[r]).separated for r in middle) else None
    return ClaimCheck(
        paper="Table 8: validation loss is U-shaped in the target update RMS, best at 0.2–0.4 (3.325, 3.314), "
              "worse at 0.05 (3.503, +0.189 over 0.4) and 0.8 (3.543, +0.229)",
        result="final val loss " + ", ".join(f"{r:g}: {loss[r]}" for r in targets) + f"; lowest at {best:g}",
        agrees=agrees,
        by_how_much="; ".join(f"{r:g} − {best:g} = {_gap_text(g)}" for r, g in gaps.items())
        + ("" if best in middle else "; " + "; ".join(f"{r:g} − {best:g} = {_gap_text(Gap(loss[best], loss[r]))}"
                                                       for r in middle)),
    )


def _weight_growth(sweep: Numbers, targets: list[float]) -> ClaimCheck:
    kinds = {"query (attn.wq)": lambda n: n["weight_rms"].get("attn.wq"), "MLP (mean)": lambda n: n["weight_rms_mlp"]}
    means = {kind: [_ms(get(sweep[f"{r:g}"])) for r in targets] for kind, get in kinds.items()}
    rising = {kind: all(a.mean < b.mean for a, b in zip(ms, ms[1:])) for kind, ms in means.items()}
    enough = all(m.n >= 3 for ms in means.values() for m in ms)
    lo, hi = targets[0], targets[-1]
    return ClaimCheck(
        paper="Table 8: weight RMS rises with the target update RMS (AttnQ 5.74e-3 → 7.23e-2, MLP 8.01e-3 → 8.73e-2 "
              "from 0.05 to 0.8: 12.6× and 10.9×)",
        result="; ".join(f"{kind}: " + " → ".join(f"{m.mean:.2e}" for m in ms) for kind, ms in means.items()),
        agrees=all(rising.values()) if enough else None,
        by_how_much="; ".join(f"{kind} {'rises at every step' if rising[kind] else 'does not rise at every step'}, "
                              f"{ms[-1].mean / ms[0].mean:.1f}× from {lo:g} to {hi:g}" for kind, ms in means.items()),
    )


def _muon_vs_adamw(sweep: Numbers, targets: list[float]) -> ClaimCheck:
    adamw = _ms(sweep["adamw"]["final_val_loss"])
    gaps = {r: Gap(adamw, _ms(sweep[f"{r:g}"]["final_val_loss"])) for r in targets}
    better = [r for r, g in gaps.items() if g.separated and g.difference < 0]
    worse = [r for r, g in gaps.items() if g.separated and g.difference > 0]
    agrees = True if len(better) == len(targets) else False if worse else None
    return ClaimCheck(
        paper="Table 8: at AdamW's lr and weight decay every Muon setting beats AdamW (3.314–3.543 vs 3.679)",
        result=f"AdamW {adamw}; Muon lower at {', '.join(f'{r:g}' for r in better) or 'no target'} (separated)"
               + (f", higher at {', '.join(f'{r:g}' for r in worse)}" if worse else ""),
        agrees=agrees,
        by_how_much="; ".join(f"{r:g} − AdamW = {_gap_text(g)}, {_paired(sweep['adamw'], sweep[f'{r:g}'])}"
                              for r, g in gaps.items()),
    )


def _adamw_rms(sweep: Numbers) -> ClaimCheck | None:
    hidden, every = _ms(sweep["adamw"]["update_rms_hidden"]), _ms(sweep["adamw"]["update_rms_adamw"])
    if hidden is None:
        return None
    lo, hi = ADAMW_RMS_RANGE
    return ClaimCheck(
        paper="§2.2: AdamW's update RMS is usually around 0.2 to 0.4, so Muon's 0.2·sqrt(max(A, B)) matches it",
        result=f"AdamW's lr-free update RMS m̂/(√v̂+ε), median after warmup: hidden matrices {hidden.mean:.3f}, all "
               f"parameters {every.mean:.3f}" if every else f"hidden matrices {hidden.mean:.3f}",
        agrees=(lo <= hidden.mean <= hi) if hidden.n >= 3 else None,
        by_how_much=f"{hidden.mean / 0.2:.2f}× the 0.2 Muon is scaled to (counted as agreeing within {lo:g}–{hi:g})",
    )


def sweep_checks(sweep: Numbers) -> list[ClaimCheck]:
    """Part (a)'s claims (Table 8, and §2.2's AdamW update RMS); none without Muon targets and AdamW."""
    targets = sorted(float(v) for v in sweep if v != "adamw")
    if len(targets) < 3 or "adamw" not in sweep:
        return []
    checks = [_u_shape(sweep, targets), _weight_growth(sweep, targets), _muon_vs_adamw(sweep, targets)]
    return checks + [c for c in [_adamw_rms(sweep)] if c is not None]


def _table1_loss(t: Numbers) -> ClaimCheck:
    base = _ms(t["baseline"]["final_val_loss"])
    gaps = {v: Gap(base, _ms(t[v]["final_val_loss"])) for v in ("update-norm", "adjusted-lr")}
    verdicts = [_lower(g) for g in gaps.values()]
    return ClaimCheck(
        paper="Table 1: Update Norm and Adjusted LR both beat the Baseline 0.2·√H (val loss 2.789 and 2.789 vs "
              "2.812: −0.023 nats)",
        result="final val loss " + ", ".join(f"{TABLE1_LABELS[v]} {_ms(t[v]['final_val_loss'])}" for v in t),
        agrees=False if False in verdicts else True if all(verdicts) else None,
        by_how_much="; ".join(f"{TABLE1_LABELS[v]} − Baseline = {_gap_text(g)}, {_paired(t['baseline'], t[v])}"
                              for v, g in gaps.items()),
    )


def _table1_mlp(t: Numbers) -> ClaimCheck:
    base = _ms(t["baseline"]["weight_rms_mlp"])
    gaps = {v: Gap(base, _ms(t[v]["weight_rms_mlp"])) for v in ("update-norm", "adjusted-lr")}
    verdicts = [None if not g.separated else g.difference > 0 for g in gaps.values()]
    per_kind = "; ".join(
        f"{TABLE1_LABELS[v]} / Baseline: " + ", ".join(
            f"{k.removeprefix('mlp.')} {t[v]['weight_rms'][k]['mean'] / t['baseline']['weight_rms'][k]['mean']:.2f}×"
            for k in t["baseline"]["weight_rms"] if k.startswith("mlp.")) for v in gaps)
    return ClaimCheck(
        paper="Table 1: the MLP weight RMS roughly doubles under Update Norm and Adjusted LR (5.01e-2 and 4.89e-2 vs "
              "2.52e-2: 1.99× and 1.94×; sqrt(4H)/√H = 2)",
        result="MLP weight RMS (mean of w_in, w_out) " + ", ".join(
            f"{TABLE1_LABELS[v]} {_ms(t[v]['weight_rms_mlp']).mean:.3e}" for v in t),
        agrees=False if False in verdicts else True if all(verdicts) else None,
        by_how_much=per_kind,
    )


def _table1_query(t: Numbers) -> ClaimCheck:
    base, norm, adjusted = (_ms(t[v]["weight_rms"]["attn.wq"]) for v in ("baseline", "update-norm", "adjusted-lr"))
    larger = Gap(base, norm)
    same = abs(adjusted.mean / base.mean - 1) <= SAME_WITHIN
    moved = Gap(base, adjusted)
    norm_ok = None if not larger.separated else larger.difference > 0
    adjusted_ok = True if same else (False if moved.separated else None)
    agrees = False if False in (norm_ok, adjusted_ok) else True if norm_ok and adjusted_ok else None
    return ClaimCheck(
        paper="Table 1: query weight RMS [H,H] — Adjusted LR ≈ Baseline (3.496e-2 vs 3.586e-2, −2.5 %), Update Norm "
              "larger (4.918e-2, 1.37×)",
        result=f"query weight RMS Baseline {base.mean:.3e}, Update Norm {norm.mean:.3e}, "
               f"Adjusted LR {adjusted.mean:.3e}",
        agrees=agrees,
        by_how_much=f"Update Norm / Baseline {norm.mean / base.mean:.2f}× ({_gap_text(larger, 'RMS')}); Adjusted LR / "
                    f"Baseline {adjusted.mean / base.mean:.2f}× (≈ means within ±{100 * SAME_WITHIN:.0f} %)",
    )


def table1_checks(table1: Numbers) -> list[ClaimCheck]:
    """Part (b)'s claims (Table 1); none unless all three variants ran."""
    if set(table1) != set(TABLE1_LABELS):
        return []
    return [_table1_loss(table1), _table1_mlp(table1), _table1_query(table1)]


def claim_text(checks: Sequence[ClaimCheck]) -> str:
    """The claims table, with what "agrees" means here."""
    note = ("A difference counts only when it exceeds the larger seed-to-seed std with ≥ 3 seeds per arm; otherwise "
            "the direction is \"cannot tell\". Magnitudes at this scale are not expected to match the paper's.")
    return f"{note}\n\n{claim_section(checks)}" if checks else "No claim could be checked (variants missing)."
