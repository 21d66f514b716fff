"""``update-rms``: Moonlight's update-RMS studies — the target-RMS sweep (Table 8) and the shape rules (Table 1).

Moonlight (arXiv 2502.16982 §2.2) scales Muon's orthogonalized update to a target RMS of 0.2, the
typical RMS of an AdamW update, so that AdamW's learning rate and weight decay carry over. Two of
its ablations check that choice, and this study repeats both at small scale, several seeds each
(the seed sets initialisation and data order; within a seed every variant gets the same ones):

- **Part (a), Table 8 (App. A)**: Muon with target update RMS r ∈ {0.05, 0.1, 0.2, 0.4, 0.8}
  (``scale="moonlight"``: r·sqrt(max(A, B))) at one shared lr and weight decay, plus AdamW at the
  same lr and weight decay. Paper: validation loss is U-shaped in r, best at 0.2–0.4; the weight
  RMS grows with r; every setting beats AdamW.
- **Part (b), Table 1 (§3.1)**: a model with a plain 2-layer GELU MLP (matrices [4H, H] and
  [H, 4H]), three rules at r = 0.2, each stopped at ``table1_fraction`` (20 %) of its lr schedule:
  Baseline 0.2·√H (``min_side``), Update Norm 0.2·O/RMS(O) (``update_norm``), Adjusted LR
  0.2·sqrt(max(A, B)) (``moonlight``). Paper: both shape-aware rules beat the Baseline (2.789 vs
  2.812); their MLP weight RMS is ≈ 2× the Baseline's; the query weight RMS is unchanged by
  Adjusted LR and larger under Update Norm.

Weight RMS per matrix type is read from each run's final checkpoint; the update RMS is the runs'
``update_rms/muon`` and ``update_rms/adamw`` telemetry, its median after warmup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ...analysis import update_rms_plots as plots
from ...analysis.runs import Run
from ...analysis.weights import checkpoint_model, weight_rms, weight_rms_by_type
from ...train.config import TrainConfig
from ..protocol import MeanStd, mean_std
from ..study import Analysis, Finished, PlannedRun, Study
from ._update_rms_claims import TABLE1_LABELS, claim_text, sweep_checks, table1_checks

TABLE1_RULES = {"baseline": "min_side", "update-norm": "update_norm", "adjusted-lr": "moonlight"}
"""Table 1's three variants and the scale rule (``muonlab.optim.scaling``) that is each."""

PRESETS: dict[str, dict[str, Any]] = {
    # The demo's model (d=160, 4 layers) and data; lr 3e-3, wd 0.1: AdamW's best lr on the demo workload (demo.py),
    # shared by every run as in Table 8. Part (a) SwiGLU (the demo's MLP): 192 steps of 16 × 256 tokens (0.78 epochs
    # of the English corpus); part (b) GELU [H, 4H]: 128 steps of a 640-step schedule. 27 runs, --workers 2:
    # 28 min 53 s on a 2-core AMD EPYC (the dry-run said 25 min 31 s).
    "cpu": dict(
        seeds=(0, 1, 2), corpus="english", tokenizer="bpe", vocab_size=4096, model="demo", d_model=160,
        seq_len=256, batch_size=16, lr=3e-3, weight_decay=0.1, rms_targets=(0.05, 0.1, 0.2, 0.4, 0.8),
        sweep_tokens=786_432, table1_tokens=524_288, table1_fraction=0.2, telemetry_every=8, compile=False,
        device="auto",
    ),
    # One GPU (H100/H200), not run yet: the demo model at its own width (d=256) on the Python corpus, 16k-token
    # steps, 100 steps a sweep run and 50 of a 250-step schedule for Table 1; eager (compiling 27 short runs costs
    # more than it saves). Sized by hand at ~15 s a run, mostly process start-up: ~7 min, plus the tokenizer once.
    "gpu": dict(
        seeds=(0, 1, 2), corpus="python", tokenizer="bpe", vocab_size=8192, model="demo", d_model=0,
        seq_len=512, batch_size=32, lr=3e-3, weight_decay=0.1, rms_targets=(0.05, 0.1, 0.2, 0.4, 0.8),
        sweep_tokens=1_638_400, table1_tokens=819_200, table1_fraction=0.2, telemetry_every=10, compile=False,
        device="cuda",
    ),
}


def _base(p: Mapping[str, Any], train_tokens: int, schedule_tokens: int, mlp: str) -> TrainConfig:
    """The shared config: cosine schedule with 5 % warmup (of the schedule), 6 evaluations, 3 checkpoints."""
    tokens_per_step = p["seq_len"] * p["batch_size"]
    steps, schedule_steps = train_tokens // tokens_per_step, max(train_tokens, schedule_tokens) // tokens_per_step
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model=p["model"],
        d_model=p["d_model"], mlp=mlp, seq_len=p["seq_len"], batch_size=p["batch_size"], train_tokens=train_tokens,
        schedule_tokens=schedule_tokens, lr=p["lr"], weight_decay=p["weight_decay"], schedule="cosine",
        warmup_steps=max(1, schedule_steps // 20), eval_every=max(1, steps // 6), eval_batches=8,
        log_every=max(1, min(10, steps // 20)), telemetry_every=p["telemetry_every"],
        checkpoint_every=max(1, steps // 3), compile=p["compile"], device=p["device"],
    )


def table1_schedule_tokens(p: Mapping[str, Any]) -> int:
    """The lr schedule of part (b): ``table1_tokens`` is ``table1_fraction`` of it."""
    if not 0 < p["table1_fraction"] <= 1:
        raise ValueError(f"table1_fraction must lie in (0, 1], got {p['table1_fraction']}")
    return round(p["table1_tokens"] / p["table1_fraction"])


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """Per seed: ``sweep-adamw-s<seed>``, ``sweep-rms<r>-s<seed>`` for each target r (part a), then
    ``table1-<variant>-s<seed>`` for baseline, update-norm and adjusted-lr (part b)."""
    sweep = _base(p, p["sweep_tokens"], 0, "swiglu")
    table1 = _base(p, p["table1_tokens"], table1_schedule_tokens(p), "gelu")
    runs = []
    for seed in p["seeds"]:
        runs.append(PlannedRun(f"sweep-adamw-s{seed}", sweep.replace(optimizer="adamw", seed=seed)))
        runs += [PlannedRun(f"sweep-rms{r:g}-s{seed}", sweep.replace(optimizer="muon", update_rms=r, seed=seed))
                 for r in p["rms_targets"]]
        runs += [PlannedRun(f"table1-{variant}-s{seed}", table1.replace(optimizer="muon", scale=rule, seed=seed))
                 for variant, rule in TABLE1_RULES.items()]
    return runs


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


def _stat(per_run: Sequence[Mapping[str, Any]], key: str, kind: str | None = None) -> dict[str, Any] | None:
    """``asdict(mean_std)`` over the runs of ``key`` (of ``weight_rms_by_type[kind]`` with ``kind``); None if absent."""
    values = [n["weight_rms_by_type"].get(kind) if kind else n[key] for n in per_run]
    values = [v for v in values if v is not None]
    return asdict(mean_std(values)) if values else None


def variant_numbers(per_run: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Mean ± std over a variant's seeds of every per-run number; weight RMS for every matrix type."""
    kinds = list(dict.fromkeys(k for n in per_run for k in n["weight_rms_by_type"]))
    out = {"runs": list(names), "final_val_loss_by_seed": {str(n["seed"]): n["final_val_loss"] for n in per_run}}
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


STUDY = Study(
    name="update-rms",
    title="muonlab update-rms: Muon's target update RMS (Moonlight Table 8) and shape-aware scaling (Table 1)",
    claim="Moonlight (arXiv 2502.16982 §2.2, App. A Table 8, §3.1 Table 1): a target update RMS of 0.2–0.4 trains best "
          "(val loss 3.325/3.314 vs 3.503 at 0.05 and 3.543 at 0.8, AdamW 3.679), and scaling by the matrix shape "
          "(0.2·sqrt(max(A, B)) or 0.2·O/RMS(O)) beats 0.2·√H for every matrix (2.789 vs 2.812), doubling the "
          "MLP weight RMS.",
    presets=PRESETS,
    plan=plan,
    analyse=analyse,
)
