"""The ``update-rms`` study's numbers per run and per variant, its tables and report sections.

Weight RMS per matrix type is read from each run's final checkpoint; the update RMS is the runs'
``update_rms/muon`` and ``update_rms/adamw`` telemetry, its median after warmup. Each quantity a claim
reads is kept per seed too (``by_seed``), so the claims (``claims``) are paired over seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ....analysis.runs import Run
from ....analysis.weights import checkpoint_model, weight_rms, weight_rms_by_type
from ...protocol import MeanStd, mean_std
from ...study import Analysis, Finished
from . import plots
from .claims import TABLE1_LABELS, claim_text, sweep_checks, table1_checks
from .plan import TABLE1_RULES, table1_schedule_tokens

__all__ = ["analyse", "run_numbers", "variant_numbers"]


# ---- per run


def _median_after_warmup(steps: Sequence[int], values: Sequence[float], warmup: int) -> float | None:
    """The median of ``values`` at the steps after warmup (at all steps when none is later)."""
    import numpy as np

    later = [v for s, v in zip(steps, values) if s > warmup]
    chosen = later or list(values)
    return float(np.median(chosen)) if chosen else None


def _update_rms(run: Run, key: str) -> float | None:
    """Median after warmup of the ``update_rms/<key>`` telemetry."""
    steps, _, values = run.series(f"update_rms/{key}")
    return _median_after_warmup(steps.tolist(), values.tolist(), int(run.config.get("warmup_steps", 0)))


def _hidden_update_rms(run: Run, hidden: Sequence[str]) -> float | None:
    """Median after warmup of the mean update RMS over the hidden matrices (``update_rms/<name>`` keys)."""
    rows = [r for r in run.rows if hidden and all(f"update_rms/{n}" in r for n in hidden)]
    means = [sum(r[f"update_rms/{n}"] for n in hidden) / len(hidden) for r in rows]
    return _median_after_warmup([r["step"] for r in rows], means, int(run.config.get("warmup_steps", 0)))


def run_numbers(run: Run) -> dict[str, Any]:
    """One run's final losses, measured update RMS and final weight RMS (per matrix and per type)."""
    step, model = checkpoint_model(run)
    per_matrix = weight_rms(model)
    hidden = [name for name in per_matrix if name.startswith("layers.")]
    by_type = weight_rms_by_type(per_matrix)
    mlp = [rms for kind, rms in by_type.items() if kind.startswith("mlp.")]
    return {
        "seed": int(run.config["seed"]),
        "final_val_loss": run.final("val_loss"),
        "final_train_loss": run.final("loss"),
        "update_rms_muon": _update_rms(run, "muon"),
        "update_rms_adamw": _update_rms(run, "adamw"),
        "update_rms_hidden": _hidden_update_rms(run, hidden),
        "weight_rms_by_type": by_type,
        "weight_rms_mlp": sum(mlp) / len(mlp) if mlp else None,
        "weight_rms": per_matrix,
        "checkpoint_step": step,
    }


# ---- per variant

BY_SEED = {"final_val_loss": lambda n: n["final_val_loss"], "weight_rms_mlp": lambda n: n["weight_rms_mlp"],
           "weight_rms_query": lambda n: n["weight_rms_by_type"].get("attn.wq")}
"""The per-run numbers a claim pairs over seeds, kept per seed in ``variant_numbers(...)["by_seed"]``."""


def _stat(per_run: Sequence[Mapping[str, Any]], key: str, kind: str | None = None) -> dict[str, Any] | None:
    """``asdict(mean_std)`` over the runs of ``key`` (of ``weight_rms_by_type[kind]`` with ``kind``); None if absent."""
    values = [n["weight_rms_by_type"].get(kind) if kind else n[key] for n in per_run]
    values = [v for v in values if v is not None]
    return asdict(mean_std(values)) if values else None


def variant_numbers(per_run: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Mean ± std over a variant's seeds of every per-run number; weight RMS for every matrix type."""
    kinds = list(dict.fromkeys(k for n in per_run for k in n["weight_rms_by_type"]))
    out = {"runs": list(names), "final_val_loss_by_seed": {str(n["seed"]): n["final_val_loss"] for n in per_run},
           "by_seed": {key: {str(n["seed"]): get(n) for n in per_run if get(n) is not None}
                       for key, get in BY_SEED.items()}}
    for key in ("final_val_loss", "final_train_loss", "update_rms_muon", "update_rms_adamw", "update_rms_hidden",
                "weight_rms_mlp"):
        out[key] = _stat(per_run, key)
    out["weight_rms"] = {kind: _stat(per_run, "", kind) for kind in kinds}
    return out


def _variants(p: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    """``{part: {variant: [run names, by seed]}}`` of the plan."""
    seeds = p["seeds"]
    sweep = {"adamw": [f"sweep-adamw-s{s}" for s in seeds]}
    sweep.update({f"{r:g}": [f"sweep-rms{r:g}-s{s}" for s in seeds] for r in p["rms_targets"]})
    table1 = {v: [f"table1-{v}-s{s}" for s in seeds] for v in TABLE1_RULES}
    return {"sweep": sweep, "table1": table1}


def _ms(numbers: Mapping[str, Any] | None) -> MeanStd | None:
    return MeanStd(**numbers) if numbers else None


def _value(numbers: Mapping[str, Any] | None, digits: str = ".4f") -> str:
    if not numbers:
        return "—"
    spread = f" ± {numbers['std']:{digits}}" if numbers["std"] is not None else ""
    return f"{numbers['mean']:{digits}}{spread}"


def _sweep_table(sweep: Mapping[str, Mapping[str, Any]]) -> str:
    kinds = [k for k in next(iter(sweep.values()))["weight_rms"] if k.startswith("mlp.")] if sweep else []
    mlp = ", ".join(k.removeprefix("mlp.") for k in kinds)
    lines = ["| variant | final val loss | final train loss | measured update RMS (Muon / AdamW-routed) | query weight "
             f"RMS (attn.wq) | MLP weight RMS (mean of {mlp}) |", "|---|---|---|---|---|---|"]
    for variant, n in sweep.items():
        label = "AdamW" if variant == "adamw" else f"Muon, target {variant}"
        rms = (_value(n["update_rms_hidden"], ".3f") + " (hidden matrices), " + _value(n["update_rms_adamw"], ".3f")
               + " (all)" if variant == "adamw" else
               f"{_value(n['update_rms_muon'], '.3f')} / {_value(n['update_rms_adamw'], '.3f')}")
        lines.append(f"| {label} | {_value(n['final_val_loss'])} | {_value(n['final_train_loss'])} | {rms} | "
                     f"{_value(n['weight_rms'].get('attn.wq'), '.3e')} | "
                     f"{_value(n['weight_rms_mlp'], '.3e')} |")
    return "\n".join(lines)


def _table1_table(table1: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| variant (rule) | final val loss | final train loss | measured Muon update RMS | query weight RMS "
             "[H,H] | MLP w_in [4H,H] | MLP w_out [H,4H] |", "|---|---|---|---|---|---|---|"]
    for variant, n in table1.items():
        w = n["weight_rms"]
        lines.append(f"| {TABLE1_LABELS[variant]} (`{TABLE1_RULES[variant]}`) | {_value(n['final_val_loss'])} | "
                     f"{_value(n['final_train_loss'])} | {_value(n['update_rms_muon'], '.3f')} | "
                     f"{_value(w.get('attn.wq'), '.3e')} | {_value(w.get('mlp.w_in'), '.3e')} | "
                     f"{_value(w.get('mlp.w_out'), '.3e')} |")
    return "\n".join(lines)


def _all_types_table(numbers: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Every matrix type's final weight RMS (mean ± std over seeds), one row per variant of both parts."""
    kinds = list(dict.fromkeys(k for part in numbers.values() for n in part.values() for k in n["weight_rms"]))
    lines = ["| part | variant | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for part, variants in numbers.items():
        for variant, n in variants.items():
            cells = [_value(n["weight_rms"].get(k), ".2e") for k in kinds]
            lines.append(f"| {part} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _setting_text(p: Mapping[str, Any], runs: Mapping[str, Run]) -> str:
    tokens_per_step = p["seq_len"] * p["batch_size"]
    schedule = table1_schedule_tokens(p)
    first = next(iter(runs.values()))
    model = first.config.get("model_config", {})
    return "\n".join([
        f"- Model: `{p['model']}` at d_model {model.get('d_model', '?')} ({model.get('n_layers', '?')} layers, "
        f"{model.get('n_heads', '?')} heads), sequences of {p['seq_len']} tokens, batches of {p['batch_size']}.",
        f"- Shared by every run: lr {p['lr']:g}, weight decay {p['weight_decay']:g} (AdamW's best lr on the demo "
        "workload), cosine schedule to 0.1× with 5 % warmup, AdamW (β 0.9, 0.95) on embeddings, head and norms.",
        f"- Part (a), Table 8: SwiGLU MLP, {p['sweep_tokens']:,} tokens ({p['sweep_tokens'] // tokens_per_step} "
        f"steps) a run; Muon with scale `moonlight` (r·sqrt(max(A, B))) at r ∈ "
        f"{{{', '.join(f'{r:g}' for r in p['rms_targets'])}}}, and AdamW.",
        f"- Part (b), Table 1: plain GELU MLP [4H, H], [H, 4H]; {p['table1_tokens']:,} tokens "
        f"({p['table1_tokens'] // tokens_per_step} steps) of a {schedule:,}-token schedule "
        f"({100 * p['table1_fraction']:g} %; paper: 4B of 20B); r = 0.2. Baseline is `min_side` "
        "(0.2·sqrt(min(A, B)) = 0.2·√H on every matrix of this model), Update Norm `update_norm`, Adjusted LR "
        "`moonlight`.",
        "- Update RMS: median after warmup of the telemetry (`update_rms/muon`: mean over Muon matrices of "
        "RMS(s·O); `update_rms/adamw`: of m̂/(√v̂+ε)). Weight RMS: sqrt(mean(W²)) of the final checkpoint's "
        "matrices, averaged per type over layers. Training loss: the mean over the last logged interval.",
    ])


def analyse(finished: Finished) -> Analysis:
    """Both parts' numbers by variant, the paper's claims against them, and the plots."""
    p, out = finished.params, finished.out
    numbers: dict[str, dict[str, Any]] = {}
    for part, variants in _variants(p).items():
        numbers[part] = {}
        for variant, names in variants.items():
            present = [n for n in names if n in finished.runs]
            if present:
                per_run = [run_numbers(finished.runs[n]) for n in present]
                numbers[part][variant] = variant_numbers(per_run, present)
    sweep, table1 = numbers["sweep"], numbers["table1"]
    checks = sweep_checks(sweep) + table1_checks(table1)
    results = {"numbers": numbers, "claims": [asdict(c) for c in checks]}
    targets = [float(v) for v in sweep if v != "adamw"]
    figures = [
        ("Table 8: final validation and training loss vs target update RMS (mean ± std over seeds; AdamW band)",
         plots.plot_sweep_loss(sweep, out / "sweep_loss.png")),
        ("Table 8: final weight RMS per matrix type vs target update RMS (AdamW dotted)",
         plots.plot_weight_rms_vs_target(sweep, out / "sweep_weight_rms.png")),
        ("Measured update RMS (median after warmup) vs target, and AdamW's",
         plots.plot_measured_update_rms(sweep, table1, TABLE1_LABELS, out / "measured_update_rms.png")),
        ("Table 1: validation loss, query and MLP weight RMS by rule (mean ± std over seeds)",
         plots.plot_table1(table1, TABLE1_LABELS, out / "table1.png")),
    ]
    best = min(targets, key=lambda r: sweep[f"{r:g}"]["final_val_loss"]["mean"]) if targets else None
    summary = (f"Table 8: lowest final val loss at target RMS {best:g}; " if best is not None else "") + "; ".join(
        f"{TABLE1_LABELS[v]} {_ms(n['final_val_loss'])}" for v, n in table1.items())
    sections = [
        ("Setting", _setting_text(p, finished.runs)),
        ("Part (a): target update RMS sweep (Table 8)", _sweep_table(sweep)),
        ("Part (b): shape-aware scale rules (Table 1)", _table1_table(table1)),
        ("Final weight RMS of every matrix type", _all_types_table(numbers)),
        ("Paper claims vs small-scale result", claim_text(checks)),
    ]
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)
