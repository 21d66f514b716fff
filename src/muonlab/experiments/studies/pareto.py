"""``pareto``: Essential AI's compute–time plane (arXiv 2505.02222 §2.3, Figures 1–2) from the ``batch-size`` runs,
and Muon's Newton–Schulz overhead against the ≈ 5·d/B rule (§2.1.1; PAPERS.md §2.10, E2 and E4).

Essential AI plotted, for several target losses, the devices used against the wall-clock time to
reach the loss, one curve per optimizer across batch sizes, and found Muon's curve left of AdamW's:
"Muon explicitly expands the Pareto frontier on the compute-time tradeoff". This study rebuilds the
plane from the ``batch-size`` study's run folders (``batch_size_runs``: its output folder, run first
with ``muonlab experiment batch-size``): the steps each optimizer needed to reach each target at each
batch size, times a per-step time built from measurements and a stated model
(``muonlab.analysis.pareto``): a batch of ``B`` sequences on ``B / device_batch`` devices, each
doing the forward/backward of ``device_batch`` sequences, a ring all-reduce of the fp32 gradients at
``link_gb_per_s``, and the whole optimizer step (Newton–Schulz included) replicated on every device.

Its own runs are short *timing runs* (``timing_steps`` steps each, every step logged with its time
and its optimizer step's time) of both optimizers for every width of ``widths`` and batch of
``timing_batches``: they give the forward/backward and optimizer-step times of the frontier (at the
``batch-size`` model's width and per-device batches) and the measured Newton–Schulz overhead
``(t_opt,Muon − t_opt,AdamW) / t_fwd_bwd`` across widths and batch sizes, against the FLOP count
of the model's matrices and against 5·d/B. Timing runs are ordinary run folders, so the study plans,
resumes and costs them like any other; they train one at a time (``times_steps``: a neighbour would
slow each step), a few minutes in all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...analysis.pareto import measured_step_times
from ...analysis.runs import Run, load_run
from ...models import model_config_for
from ...train.config import TrainConfig
from ..study import Analysis, Finished, PlannedRun, Study, parameters
from . import batch_size
from ._batch_size_report import measure
from ._pareto_report import Timings, pareto_analysis

OPTIMIZERS = ("adamw", "muon")
BYTE_VOCAB = 257

PRESETS: dict[str, dict[str, Any]] = {
    # The batch-size cpu preset's model (4 layers, heads of 32, 128-token sequences) at d = 64, 128 (its width) and
    # 256; per-device batch 4 sequences (512 tokens), so its 256–8,192-token batches run on 1–16 devices; a 1 GB/s
    # link (≈ 10 Gb Ethernet between CPU nodes). 24 timing runs of 20 steps, one after another (times_steps: no
    # run's step time is measured beside another): 2 min 3 s on a 2-core AMD EPYC (the dry-run said 1 min 47 s).
    "cpu": dict(
        batch_size_runs="runs/batch-size", widths=(64, 128, 256), timing_batches=(2, 4, 16, 64), n_layers=4,
        head_dim=32, seq_len=128, timing_steps=20, device_batch=4, link_gb_per_s=1.0, compile=False, device="auto",
    ),
    # The batch-size gpu preset's model (4 layers, heads of 64, 256-token sequences) at d = 128, 256, 512; per-device
    # batch 16 sequences (4,096 tokens): its 2,048–65,536-token batches on 1–16 GPUs; a 50 GB/s link.
    "gpu": dict(
        batch_size_runs="runs/batch-size-gpu", widths=(128, 256, 512), timing_batches=(8, 16, 64, 256), n_layers=4,
        head_dim=64, seq_len=256, timing_steps=30, device_batch=16, link_gb_per_s=50.0, compile=False, device="cuda",
    ),
}


def timing_name(optimizer: str, width: int, batch: int) -> str:
    return f"time-{optimizer}-d{width}-b{batch}"


def model_for(p: Mapping[str, Any], width: int):
    """The ``ModelConfig`` timed at ``width`` (byte vocabulary, as the batch-size study trains)."""
    return model_config_for("demo", BYTE_VOCAB, p["seq_len"], d_model=width, n_layers=p["n_layers"],
                            n_heads=width // p["head_dim"])


def _config(p: Mapping[str, Any], optimizer: str, width: int, batch: int) -> TrainConfig:
    steps = p["timing_steps"]
    return TrainConfig(
        corpus="english", tokenizer="byte", model="demo", d_model=width, n_layers=p["n_layers"],
        n_heads=width // p["head_dim"], seq_len=p["seq_len"], batch_size=batch,
        train_tokens=steps * batch * p["seq_len"], optimizer=optimizer, lr=1e-3, warmup_steps=1, log_every=1,
        telemetry_every=0, eval_every=steps, eval_batches=1, checkpoint_every=0, compile=p["compile"],
        device=p["device"], seed=0,
    )


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """One timing run per optimizer, width and batch (no stages)."""
    bad = [w for w in p["widths"] if w % p["head_dim"]]
    if bad:
        raise ValueError(f"widths {bad} are not multiples of head_dim={p['head_dim']}")
    if p["timing_steps"] <= 3:
        raise ValueError(f"timing_steps={p['timing_steps']} must exceed the 3 warm-up steps left out of the median")
    return [PlannedRun(timing_name(o, w, b), _config(p, o, w, b))
            for w in p["widths"] for b in p["timing_batches"] for o in OPTIMIZERS]


def load_batch_size_study(folder: Path) -> tuple[dict[str, Any], dict[str, Run]]:
    """The ``batch-size`` study's parameters (from its ``results.json``) and its runs (by name) in ``folder``."""
    results = folder / "results.json"
    if not results.is_file():
        raise FileNotFoundError(f"pareto reads the batch-size study's runs, but {folder} holds no finished batch-size "
                                f"study (no {results.name}): run `muonlab experiment batch-size --out {folder}` first, "
                                "or set batch_size_runs to the folder it wrote")
    recorded = json.loads(results.read_text())
    if recorded.get("study") != "batch-size":
        raise ValueError(f"{results} is the {recorded.get('study')!r} study's, not batch-size's")
    params, _ = parameters(batch_size.STUDY, recorded["preset"], recorded["params"])
    return params, {r.name: load_run(folder / r.name) for r in batch_size.plan(params, {})}


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
    bs, bs_runs = load_batch_size_study(Path(p["batch_size_runs"]))
    _check_model(p, bs)
    arms = {c: {o: [batch_size.arm_runs(bs, bs_runs, o, c, b) for b in bs["batch_sizes"]] for o in OPTIMIZERS}
            for c in bs["corpora"]}
    measured = measure(bs, arms)
    timings = Timings(
        widths=list(p["widths"]), batches=list(p["timing_batches"]), seq_len=p["seq_len"],
        times={(o, w, b): measured_step_times(finished.runs[timing_name(o, w, b)])
               for o in OPTIMIZERS for w in p["widths"] for b in p["timing_batches"]},
        models={w: model_for(p, w) for w in p["widths"]},
    )
    return pareto_analysis(measured.tables, bs, timings, p, finished.out)


STUDY = Study(
    name="pareto",
    title="Compute–time plane: devices against time to a target loss, and Muon's Newton–Schulz overhead "
          "(Essential AI §2.3)",
    claim="Essential AI (arXiv 2505.02222 §2.3, Figures 1–2): Muon expands AdamW's compute–time Pareto frontier: at "
          "every device count it reaches a target loss sooner, consistently across thresholds and data; its extra "
          "cost per model FLOP is ≈ 5·d/B (§2.1.1, infra blog).",
    presets=PRESETS,
    plan=plan,
    analyse=analyse,
    times_steps=True,
)
