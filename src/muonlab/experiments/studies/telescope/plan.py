"""The ``telescope`` study's runs: the levels, the brute-force check, the seed-noise checks and the final run
(the study's docstring has the algorithm)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ....analysis.runs import Run
from ....train.config import ConfigError, TrainConfig
from ...estimate import run_flops_per_step
from ...study import PlannedRun
from ...telescoping import Level, best_point, bracketed_grid, grid_indices, plan_level


def final_loss(run: Run) -> float:
    """The run's final validation loss (NaN if it logged none)."""
    loss = run.final("val_loss")
    return math.nan if loss is None else loss


HPARAMS = ("lr", "weight_decay")
"""The searched hyperparameters, in grid-index order (``i`` indexes lr, ``j`` weight decay)."""

PRESETS: dict[str, dict[str, Any]] = {
    # Byte tokens of the English corpus, 4 blocks, heads of 32, 491,520 tokens (240 steps of 16 × 128) a run: the
    # family and budget of docs/mup_lr_transfer.json, where muP's best lr stayed at 0.027–0.031 from d = 32 to 128
    # (base 64), hence the centre. Levels 6×6 → 3×3 → 2×2 at d = 32, 64, 128, the final run at d = 256; the
    # brute-force check is level 0's 6×6 grid at d = 128, grown by whole lines past any edge its best sits on
    # (λ down to 0.0022 at most: below that, 240 steps of decay change the weights by < 0.01 %). 92 runs before
    # it grows, 45M tokens, --workers 2: 26 min 44 s on a 2-core AMD EPYC (the dry-run said 26 min 21 s). The
    # grid's corner (lr 0.17, λ 0.018) trains without diverging at d = 32 and 128.
    "cpu": dict(
        widths=(32, 64, 128), final_width=256, grid_points=6, brute_points=6, lr_center=0.03, wd_center=0.1,
        lr_spacing=2.0, wd_spacing=2.0, brute_lr_caps=(1e-4, 1.0), brute_wd_caps=(0.002, 2.0),
        search_seed=0, check_seeds=(1, 2, 3), n_layers=4, head_dim=32,
        mup_base_width=64, corpus="english", tokenizer="byte", vocab_size=4096, seq_len=128, batch_size=16,
        train_tokens=491_520, compile=False, device="auto",
    ),
    # One GPU, the same family (muP base 64, heads of 32, so the same centre) 4× wider: d = 128, 256, 512
    # (4×4 → 2×2 → 1), the final run at d = 1024, a 4×4 brute-force grid at d = 512; 44 runs of 524,288 tokens
    # (128 steps of 32 × 128), one after another in one process (not measured on a GPU yet).
    "gpu": dict(
        widths=(128, 256, 512), final_width=1024, grid_points=4, brute_points=4, lr_center=0.03, wd_center=0.1,
        lr_spacing=2.0, wd_spacing=2.0, brute_lr_caps=(1e-4, 1.0), brute_wd_caps=(0.002, 2.0), search_seed=0,
        check_seeds=(1, 2, 3), n_layers=4, head_dim=32,
        mup_base_width=64, corpus="english", tokenizer="byte", vocab_size=4096, seq_len=128, batch_size=32,
        train_tokens=524_288, compile=False, device="cuda",
    ),
}


def _check(p: Mapping[str, Any]) -> None:
    widths = list(p["widths"])
    if not widths or any(b != 2 * a for a, b in zip(widths, widths[1:])):
        raise ConfigError(f"telescope: widths={widths} must double at each level (Algorithm 1), e.g. (32, 64, 128)")
    if p["final_width"] < widths[-1]:
        raise ConfigError(f"telescope: final_width={p['final_width']} must be ≥ the top calibration width {widths[-1]}")
    if len({*widths, p["final_width"]}) < 3:
        raise ConfigError("telescope: L(d) = A/d^α + E needs ≥ 3 distinct widths among widths and final_width")
    if p["grid_points"] < 2 or p["brute_points"] < 2:
        raise ConfigError(f"telescope: grid_points={p['grid_points']} and brute_points={p['brute_points']} must be ≥ 2")
    if any(w % p["head_dim"] for w in (*widths, p["final_width"])):
        raise ConfigError(f"telescope: every width must be a multiple of head_dim={p['head_dim']}")
    box = plan_level(0, widths[-1], _center(p), _spacing(p), p["grid_points"]).points
    for name, (low, high) in _caps(p).items():
        values = [q[name] for q in box]
        if not (low <= min(values) * (1 + 1e-9) and max(values) <= high * (1 + 1e-9)):
            raise ConfigError(f"telescope: brute_{_CAP_KEY[name]}_caps=({low:g}, {high:g}) must contain level 0's "
                              f"{name} values {min(values):.3g}–{max(values):.3g}")


def _center(p: Mapping[str, Any]) -> dict[str, float]:
    return {"lr": p["lr_center"], "weight_decay": p["wd_center"]}


def _spacing(p: Mapping[str, Any]) -> dict[str, float]:
    return {"lr": p["lr_spacing"], "weight_decay": p["wd_spacing"]}


def level_names(level: Level, seed: int) -> list[str]:
    """``L<level>-d<width>-i<lr index>-j<wd index>-s<seed>``, in the order of ``level.points``."""
    return [f"L{level.index}-d{level.width}-i{i}-j{j}-s{seed}" for i, j in grid_indices(level)]


def _index(k: int) -> str:
    """A grid index in a run name: ``3``, or ``m1`` for −1 (a line the brute-force grid grew below its box)."""
    return str(k) if k >= 0 else f"m{-k}"


def brute_names(grid: Level, seed: int) -> list[str]:
    """``brute-d<width>-i<lr index>-j<wd index>-s<seed>``, in the order of ``grid.points``."""
    return [f"brute-d{grid.width}-i{_index(i)}-j{_index(j)}-s{seed}" for i, j in grid_indices(grid)]


def final_name(p: Mapping[str, Any]) -> str:
    return f"final-d{p['final_width']}-s{p['search_seed']}"


def check_name(arm: str, p: Mapping[str, Any], seed: int) -> str:
    """A seed-noise run of ``arm`` ("telescoped" or "brute") at the top calibration width."""
    return f"check-{arm}-d{p['widths'][-1]}-s{seed}"


def levels(p: Mapping[str, Any], done: Mapping[str, Run]) -> tuple[list[Level], dict[str, float] | None]:
    """Every calibration level's grid and the telescoped choice (None while the last level is unfinished):
    each level centred on the previous level's best point once all its runs are ``done``, else on the
    previous level's own centre (provisional)."""
    center, known, planned = _center(p), True, []
    for index, width in enumerate(p["widths"]):
        level = plan_level(index, width, center, _spacing(p), p["grid_points"])
        planned.append(level)
        names = level_names(level, p["search_seed"])
        known = known and all(n in done for n in names)
        if known:
            center = best_point(level.points, [final_loss(done[n]) for n in names])
    return planned, center if known else None


_CAP_KEY = {"lr": "lr", "weight_decay": "wd"}


def _caps(p: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """How far the brute-force grid may grow per hyperparameter: ``(low, high)`` from ``brute_<lr|wd>_caps``."""
    return {name: tuple(p[f"brute_{key}_caps"]) for name, key in _CAP_KEY.items()}


def brute_grid(p: Mapping[str, Any], done: Mapping[str, Run]) -> tuple[Level, str]:
    """The brute-force grid at the top calibration width over level 0's box, grown past any edge its best point
    sits on (``bracketed_grid``) from the runs ``done``, and its status ("pending", "interior", "at the cap")."""
    losses: dict[tuple[int, ...], float] = {}
    read: set[tuple[int, ...]] = set()
    while True:
        grid, status = bracketed_grid(p["widths"][-1], _center(p), _spacing(p), p["grid_points"], p["brute_points"],
                                      _caps(p), losses)
        if status != "pending" or read == set(grid.indices):
            return grid, status
        for ix, name in zip(grid.indices, brute_names(grid, p["search_seed"])):  # the lines it grew: their losses
            if name in done:
                losses[ix] = final_loss(done[name])
        read = set(grid.indices)


def brute_best(grid: Level, status: str, seed: int, done: Mapping[str, Run]) -> dict[str, float] | None:
    """The best point of the brute-force ``grid`` (``brute_grid``'s answer) at ``seed``, None while it is
    still growing or training."""
    if status == "pending":
        return None
    return best_point(grid.points, [final_loss(done[n]) for n in brute_names(grid, seed)])


def config(p: Mapping[str, Any], width: int, point: Mapping[str, float], seed: int) -> TrainConfig:
    """One run: muP (base ``mup_base_width``) with Muon at ``width``, the (lr, λ) of ``point``."""
    steps = p["train_tokens"] // (p["seq_len"] * p["batch_size"])
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model="demo", d_model=width,
        n_layers=p["n_layers"], n_heads=width // p["head_dim"], parametrization="mup",
        mup_base_width=p["mup_base_width"], seq_len=p["seq_len"], batch_size=p["batch_size"],
        train_tokens=p["train_tokens"], optimizer="muon", lr=point["lr"], weight_decay=point["weight_decay"],
        schedule="cosine", warmup_steps=max(1, steps // 10), eval_every=steps, eval_batches=16,
        log_every=max(1, steps // 8), telemetry_every=0, checkpoint_every=0, compile=p["compile"],
        device=p["device"], seed=seed,
    )


def run_flops(p: Mapping[str, Any], width: int) -> float:
    """Training FLOPs of one run at ``width`` (forward + backward, attention included; Newton–Schulz not counted)."""
    cfg = config(p, width, _center(p), p["search_seed"])
    return run_flops_per_step(cfg) * cfg.total_steps()


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """Stage 0: level 0 and the brute-force grid; stage k: level k (needs level k − 1); then the final run
    and the telescoped choice's seed-noise runs (need the last level); the brute-force optimum's seed-noise
    runs need the brute-force grid."""
    _check(p)
    seed = p["search_seed"]
    grids, choice = levels(p, done)
    runs: list[PlannedRun] = []
    needs: tuple[str, ...] = ()
    for level in grids:
        names = level_names(level, seed)
        runs += [PlannedRun(n, config(p, level.width, point, seed), needs) for n, point in zip(names, level.points)]
        needs = tuple(names)
    grid, status = brute_grid(p, done)
    brute = brute_names(grid, seed)
    box = brute_names(brute_grid(p, {})[0], seed)  # the grid as first planned, then the lines it grew (need it)
    point_of = dict(zip(brute, grid.points))
    runs += [PlannedRun(n, config(p, grid.width, point_of[n], seed)) for n in box]
    runs += [PlannedRun(n, config(p, grid.width, point_of[n], seed), tuple(box)) for n in brute if n not in box]
    provisional = _center(p)
    runs.append(PlannedRun(final_name(p), config(p, p["final_width"], choice or provisional, seed), needs))
    top = p["widths"][-1]
    runs += [PlannedRun(check_name("telescoped", p, s), config(p, top, choice or provisional, s), needs)
             for s in p["check_seeds"]]
    best = brute_best(grid, status, seed, done) or provisional
    runs += [PlannedRun(check_name("brute", p, s), config(p, top, best, s), tuple(brute)) for s in p["check_seeds"]]
    return runs
