"""Measured costs of training on this machine, for ``--dry-run`` estimates: a few steps, timed, cached.

A *probe* builds a run's data, model and optimizer in a fresh process, as a study's training
process does, and times: start-up (interpreter and imports), set-up (data and model), the first
step (with ``compile``, mostly compilation), the later steps, one step with optimizer telemetry,
one evaluation and one checkpoint. ``calibrate`` runs the missing probes ``workers`` at a time on
cores/workers threads each, as the study will run, so the measured step time includes the cores'
mutual slowdown. Results are cached in ``$MUONLAB_CACHE/calibration.json`` under the machine (CPU
model, core count, torch version, GPU) and the probe's speed-relevant config, so a later
``--dry-run`` or ``--list`` on this machine measures nothing again.

A probe on a CPU that other work is using measures a slower machine, and a cached slow probe would
inflate every later estimate (on the 2-core development machine, probes taken beside a training study
read 1.7–2.2× the quiet step time). So each probe also records the CPU time its process got per second
of its timed steps (``cpu_share``: ≥ 1 on an idle machine, since the main thread computes throughout); a
CPU probe below ``BUSY_CPU_SHARE`` is used for the estimate at hand, said to be from a busy machine, and
not cached.

``python -m muonlab.experiments.calibration CONFIG_JSON LAUNCHED_AT`` is one probe; it prints its
``Measurement`` as one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..train.config import TrainConfig
from .provenance import machine_key
from .runner import child_command

__all__ = ["BUSY_CPU_SHARE", "CACHE_FILE", "Measurement", "calibrate", "cached_measurements", "measure", "probe_key"]

CACHE_FILE = "calibration.json"
BUSY_CPU_SHARE = 0.8
"""A CPU probe whose process got less CPU time than this per second of its timed steps was sharing the cores."""
# TrainConfig fields that do not change the time of a step, an evaluation or a checkpoint.
_NOT_SPEED = frozenset({
    "run_dir", "resume", "seed", "lr", "weight_decay", "train_tokens", "warmup_steps", "final_lr_ratio",
    "decay_fraction", "schedule", "eval_every", "log_every", "telemetry_every", "spectra_every",
    "checkpoint_every", "keep_checkpoints", "progress", "tensorboard", "momentum", "beta1", "beta2",
    "adam_eps", "grad_clip", "val_fraction", "schedule_tokens", "update_rms",
})


@dataclass(frozen=True)
class Measurement:
    """Seconds: process start-up, set-up (data, model, optimizer), first step, later step (mean), a
    telemetry step, one evaluation, one checkpoint; and the CPU seconds the process got per second of
    its later steps (``cpu_share``, see the module docstring)."""

    startup_s: float
    build_s: float
    first_step_s: float
    step_s: float
    telemetry_step_s: float
    eval_s: float
    checkpoint_s: float
    cpu_share: float = 1.0

    def busy(self, device: str) -> bool:
        """Whether this probe ran on a CPU that other work was using (GPU probes are never judged so)."""
        return device != "cuda" and self.cpu_share < BUSY_CPU_SHARE


def probe_key(config: TrainConfig, workers: int) -> str:
    """The cache key of a probe: the config's speed-relevant fields and how many run side by side."""
    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_SPEED}
    return json.dumps({**fields, "workers": workers}, sort_keys=True)


def _timed(fn: Callable[[], object], device) -> float:
    import torch

    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(config: TrainConfig, launched_at: float, min_time_s: float = 3.0, max_steps: int = 50) -> Measurement:
    """Time ``config``'s set-up and steps in this process (see the module docstring).

    Steps are timed after the first until ``min_time_s`` seconds or ``max_steps`` steps (at least 3).
    ``launched_at``: the ``time.time()`` at which the process was launched.
    """
    import torch

    from ..parallel import init_runtime
    from ..rundir.checkpoint import save_checkpoint
    from ..train.loop import build_training, evaluate, seed_everything

    startup_s = time.time() - launched_at
    runtime = init_runtime("none", config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = runtime.device
    started = time.perf_counter()
    training = build_training(config, runtime)
    build_s = time.perf_counter() - started
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if config.dtype == "bf16" else nullcontext

    def step(telemetry: bool = False) -> None:
        for _ in range(config.grad_accum):
            x, y = training.loader.next_batch()
            x, y = x.to(device), y.to(device)
            with autocast():
                loss = training.forward(x, y)
            (loss / config.grad_accum).backward()
        if telemetry:
            training.optimizer.measure_next_step()
        training.optimizer.step()
        training.optimizer.zero_grad(set_to_none=True)

    first_step_s = _timed(step, device)
    steps, elapsed, cpu_started = 0, 0.0, time.process_time()
    while steps < 3 or (elapsed < min_time_s and steps < max_steps):
        elapsed += _timed(step, device)
        steps += 1
    cpu_share = (time.process_time() - cpu_started) / elapsed
    telemetry_step_s = _timed(lambda: step(telemetry=True), device)
    eval_s = _timed(lambda: evaluate(training.model, training.data, config, device), device)
    with tempfile.TemporaryDirectory() as folder:
        state = {"tokens": 0, "wall_s": 0.0, "loader": training.loader.state_dict()}
        checkpoint_s = _timed(lambda: save_checkpoint(folder, 1, training.model, training.optimizer, state), device)
    return Measurement(startup_s, build_s, first_step_s, elapsed / steps, telemetry_step_s, eval_s, checkpoint_s,
                       cpu_share)


def _cache_path(cache_dir: Path | None) -> Path:
    from ..data.dataset import default_cache_dir

    return (cache_dir or default_cache_dir()) / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return cache if isinstance(cache, dict) else {}


def cached_measurements(keys: list[str], device: str = "cpu", cache_dir: Path | None = None) -> dict[str, Measurement]:
    """The cached measurements of this machine among ``keys`` (probe keys); missing ones are left out."""
    entries = _read_cache(_cache_path(cache_dir)).get(machine_key(device), {})
    fields = {f.name for f in dataclasses.fields(Measurement)}
    return {k: Measurement(**entries[k]) for k in keys
            if isinstance(entries.get(k), dict) and set(entries[k]) == fields}


def _store(path: Path, device: str, measured: dict[str, Measurement]) -> None:
    cache = _read_cache(path)
    cache.setdefault(machine_key(device), {}).update({k: dataclasses.asdict(m) for k, m in measured.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _probe_batch(configs: list[TrainConfig]) -> list[Measurement]:
    """Run one probe process per config, all at once; their measurements in order.

    Their output goes to files, not pipes, so a probe that writes a lot never waits on this process.
    """
    with tempfile.TemporaryDirectory() as folder:
        procs = []
        for i, config in enumerate(configs):
            argv = child_command("muonlab.experiments.calibration", json.dumps(config.to_dict()), repr(time.time()))
            with open(Path(folder) / f"{i}.out", "w") as out, open(Path(folder) / f"{i}.err", "w") as err:
                procs.append(subprocess.Popen(argv, stdout=out, stderr=err))
        results = []
        for i, (config, proc) in enumerate(zip(configs, procs)):
            proc.wait()
            if proc.returncode != 0:
                tail = ((Path(folder) / f"{i}.err").read_text().strip().splitlines() or ["(no output)"])[-1]
                raise RuntimeError(f"calibration probe of {config.run_dir} failed (exit code {proc.returncode}): "
                                   f"{tail}")
            lines = (Path(folder) / f"{i}.out").read_text().strip().splitlines()
            results.append(Measurement(**json.loads(lines[-1])))
        return results


def calibrate(configs: list[TrainConfig], workers: int, cache_dir: Path | None = None,
              say: Callable[[str], None] = print) -> dict[str, Measurement]:
    """Measurements for ``configs`` (by ``probe_key``), probing those not cached for this machine.

    Probes run ``workers`` at a time; a last batch with fewer probes is filled with repeats so each
    probe shares the machine as a study's runs do (the repeats' measurements are discarded). A probe
    measured on a busy CPU (``Measurement.busy``) is returned but not cached, and said so.
    """
    keyed = {probe_key(c, workers): c for c in configs}
    device = configs[0].device if configs else "cpu"
    found = cached_measurements(list(keyed), device, cache_dir)
    missing = [(k, c) for k, c in keyed.items() if k not in found]
    if missing:
        say(f"calibrating: timing a few steps of {len(missing)} probe run(s), {workers} at a time "
            f"(cached in {_cache_path(cache_dir)})")
    for i in range(0, len(missing), workers):
        batch = missing[i:i + workers]
        padded = [batch[j % len(batch)][1] for j in range(max(workers, len(batch)))]
        measured = dict(zip((k for k, _ in batch), _probe_batch(padded)))
        busy = {k: m for k, m in measured.items() if m.busy(device)}
        if busy:
            share = min(m.cpu_share for m in busy.values())
            say(f"the CPU is busy: a probe got {share:.0%} of a core's time while timing its steps (an idle machine "
                f"gives ≥ {BUSY_CPU_SHARE:.0%}), so this estimate is probably high; {len(busy)} probe(s) not "
                "cached: a dry run on an idle machine measures them again")
        _store(_cache_path(cache_dir), device, {k: m for k, m in measured.items() if k not in busy})
        found.update(measured)
    return found


def _main() -> None:
    from ..allocator import ensure_fast_allocator

    ensure_fast_allocator(["-m", "muonlab.experiments.calibration", *sys.argv[1:]])  # as `muonlab train` runs
    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    result = measure(config, launched_at=float(sys.argv[2]))
    print(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    _main()
