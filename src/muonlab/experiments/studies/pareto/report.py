"""The ``pareto`` study's numbers, claims and report sections: the compute–time plane per corpus and target loss
from the batch-size runs' steps and the timing runs' step times, and the Newton–Schulz overhead grid.

The time model and the overhead formulas are ``timing``; plots ``plots``. The batch-size study's runs are read
from its output folder through its ``results.json`` (its parameters and the lr it trained at each batch), never
through its modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ....analysis.batch_size import OPTIMIZERS, CorpusTokens, corpus_tokens
from ....analysis.lr_sweep import grid_value
from ....analysis.runs import Run, load_run
from ...protocol import ClaimCheck, claim_section
from ...study import Analysis, Finished
from . import plots
from .plan import model_for, timing_name
from .timing import (
    StepTimes,
    devices_for,
    frontier,
    measured_step_times,
    ns_flops_per_step,
    ns_overhead_rule,
    overhead_exponents,
    step_time_s,
)

__all__ = ["Plane", "Timings", "build_plane", "overhead_grid", "pareto_analysis"]

GRAD_BYTES_PER_PARAM = 4
"""fp32 gradients are all-reduced."""


@dataclass(frozen=True)
class Timings:
    """The timing runs' step times by ``(optimizer, width, batch in sequences)``, and the timed models by width."""

    widths: list[int]
    batches: list[int]
    seq_len: int
    times: Mapping[tuple[str, int, int], StepTimes]
    models: Mapping[int, Any]


@dataclass(frozen=True)
class Plane:
    """One corpus's compute–time plane: per batch size (sequences) the devices, per optimizer the modelled
    step time and the seed-mean steps to each target (``inf`` where not reached)."""

    corpus: str
    targets: list[float]
    batches: list[int]
    devices: list[int]
    step_s: Mapping[str, list[float]]
    steps: Mapping[str, np.ndarray]

    def time(self, optimizer: str) -> np.ndarray:
        """``batches × targets``: seconds to each target, ``S_L(B) · t_step(B)``."""
        return self.steps[optimizer] * np.asarray(self.step_s[optimizer])[:, None]

    def points(self, optimizer: str, target: int) -> list[tuple[int, float]]:
        """``(devices, seconds)`` of the batch sizes that reached the target."""
        times = self.time(optimizer)[:, target]
        return [(n, float(t)) for n, t in zip(self.devices, times) if np.isfinite(t)]


def build_plane(table: CorpusTokens, batches: list[int], timings: Timings, width: int, p: Mapping[str, Any]) -> Plane:
    """The plane of ``table`` (the batch-size runs at ``batches`` sequences and model width ``width``)."""
    devices = [devices_for(b, p["device_batch"]) for b in batches]
    grad_bytes = GRAD_BYTES_PER_PARAM * timings.models[width].num_params()
    bandwidth = p["link_gb_per_s"] * 1e9
    step_s = {o: [step_time_s(timings.times[(o, width, min(b, p["device_batch"]))], n, grad_bytes, bandwidth)
                  for b, n in zip(batches, devices)] for o in OPTIMIZERS}
    return Plane(table.corpus, table.targets, list(batches), devices, step_s,
                 {o: table.mean_steps(o) for o in OPTIMIZERS})


def compare(plane: Plane, target: int) -> list[dict[str, Any]]:
    """Per device count: each optimizer's frontier (least seconds to the target with at most that many devices),
    and whether Muon's is left of (below) AdamW's."""
    fronts = {o: frontier(plane.points(o, target)) for o in OPTIMIZERS}
    counts = sorted(set(fronts["adamw"]) | set(fronts["muon"]))
    rows = []
    for n in counts:
        a, m = (min((t for k, t in fronts[o].items() if k <= n), default=None) for o in OPTIMIZERS)
        rows.append({"devices": n, "adamw_s": a, "muon_s": m, "muon_left": None if a is None or m is None else m < a})
    return rows


def eaten(plane: Plane, target: int) -> list[int]:
    """The batch sizes (sequences) where Muon needed fewer steps but more time: its optimizer step's overhead
    ate the gain."""
    steps, times = plane.steps, {o: plane.time(o)[:, target] for o in OPTIMIZERS}
    return [b for i, b in enumerate(plane.batches) if np.isfinite(times["adamw"][i]) and np.isfinite(times["muon"][i])
            and steps["muon"][i, target] < steps["adamw"][i, target] and times["muon"][i] > times["adamw"][i]]


def overhead_grid(timings: Timings) -> list[dict[str, float]]:
    """Per width and batch: the measured ``(t_opt,Muon − t_opt,AdamW) / t_fwd_bwd`` (forward/backward: the mean
    of both runs'), the model's Newton–Schulz FLOPs over its training FLOPs, and 5·d/B."""
    rows = []
    for w in timings.widths:
        model = timings.models[w]
        ns = ns_flops_per_step(model)
        for b in timings.batches:
            adamw, muon = timings.times[("adamw", w, b)], timings.times[("muon", w, b)]
            tokens = b * timings.seq_len
            fwd_bwd = (adamw.fwd_bwd_s + muon.fwd_bwd_s) / 2
            rows.append({"width": w, "batch_tokens": tokens, "fwd_bwd_s": fwd_bwd, "adamw_opt_s": adamw.optimizer_s,
                         "muon_opt_s": muon.optimizer_s, "measured": (muon.optimizer_s - adamw.optimizer_s) / fwd_bwd,
                         "flops": ns / (model.flops_per_token(timings.seq_len) * tokens),
                         "rule": ns_overhead_rule(w, tokens)})
    return rows


def _frontier_claim(plane: Plane, comparisons: list[list[dict[str, Any]]]) -> ClaimCheck:
    cells = [(j, row) for j, rows in enumerate(comparisons) for row in rows if row["muon_left"] is not None]
    left = [(j, row) for j, row in cells if row["muon_left"]]
    right = [f"L={plane.targets[j]:.3f} at {row['devices']} device{'s' if row['devices'] > 1 else ''}"
             for j, row in cells if not row["muon_left"]]
    ratio = [row["adamw_s"] / row["muon_s"] for _, row in cells]
    eats = {plane.targets[j]: eaten(plane, j) for j in range(len(plane.targets))}
    eaten_text = "; ".join(f"L={t:.3f}: B={bs}" for t, bs in eats.items() if bs)
    return ClaimCheck(
        paper="Muon's iso-loss frontier lies left of AdamW's on the devices–time plane: at every device count it "
              "reaches the target loss sooner, at every threshold (Essential AI §2.3, Figures 1–2)",
        result=f"{plane.corpus}: Muon's frontier is left of AdamW's at {len(left)} of {len(cells)} (threshold, device "
               "count) points" + (f"; right of it at {', '.join(right)}" if right else "")
               + (f". Newton–Schulz overhead ate Muon's step advantage at (sequences per batch) {eaten_text}"
                  if eaten_text else ". Muon's optimizer overhead never outweighed its fewer steps"),
        agrees=len(left) == len(cells) if cells else None,
        by_how_much=f"AdamW's time / Muon's time on the frontiers: median {np.median(ratio):.2f}, range "
                    f"{min(ratio):.2f}–{max(ratio):.2f}" if ratio else "—",
    )


def _overhead_claim(grid: list[dict[str, float]]) -> ClaimCheck:
    positive = [r for r in grid if r["measured"] > 0]
    try:
        alpha, beta = overhead_exponents([r["width"] for r in positive], [r["batch_tokens"] for r in positive],
                                         [r["measured"] for r in positive])
    except ValueError:
        alpha = beta = None
    scale = [r["measured"] / r["flops"] for r in positive]
    return ClaimCheck(
        paper="Muon's extra cost per model FLOP is ∝ d/B (≈ 5·d/B): it falls ∝ 1/B at fixed width and rises ∝ d at "
              "fixed batch (Essential AI §2.1.1, infra blog)",
        result=("measured (t_opt,Muon − t_opt,AdamW)/t_fwd_bwd ∝ " + (f"d^{alpha:.2f} · B^{beta:.2f}"
                if alpha is not None else "— (too few positive measurements to fit)")
                + f" over {len(positive)} of {len(grid)} (width, batch) cells with a positive overhead "
                "(rule: d^1 B^-1)"),
        agrees=None if alpha is None else alpha > 0 and beta < 0,
        by_how_much=(f"measured / FLOP-predicted overhead: median {np.median(scale):.2f}× (Newton–Schulz's matmul "
                     "efficiency against the forward/backward's on this machine)" if scale else "—"),
    )


def _plane_table(plane: Plane, target: int) -> str:
    lines = [f"**L = {plane.targets[target]:.3f}**", "",
             "| B (seq) | devices | steps AdamW | steps Muon | step AdamW (ms) | step Muon (ms) | time AdamW (s) | "
             "time Muon (s) | AdamW/Muon time |", "|---|---|---|---|---|---|---|---|---|"]
    times = {o: plane.time(o)[:, target] for o in OPTIMIZERS}
    for i, b in enumerate(plane.batches):
        cells = [f"{plane.steps[o][i, target]:,.1f}" if np.isfinite(times[o][i]) else "not reached" for o in OPTIMIZERS]
        cells += [f"{plane.step_s[o][i] * 1e3:.1f}" for o in OPTIMIZERS]
        cells += [f"{times[o][i]:,.1f}" if np.isfinite(times[o][i]) else "—" for o in OPTIMIZERS]
        both = all(np.isfinite(times[o][i]) for o in OPTIMIZERS)
        cells.append(f"{times['adamw'][i] / times['muon'][i]:.2f}" if both else "—")
        lines.append(f"| {b} | {plane.devices[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _grid_table(grid: list[dict[str, float]]) -> str:
    lines = ["| d | B (tokens) | fwd/bwd (ms) | AdamW optimizer step (ms) | Muon optimizer step (ms) | "
             "measured overhead | FLOP-predicted | 5·d/B |", "|---|---|---|---|---|---|---|---|"]
    for r in grid:
        lines.append(f"| {r['width']} | {r['batch_tokens']:,} | {r['fwd_bwd_s'] * 1e3:.1f} | "
                     f"{r['adamw_opt_s'] * 1e3:.1f} | {r['muon_opt_s'] * 1e3:.1f} | {r['measured']:.3f} | "
                     f"{r['flops']:.3f} | {r['rule']:.3f} |")
    return "\n".join(lines)


def _headline(checks: list[ClaimCheck]) -> str:
    return "\n".join(f"- {c.result} ({c.by_how_much})." for c in checks)


def _model_text(p: Mapping[str, Any], bs: Mapping[str, Any], timings: Timings) -> str:
    width = bs["d_model"]
    params = timings.models[width].num_params()
    return "\n".join([
        f"- Devices: a batch of B sequences runs on max(1, B / {p['device_batch']}) devices, each doing the "
        f"forward/backward of min(B, {p['device_batch']}) sequences of {p['seq_len']} tokens (data parallelism).",
        f"- Per step: measured forward/backward at that per-device batch + measured optimizer step (Muon's includes "
        f"Newton–Schulz on every matrix, replicated on every device, as DDP and Moonlight's Distributed Muon run it; "
        f"Essential AI's all-to-all sharding would divide it by the devices) + a ring all-reduce of the fp32 gradients "
        f"({params:,} parameters, {GRAD_BYTES_PER_PARAM * params / 1e6:.2f} MB): 2(n − 1)/n · bytes / "
        f"{p['link_gb_per_s']:g} GB/s, not overlapped with the backward pass.",
        f"- Step times are medians over each timing run's {p['timing_steps']} steps after the first 3, measured "
        "in-process in the training loop (the step's wall time, and its optimizer step alone).",
        "- Steps to a target: the batch-size study's seed-mean steps S_L(B) (smoothed training loss on fresh "
        "batches); time = S_L(B) × step time.",
    ])


def pareto_analysis(tables: Mapping[str, CorpusTokens], bs: Mapping[str, Any], timings: Timings,
                    p: Mapping[str, Any], out: Path) -> Analysis:
    """Planes, frontier comparisons, overhead grid, claims, plots and report sections."""
    width = bs["d_model"]
    planes = {c: build_plane(t, list(bs["batch_sizes"]), timings, width, p) for c, t in tables.items()}
    comparisons = {c: [compare(plane, j) for j in range(len(plane.targets))] for c, plane in planes.items()}
    grid = overhead_grid(timings)
    checks = [*(_frontier_claim(planes[c], comparisons[c]) for c in planes), _overhead_claim(grid)]
    figures = [
        ("Devices against time to each target loss (AdamW dashed, Muon solid)",
         plots.plot_frontiers(planes, out / "pareto_frontier.png")),
        ("Newton–Schulz overhead per forward/backward time against batch size, per width, with the FLOP predictions",
         plots.plot_ns_overhead(grid, out / "ns_overhead.png")),
    ]
    sections = [("Headline", _headline(checks)), ("Paper claim vs small-scale result", claim_section(checks)),
                ("Time model", _model_text(p, bs, timings))]
    for c, plane in planes.items():
        tables = [_plane_table(plane, j) for j in range(len(plane.targets))]
        sections.append((f"Time to target, {c}", "\n\n".join(tables)))
    sections.append(("Newton–Schulz overhead", _grid_table(grid)))
    results = {
        "planes": {c: {"targets": plane.targets, "batches": plane.batches, "devices": plane.devices,
                       "step_s": plane.step_s, "frontiers": comparisons[c],
                       "eaten": {f"{t:.4f}": eaten(plane, j) for j, t in enumerate(plane.targets)}}
                   for c, plane in planes.items()},
        "ns_overhead": grid, "claims_agree": [c.agrees for c in checks],
    }
    summary = "; ".join(check.result.split(";")[0] for check in checks[:-1])
    return Analysis(results=results, sections=sections, figures=figures, summary=summary)


def load_batch_size_study(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``batch-size`` study's parameters and per-corpus results (``lr`` per optimizer and batch) from its
    ``results.json`` in ``folder``."""
    results = folder / "results.json"
    if not results.is_file():
        raise FileNotFoundError(f"pareto reads the batch-size study's runs, but {folder} holds no finished batch-size "
                                f"study (no {results.name}): run `muonlab experiment batch-size --out {folder}` first, "
                                "or set batch_size_runs to the folder it wrote")
    recorded = json.loads(results.read_text())
    if recorded.get("study") != "batch-size":
        raise ValueError(f"{results} is the {recorded.get('study')!r} study's, not batch-size's")
    return recorded["params"], recorded["results"]["corpora"]


def batch_size_arms(folder: Path, bs: Mapping[str, Any], corpora: Mapping[str, Any]
                    ) -> dict[str, dict[str, list[list[Run]]]]:
    """``{corpus: {optimizer: [runs at batch i, one per seed in seed order]}}``: the runs in ``folder`` at the lr
    the batch-size study's results record for that corpus, optimizer and batch."""
    index: dict[tuple, list[Run]] = {}
    for path in sorted(q for q in folder.iterdir() if (q / "config.json").is_file()):
        run = load_run(path)
        c = run.config
        key = (c.get("corpus"), c.get("optimizer"), c.get("batch_size"), grid_value(float(c.get("lr", 0.0))))
        index.setdefault(key, []).append(run)
    arms: dict[str, dict[str, list[list[Run]]]] = {}
    for corpus, numbers in corpora.items():
        for o in OPTIMIZERS:
            per_batch = []
            for batch, lr in zip(bs["batch_sizes"], numbers["lr"][o]):
                runs = sorted(index.get((corpus, o, batch, grid_value(lr)), []), key=lambda r: int(r.config["seed"]))
                if not runs:
                    raise ValueError(f"{folder} holds no {o} run on {corpus} at batch {batch} and lr {lr:g}, which its "
                                     "results.json records: the batch-size study there is incomplete")
                per_batch.append(runs)
            arms.setdefault(corpus, {})[o] = per_batch
    return arms


def _check_model(p: Mapping[str, Any], bs: Mapping[str, Any]) -> None:
    """The timing runs must time the batch-size study's model at its per-device batches."""
    differing = [f"{k}={p[k]} (batch-size: {bs[k]})" for k in ("n_layers", "head_dim", "seq_len") if p[k] != bs[k]]
    if bs["d_model"] not in p["widths"]:
        differing.append(f"widths={p['widths']} must include its d_model={bs['d_model']}")
    if differing:
        raise ValueError("pareto times another model than the batch-size runs in "
                         f"{p['batch_size_runs']}: {'; '.join(differing)}")
    needed = sorted({min(b, p["device_batch"]) for b in bs["batch_sizes"]} - set(p["timing_batches"]))
    if needed:
        raise ValueError(f"timing_batches={p['timing_batches']} lacks the per-device batches {needed} that the "
                         f"batch-size runs' batches {bs['batch_sizes']} need at device_batch={p['device_batch']}")


def analyse(finished: Finished) -> Analysis:
    """The frontier per corpus and target, and the Newton–Schulz overhead grid, from the run folders."""
    p = finished.params
    folder = Path(p["batch_size_runs"])
    bs, corpora = load_batch_size_study(folder)
    _check_model(p, bs)
    arms = batch_size_arms(folder, bs, corpora)
    tables = {c: corpus_tokens(c, [b * bs["seq_len"] for b in bs["batch_sizes"]], by_o, bs["targets"],
                               bs["ema_tokens"]) for c, by_o in arms.items()}
    timings = Timings(
        widths=list(p["widths"]), batches=list(p["timing_batches"]), seq_len=p["seq_len"],
        times={(o, w, b): measured_step_times(finished.runs[timing_name(o, w, b)])
               for o in OPTIMIZERS for w in p["widths"] for b in p["timing_batches"]},
        models={w: model_for(p, w) for w in p["widths"]},
    )
    return pareto_analysis(tables, bs, timings, p, finished.out)
