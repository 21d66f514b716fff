"""The ``update-rms`` study's paper claims, checked against its numbers (``report.variant_numbers``).

Each check takes the study's per-variant numbers (``asdict(MeanStd)`` per quantity, and ``by_seed``
values) and returns a ``ClaimCheck``: the paper's claim with its number, what came out, whether the
direction agrees, by how much. Every variant of a seed starts from the same weights and sees the same
batches, so a difference is paired over seeds (``muonlab.analysis.paired``): it counts only when the 95 %
t interval of the per-seed differences excludes 0 with ≥ 3 seeds; otherwise the check says "cannot tell".
The report shows the interval and, beside it, each arm's unpaired mean ± std. Thresholds fixed before any run:

- ``SAME_WITHIN``: "Adjusted LR leaves the query weight RMS as it is" holds within ±10 % (paper: −2.5 %);
- ``ADAMW_RMS_RANGE``: AdamW's measured update RMS "around 0.2 to 0.4" counts as 0.15–0.4 (PAPERS.md §5.1 M2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ....analysis.paired import PairedDifference
from ...protocol import ClaimCheck, MeanStd, claim_section, combined_verdict, paired

__all__ = ["ADAMW_RMS_RANGE", "SAME_WITHIN", "TABLE1_LABELS", "claim_text", "sweep_checks", "table1_checks"]

TABLE1_LABELS = {"baseline": "Baseline", "update-norm": "Update Norm", "adjusted-lr": "Adjusted LR"}
SAME_WITHIN = 0.10
ADAMW_RMS_RANGE = (0.15, 0.4)

Numbers = Mapping[str, Mapping[str, Any]]


def _ms(numbers: Mapping[str, Any] | None) -> MeanStd | None:
    return MeanStd(**numbers) if numbers else None


def _difference(a: Mapping[str, Any], b: Mapping[str, Any], key: str = "final_val_loss") -> PairedDifference | None:
    """``b − a`` of ``key`` paired over the seeds both variants ran (None when they share none)."""
    return paired({int(s): v for s, v in a["by_seed"][key].items()}, {int(s): v for s, v in b["by_seed"][key].items()})


def _text(d: PairedDifference | None, unit: str = "nats") -> str:
    return d.text(unit) if d is not None else "no seed in common"


def _verdict(d: PairedDifference | None, expected_sign: int) -> bool | None:
    return d.verdict(expected_sign) if d is not None else None


def _u_shape(sweep: Numbers, targets: list[float]) -> ClaimCheck:
    loss = {r: _ms(sweep[f"{r:g}"]["final_val_loss"]) for r in targets}
    best = min(targets, key=lambda r: loss[r].mean)
    middle = [r for r in targets if r in (0.2, 0.4)]
    extremes = [r for r in (min(targets), max(targets)) if r != best]
    others = extremes if best in middle else middle
    diffs = {r: _difference(sweep[f"{best:g}"], sweep[f"{r:g}"]) for r in others}
    if best in middle:  # the extremes must be separated above the best
        agrees = combined_verdict([_verdict(d, +1) for d in diffs.values()])
    else:  # the best is outside 0.2–0.4: the claim fails when 0.2 and 0.4 are both separated above it
        agrees = False if middle and all(_verdict(d, +1) for d in diffs.values()) else None
    return ClaimCheck(
        paper="Table 8: validation loss is U-shaped in the target update RMS, best at 0.2–0.4 (3.325, 3.314), "
              "worse at 0.05 (3.503, +0.189 over 0.4) and 0.8 (3.543, +0.229)",
        result="final val loss " + ", ".join(f"{r:g}: {loss[r]}" for r in targets) + f"; lowest at {best:g}",
        agrees=agrees,
        by_how_much="; ".join(f"{r:g} − {best:g} = {_text(d)}" for r, d in diffs.items()),
    )


def _weight_growth(sweep: Numbers, targets: list[float]) -> ClaimCheck:
    kinds = {"query (attn.wq)": "weight_rms_query", "MLP (mean)": "weight_rms_mlp"}
    means = {kind: [_ms(sweep[f"{r:g}"]["weight_rms"].get("attn.wq") if key == "weight_rms_query"
                        else sweep[f"{r:g}"]["weight_rms_mlp"]) for r in targets] for kind, key in kinds.items()}
    steps = {kind: [_difference(sweep[f"{a:g}"], sweep[f"{b:g}"], key) for a, b in zip(targets, targets[1:])]
             for kind, key in kinds.items()}
    verdicts = {kind: combined_verdict([_verdict(d, +1) for d in ds]) for kind, ds in steps.items()}
    lo, hi = targets[0], targets[-1]
    word = {True: "rises at every step (each separated)", False: "falls at some step (separated)",
            None: "not separated at every step"}
    return ClaimCheck(
        paper="Table 8: weight RMS rises with the target update RMS (AttnQ 5.74e-3 → 7.23e-2, MLP 8.01e-3 → 8.73e-2 "
              "from 0.05 to 0.8: 12.6× and 10.9×)",
        result="; ".join(f"{kind}: " + " → ".join(f"{m.mean:.2e}" for m in ms) for kind, ms in means.items()),
        agrees=combined_verdict(list(verdicts.values())),
        by_how_much="; ".join(f"{kind} {word[verdicts[kind]]}, {ms[-1].mean / ms[0].mean:.1f}× from {lo:g} to {hi:g}"
                              for kind, ms in means.items()),
    )


def _muon_vs_adamw(sweep: Numbers, targets: list[float]) -> ClaimCheck:
    adamw = _ms(sweep["adamw"]["final_val_loss"])
    diffs = {r: _difference(sweep["adamw"], sweep[f"{r:g}"]) for r in targets}
    better = [r for r, d in diffs.items() if _verdict(d, -1) is True]
    worse = [r for r, d in diffs.items() if _verdict(d, -1) is False]
    return ClaimCheck(
        paper="Table 8: at AdamW's lr and weight decay every Muon setting beats AdamW (3.314–3.543 vs 3.679)",
        result=f"AdamW {adamw}; Muon lower at {', '.join(f'{r:g}' for r in better) or 'no target'} (separated)"
               + (f", higher at {', '.join(f'{r:g}' for r in worse)}" if worse else ""),
        agrees=combined_verdict([_verdict(d, -1) for d in diffs.values()]),
        by_how_much="; ".join(f"{r:g} − AdamW = {_text(d)}" for r, d in diffs.items()),
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
    diffs = {v: _difference(t["baseline"], t[v]) for v in ("update-norm", "adjusted-lr")}
    return ClaimCheck(
        paper="Table 1: Update Norm and Adjusted LR both beat the Baseline 0.2·√H (val loss 2.789 and 2.789 vs "
              "2.812: −0.023 nats)",
        result="final val loss " + ", ".join(f"{TABLE1_LABELS[v]} {_ms(t[v]['final_val_loss'])}" for v in t),
        agrees=combined_verdict([_verdict(d, -1) for d in diffs.values()]),
        by_how_much="; ".join(f"{TABLE1_LABELS[v]} − Baseline = {_text(d)}" for v, d in diffs.items()),
    )


def _table1_mlp(t: Numbers) -> ClaimCheck:
    diffs = {v: _difference(t["baseline"], t[v], "weight_rms_mlp") for v in ("update-norm", "adjusted-lr")}
    per_kind = "; ".join(
        f"{TABLE1_LABELS[v]} / Baseline: " + ", ".join(
            f"{k.removeprefix('mlp.')} {t[v]['weight_rms'][k]['mean'] / t['baseline']['weight_rms'][k]['mean']:.2f}×"
            for k in t["baseline"]["weight_rms"] if k.startswith("mlp.")) for v in diffs)
    return ClaimCheck(
        paper="Table 1: the MLP weight RMS roughly doubles under Update Norm and Adjusted LR (5.01e-2 and 4.89e-2 vs "
              "2.52e-2: 1.99× and 1.94×; sqrt(4H)/√H = 2)",
        result="MLP weight RMS (mean of w_in, w_out) " + ", ".join(
            f"{TABLE1_LABELS[v]} {_ms(t[v]['weight_rms_mlp']).mean:.3e}" for v in t),
        agrees=combined_verdict([_verdict(d, +1) for d in diffs.values()]),
        by_how_much=per_kind + "; paired − Baseline: " + "; ".join(f"{TABLE1_LABELS[v]} {_text(d, '')}"
                                                                   for v, d in diffs.items()),
    )


def _table1_query(t: Numbers) -> ClaimCheck:
    base, norm, adjusted = (_ms(t[v]["weight_rms"]["attn.wq"]) for v in ("baseline", "update-norm", "adjusted-lr"))
    larger = _difference(t["baseline"], t["update-norm"], "weight_rms_query")
    moved = _difference(t["baseline"], t["adjusted-lr"], "weight_rms_query")
    same = abs(adjusted.mean / base.mean - 1) <= SAME_WITHIN
    norm_ok = _verdict(larger, +1)
    adjusted_ok = True if same else (False if moved is not None and moved.separated else None)
    return ClaimCheck(
        paper="Table 1: query weight RMS [H,H] — Adjusted LR ≈ Baseline (3.496e-2 vs 3.586e-2, −2.5 %), Update Norm "
              "larger (4.918e-2, 1.37×)",
        result=f"query weight RMS Baseline {base.mean:.3e}, Update Norm {norm.mean:.3e}, "
               f"Adjusted LR {adjusted.mean:.3e}",
        agrees=combined_verdict([norm_ok, adjusted_ok]),
        by_how_much=f"Update Norm / Baseline {norm.mean / base.mean:.2f}× (paired {_text(larger, '')}); Adjusted LR / "
                    f"Baseline {adjusted.mean / base.mean:.2f}× (≈ means within ±{100 * SAME_WITHIN:.0f} %; paired "
                    f"{_text(moved, '')})",
    )


def table1_checks(table1: Numbers) -> list[ClaimCheck]:
    """Part (b)'s claims (Table 1); none unless all three variants ran."""
    if set(table1) != set(TABLE1_LABELS):
        return []
    return [_table1_loss(table1), _table1_mlp(table1), _table1_query(table1)]


def claim_text(checks: Sequence[ClaimCheck]) -> str:
    """The claims table, with what "agrees" means here."""
    note = ("A difference is paired over seeds (every variant of a seed shares its initialisation and data order): it "
            "counts only when the 95 % t interval of the per-seed differences excludes 0 with ≥ 3 seeds; otherwise "
            "the direction is \"cannot tell\". Each difference is given as mean (interval, per-seed signs; unpaired "
            "means ± std beside). Magnitudes at this scale are not expected to match the paper's.")
    return f"{note}\n\n{claim_section(checks)}" if checks else "No claim could be checked (variants missing)."
