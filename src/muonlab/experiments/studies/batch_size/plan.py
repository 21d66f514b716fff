"""The ``batch-size`` study's runs: the lr sweeps at both batch ends, then every batch at the interpolated lr
(the study's docstring has the protocol)."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ....analysis.lr_sweep import Bracket, SweepSpec, bracket, grid_value
from ....analysis.runs import Run
from ....train.config import TrainConfig
from ...study import PlannedRun

OPTIMIZERS = ("adamw", "muon")
WARMUP_FRACTION = 0.05
"""Linear warmup over this fraction of a run's steps, then cosine decay to 0.1× (Essential AI §2.2)."""

PRESETS: dict[str, dict[str, Any]] = {
    # 4 layers, d=128 (0.92M parameters), byte tokens, 128-token sequences; batches of 256–8,192 tokens (32×);
    # 1.18M tokens a run (0.29 epochs of the English corpus's 4.02M training bytes). Each optimizer its own grid at
    # each end, bracketed (the committed runs had AdamW best at 2e-3 at both ends and Muon at the top of its grid):
    # per corpus and optimizer 2 × (3 + 2 × 3) bracket runs and 4 + 2 interpolated ones: ≈ 48 runs per corpus if
    # no sweep extends. One corpus (English) so that the study fits one sitting on 2 cores: the dry-run on a
    # 2-core Intel Xeon said 3 h 32 min for both corpora; `--set corpora=english,python` runs both.
    "cpu": dict(
        seeds=(0, 1, 2), corpora=("english",), batch_sizes=(2, 4, 8, 16, 32, 64), seq_len=128,
        d_model=128, n_layers=4, head_dim=32, train_tokens=1_179_648, adamw_lrs_smallest=(1e-3, 2e-3, 4e-3),
        adamw_lrs_largest=(1e-3, 2e-3, 4e-3), muon_lrs_smallest=(2e-3, 4e-3, 8e-3),
        muon_lrs_largest=(8e-3, 1.6e-2, 3.2e-2), lr_step=2.0, lr_caps=(1e-4, 0.128), weight_decay=0.1,
        ema_tokens=4096, targets=5, token_optimal_margin=0.03, eval_tokens=65_536, compile=False, device="auto",
    ),
    # One GPU: d=256, 256-token sequences, batches of 2,048–65,536 tokens (32×), 2.6M tokens a run (0.65 epochs
    # of the English corpus, no data repeated, as on the CPU; byte tokens keep the embedding at 257 × 256). Expected
    # cost: not yet measured.
    "gpu": dict(
        seeds=(0, 1, 2), corpora=("english", "python"), batch_sizes=(8, 16, 32, 64, 128, 256), seq_len=256,
        d_model=256, n_layers=4, head_dim=64, train_tokens=2_621_440, adamw_lrs_smallest=(1e-3, 2e-3, 4e-3),
        adamw_lrs_largest=(1e-3, 2e-3, 4e-3), muon_lrs_smallest=(2e-3, 4e-3, 8e-3),
        muon_lrs_largest=(8e-3, 1.6e-2, 3.2e-2), lr_step=2.0, lr_caps=(1e-4, 0.128), weight_decay=0.1,
        ema_tokens=16_384, targets=5, token_optimal_margin=0.03, eval_tokens=262_144, compile=False, device="cuda",
    ),
}


def sweep_name(optimizer: str, corpus: str, batch: int, lr: float, seed: int) -> str:
    """Every run's name: ``<optimizer>-<corpus>-b<batch>-lr<lr>-s<seed>``."""
    return f"{optimizer}-{corpus}-b{batch}-lr{grid_value(lr):g}-s{seed}"


def seeds_at(p: Mapping[str, Any], batch: int) -> tuple[int, ...]:
    """Every seed at the smallest, the middle and the largest batch; the first seed elsewhere."""
    batches = p["batch_sizes"]
    return tuple(p["seeds"]) if batch in (batches[0], batches[len(batches) // 2], batches[-1]) else (p["seeds"][0],)


def interpolated_lr(batch: float, smallest: float, largest: float, lr_smallest: float, lr_largest: float) -> float:
    """The learning rate at ``batch``, linear in log lr against log batch between the two tuned ends:
    ``log lr = log lr_s + (log B − log B_s)/(log B_l − log B_s) · (log lr_l − log lr_s)``, to 4 significant
    digits (so the ends give their tuned values exactly)."""
    t = (math.log(batch) - math.log(smallest)) / (math.log(largest) - math.log(smallest))
    return float(f"{math.exp(math.log(lr_smallest) + t * (math.log(lr_largest) - math.log(lr_smallest))):.4g}")


def _ends(p: Mapping[str, Any]) -> tuple[tuple[int, str], tuple[int, str]]:
    """``((smallest batch, "smallest"), (largest batch, "largest"))``: each end's batch and grid suffix."""
    return (p["batch_sizes"][0], "smallest"), (p["batch_sizes"][-1], "largest")


Losses = Callable[[str, str, int], Mapping[tuple[float, int], float]]
"""``losses(optimizer, corpus, batch) -> {(lr, seed): final validation loss}`` of the finished runs."""


def brackets(p: Mapping[str, Any], losses: Losses) -> dict[tuple[str, str, int], Bracket]:
    """Each (optimizer, corpus, end batch)'s bracketed sweep, from its own grid."""
    low, high = p["lr_caps"]
    return {(o, c, batch): bracket(SweepSpec(tuple(p[f"{o}_lrs_{end}"]), tuple(p["seeds"]), p["lr_step"], low, high),
                                   losses(o, c, batch))
            for c in p["corpora"] for o in OPTIMIZERS for batch, end in _ends(p)}


def _check(p: Mapping[str, Any]) -> None:
    batches = list(p["batch_sizes"])
    if len(batches) < 3 or batches != sorted(set(batches)):
        raise ValueError(f"batch_sizes={tuple(batches)} must hold at least three distinct sizes in ascending order "
                         "(the App. F fit has three parameters)")
    uneven = [b for b in batches if p["train_tokens"] % (b * p["seq_len"])]
    if uneven:
        raise ValueError(f"train_tokens={p['train_tokens']} is not a whole number of steps at batch sizes {uneven} "
                         f"(× seq_len={p['seq_len']}); every run must train the same tokens")
    if p["d_model"] % p["head_dim"]:
        raise ValueError(f"d_model={p['d_model']} is not a multiple of head_dim={p['head_dim']}")


def _config(p: Mapping[str, Any], corpus: str, optimizer: str, batch: int, lr: float, seed: int) -> TrainConfig:
    per_step = batch * p["seq_len"]
    steps = p["train_tokens"] // per_step
    return TrainConfig(
        corpus=corpus, tokenizer="byte", model="demo", d_model=p["d_model"], n_layers=p["n_layers"],
        n_heads=p["d_model"] // p["head_dim"], seq_len=p["seq_len"], batch_size=batch,
        train_tokens=p["train_tokens"], optimizer=optimizer, lr=lr, weight_decay=p["weight_decay"],
        schedule="cosine", warmup_steps=max(1, round(WARMUP_FRACTION * steps)), eval_every=steps,
        eval_batches=max(1, p["eval_tokens"] // per_step), log_every=1, telemetry_every=0,
        checkpoint_every=max(1, steps // 4), compile=p["compile"], device=p["device"], seed=seed,
    )


def _planned(p: Mapping[str, Any], losses: Losses) -> list[PlannedRun]:
    """Each end's bracketed sweep (a first-round run needs nothing; a later one its sweep's first round); once
    both ends of an (optimizer, corpus) are chosen, every other batch at the lr interpolated between them."""
    _check(p)
    state = brackets(p, losses)
    runs = []
    for c in p["corpora"]:
        for o in OPTIMIZERS:
            for batch, end in _ends(p):
                first_round = tuple(sweep_name(o, c, batch, lr, p["seeds"][0]) for lr in p[f"{o}_lrs_{end}"])
                for lr, s in state[(o, c, batch)].cells:
                    name = sweep_name(o, c, batch, lr, s)
                    runs.append(PlannedRun(name, _config(p, c, o, batch, lr, s), () if name in first_round
                                           else first_round))
            ends = [state[(o, c, batch)] for batch, _ in _ends(p)]
            if not all(e.complete for e in ends):
                continue
            needs = tuple(sweep_name(o, c, batch, lr, s) for (batch, _), e in zip(_ends(p), ends) for lr, s in e.cells)
            (smallest, _), (largest, _) = _ends(p)
            for batch in p["batch_sizes"][1:-1]:
                lr = interpolated_lr(batch, smallest, largest, ends[0].best, ends[1].best)
                runs += [PlannedRun(sweep_name(o, c, batch, lr, s), _config(p, c, o, batch, lr, s), needs)
                         for s in seeds_at(p, batch)]
    return runs


def losses_from(done: Mapping[str, Run]) -> Losses:
    def losses(optimizer: str, corpus: str, batch: int) -> dict[tuple[float, int], float]:
        return {(grid_value(r.config["lr"]), int(r.config["seed"])): r.final("val_loss") for r in done.values()
                if (r.config.get("optimizer"), r.config.get("corpus"), r.config.get("batch_size"))
                == (optimizer, corpus, batch)}
    return losses


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """The runs decided by the results in ``done`` (the study's docstring)."""
    return _planned(p, losses_from(done))


def projected_plan(p: Mapping[str, Any]) -> list[PlannedRun]:
    """The plan as it ends when every sweep's best first-seed lr is its grid's middle value and no sweep extends
    (what ``--dry-run`` costs; an extension adds a run per seed per step)."""
    def bowl(optimizer: str, corpus: str, batch: int) -> dict[tuple[float, int], float]:
        end = "smallest" if batch == p["batch_sizes"][0] else "largest"
        grid = sorted(grid_value(lr) for lr in p[f"{optimizer}_lrs_{end}"])
        return {(lr, s): abs(lr / grid[len(grid) // 2] - 1.0) for lr in grid for s in p["seeds"]}
    return _planned(p, bowl)


def arm_runs(p: Mapping[str, Any], runs: Mapping[str, Run], optimizer: str, corpus: str, batch: int) -> list[Run]:
    """The runs of ``optimizer`` on ``corpus`` at ``batch`` and its chosen (ends) or interpolated learning rate,
    one per seed of ``seeds_at``."""
    state = brackets(p, losses_from(runs))
    ends = [state[(optimizer, corpus, b)].best for b, _ in _ends(p)]
    (smallest, _), (largest, _) = _ends(p)
    lr = interpolated_lr(batch, smallest, largest, *ends)
    return [runs[sweep_name(optimizer, corpus, batch, lr, s)] for s in seeds_at(p, batch)]


def sweeps(p: Mapping[str, Any], runs: Mapping[str, Run]) -> dict[str, dict[float, float | None]]:
    """Mean final validation loss over the seeds run, by learning rate, of every end's sweep, labelled
    "<Optimizer> <corpus> b<batch>"."""
    labels = {"adamw": "AdamW", "muon": "Muon"}
    out = {}
    for (o, c, batch), state in brackets(p, losses_from(runs)).items():
        cells: dict[float, list[float]] = {}
        for lr, s in state.cells:
            if (name := sweep_name(o, c, batch, lr, s)) in runs:
                cells.setdefault(lr, []).append(runs[name].final("val_loss"))
        out[f"{labels[o]} {c} b{batch}"] = {lr: sum(v) / len(v) for lr, v in sorted(cells.items())}
    return out
