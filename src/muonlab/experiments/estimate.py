"""A study's cost before it runs: tokens and FLOPs from the plan, minutes from measured probes.

Per optimizer, the plan's runs with the fewest, the median and the most FLOPs per step are probed
(``calibration``); a run's step, first-step, telemetry, evaluation and checkpoint times are
interpolated between the two probes around its FLOPs per step as a power law, a straight line in
log–log (``t = t0·(F/F0)^k``; beyond the probes, the nearest segment's law). On a CPU a step's time
grows slower than its FLOPs (a fixed per-step overhead dominates tiny models), so a straight line in
FLOPs through the smallest and the largest run puts every run between them too low: 25–30 % for the
``telescope`` study's middle widths, which hold most of its runs. A run then costs

    start-up (separate processes only) + set-up + first step + (steps left − 1) · step
    + telemetry steps · (telemetry step − step) + evaluations · evaluation + checkpoints · checkpoint,

counting only what is left after its latest checkpoint, and the study's wall time is the runs
scheduled in plan order on ``workers`` slots, each run taking the first free one (as the runner does),
stage after stage for a staged study (a run's stage is one more than the latest stage it needs).
A run that starts from another planned run (``init_from`` its folder, e.g. a fine-tuning) trains
that run's model: it is costed and probed as its source's model and data with its own budget.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..models import model_config_for
from ..train.config import TrainConfig
from .calibration import Measurement, probe_key
from .runner import steps_done, threads_per_run
from .study import PlannedRun

__all__ = ["Estimate", "RunCost", "cost_configs", "estimate", "interpolate_measurement", "makespan", "probe_configs",
           "run_flops_per_step", "run_model", "speed_config"]

BYTE_VOCAB = 257  # the byte tokenizer's vocabulary: 256 bytes + end-of-text
MODEL_AND_DATA_FIELDS = ("task", "init_from", "corpus", "tokenizer", "vocab_size", "model", "d_model", "n_layers",
                         "n_heads", "mlp", "tie_embeddings", "parametrization", "mup_base_width", "mup_base_head_dim")
"""The ``TrainConfig`` fields a run started from another planned run takes from that run, for its cost."""


def cost_configs(planned: Sequence[PlannedRun]) -> list[TrainConfig]:
    """Each run's config as it costs: a run whose ``init_from`` is another planned run's folder trains
    that run's model on that run's data (same speed per token), with its own budget and schedule."""
    by_folder = {p.config.run_dir: p.config for p in planned}
    configs = []
    for run in planned:
        config, seen = run.config, {run.config.run_dir}
        while config.init_from in by_folder and config.init_from not in seen:
            seen.add(config.init_from)
            source = by_folder[config.init_from]
            config = config.replace(**{name: getattr(source, name) for name in MODEL_AND_DATA_FIELDS})
        configs.append(config)
    return configs


def stages(planned: Sequence[PlannedRun]) -> list[int]:
    """Each run's stage: 0 without needs, else one more than the latest stage among its needs."""
    stage: dict[str, int] = {}
    for run in planned:
        stage[run.name] = 1 + max((stage[n] for n in run.needs), default=-1)
    return [stage[run.name] for run in planned]


def run_model(config: TrainConfig):
    """The ``ModelConfig`` a (cost) config trains."""
    vocab = BYTE_VOCAB if config.tokenizer == "byte" else config.vocab_size
    return model_config_for(config.model, vocab, config.seq_len, d_model=config.d_model, n_layers=config.n_layers,
                            n_heads=config.n_heads, mlp=config.mlp, tie_embeddings=config.tie_embeddings)


def run_flops_per_step(config: TrainConfig) -> float:
    """Training FLOPs of one optimizer step (``ModelConfig.flops_per_token`` × tokens per step)."""
    return float(run_model(config).flops_per_token(config.seq_len) * config.tokens_per_step())


def speed_config(config: TrainConfig, workers: int) -> TrainConfig:
    """The config as the runner trains it: with several workers, on ``threads_per_run`` threads each."""
    return config if workers <= 1 else config.replace(threads=threads_per_run(config, workers))


def probe_configs(configs: Sequence[TrainConfig], workers: int) -> list[TrainConfig]:
    """Per optimizer, the runs with the fewest, the median and the most FLOPs per step (fewer probes
    where those runs train alike)."""
    probes: dict[str, TrainConfig] = {}
    for optimizer in dict.fromkeys(c.optimizer for c in configs):
        ranked = sorted((c for c in configs if c.optimizer == optimizer), key=run_flops_per_step)
        for config in (ranked[0], ranked[len(ranked) // 2], ranked[-1]):
            probe = speed_config(config, workers)
            probes.setdefault(probe_key(probe, workers), probe)
    return list(probes.values())


def _power_law(f0: float, y0: float, f1: float, y1: float, flops: float) -> float:
    """``y0·(F/F0)^k`` through (F0, y0) and (F1, y1): a straight line in log–log; linear in F where a
    value is not positive (a time measured as 0 has no logarithm)."""
    if y0 <= 0.0 or y1 <= 0.0:
        return max(0.0, y0 + (flops - f0) / (f1 - f0) * (y1 - y0))
    k = math.log(y1 / y0) / math.log(f1 / f0)
    return y0 * (flops / f0) ** k


def interpolate_measurement(points: Sequence[tuple[float, Measurement]], flops: float) -> Measurement:
    """Each field a power law in FLOPs per step between the two probes around ``flops`` (the nearest
    two outside the probes' range; constant with one probe)."""
    by_flops = sorted({f: m for f, m in points}.items())
    if len(by_flops) == 1:
        return by_flops[0][1]
    upper = min(max(bisect.bisect_left([f for f, _ in by_flops], flops), 1), len(by_flops) - 1)
    (f0, m0), (f1, m1) = by_flops[upper - 1], by_flops[upper]
    return Measurement(**{field.name: _power_law(f0, getattr(m0, field.name), f1, getattr(m1, field.name), flops)
                          for field in dataclasses.fields(Measurement)})


def _multiples(start: int, total: int, every: int) -> int:
    """How many steps in (start, total] are multiples of ``every`` (0 when ``every`` is 0)."""
    return total // every - start // every if every else 0


def _not_a_multiple(total: int, every: int) -> int:
    """1 when the last step takes its own event (it is not a multiple of ``every``, or ``every`` is 0)."""
    return int(not every or total % every != 0)


def _events(config: TrainConfig, start: int, total: int) -> tuple[int, int, int]:
    """Evaluations, checkpoints and telemetry steps in (start, total], as ``muonlab.train.loop`` takes them:
    evaluations every ``eval_every`` and at the end, checkpoints every ``checkpoint_every`` (0: never)
    and at the end, telemetry every ``telemetry_every`` (0: never) and at step 1."""
    evaluations = _multiples(start, total, config.eval_every) + _not_a_multiple(total, config.eval_every)
    checkpoints = _multiples(start, total, config.checkpoint_every) + _not_a_multiple(total, config.checkpoint_every)
    every = config.telemetry_every
    telemetry = _multiples(start, total, every) + int(bool(every) and start == 0 and every != 1)
    return evaluations, checkpoints, telemetry


def run_seconds(config: TrainConfig, m: Measurement, start_step: int, separate_process: bool) -> float:
    """The wall time of training ``config`` from ``start_step`` to its end (see the module docstring)."""
    total = config.total_steps()
    if start_step >= total:
        return 0.0
    steps = total - start_step
    evaluations, checkpoints, telemetry = _events(config, start_step, total)
    return ((m.startup_s if separate_process else 0.0) + m.build_s + m.first_step_s + (steps - 1) * m.step_s
            + telemetry * max(0.0, m.telemetry_step_s - m.step_s) + evaluations * m.eval_s
            + checkpoints * m.checkpoint_s)


def makespan(durations: Sequence[float], workers: int) -> float:
    """Wall time of running ``durations`` in order on ``workers`` slots, each next one on the first free slot."""
    slots = [0.0] * max(1, workers)
    for duration in durations:
        heapq.heapreplace(slots, slots[0] + duration)
    return max(slots)


@dataclass(frozen=True)
class RunCost:
    """One planned run: its optimizer, tokens and FLOPs (in all, and left to train), estimated seconds."""

    name: str
    optimizer: str
    tokens: int
    flops: float
    tokens_left: int
    seconds: float | None


@dataclass(frozen=True)
class Estimate:
    """The plan's runs and the estimated wall time (None without measurements)."""

    runs: list[RunCost]
    workers: int
    wall_s: float | None

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.runs)

    @property
    def flops(self) -> float:
        return sum(r.flops for r in self.runs)


def estimate(planned: Sequence[PlannedRun], workers: int, measurements: Mapping[str, Measurement] | None = None,
             from_scratch: bool = False) -> Estimate:
    """The cost of ``planned``; seconds from ``measurements`` (by probe key) when they cover every optimizer.

    Only what is left after each run's latest checkpoint counts, unless ``from_scratch`` (the whole plan).
    """
    costs, durations = [], []
    configs = cost_configs(planned)
    measurements = measurements or {}
    points_of: dict[str, list[tuple[float, Measurement]]] = {}  # per optimizer: (FLOPs per step, measured times)
    for probe in probe_configs(configs, workers):
        if (key := probe_key(probe, workers)) in measurements:
            points_of.setdefault(probe.optimizer, []).append((run_flops_per_step(probe), measurements[key]))
    for run, config in zip(planned, configs):
        per_step = run_flops_per_step(config)
        done = 0 if from_scratch else steps_done(config)
        total = config.total_steps()
        points = points_of.get(config.optimizer)
        seconds = run_seconds(config, interpolate_measurement(points, per_step), done, workers > 1) if points else None
        costs.append(RunCost(run.name, config.optimizer, total * config.tokens_per_step(), per_step * total,
                             max(0, total - done) * config.tokens_per_step(), seconds))
        durations.append(seconds)
    if not all(d is not None for d in durations):
        return Estimate(costs, workers, None)
    stage_of = stages(planned)
    wall = sum(makespan([d for d, s in zip(durations, stage_of) if s == stage and d], workers)
               for stage in sorted(set(stage_of)))
    return Estimate(costs, workers, wall)
