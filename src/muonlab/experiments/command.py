"""``muonlab experiment``: list the studies, estimate one (``--dry-run``), or run it and write its report.

Running a study: plan its runs (``resolve``: the plan given the runs finished already), check every
run folder (a folder holding a run of another config stops the study before any work), prepare the
data once, train the runs that are not finished (``runner.run_configs``, with the live progress of
``display.Monitor``) — for a staged study, each stage's ready runs, then plan again with their
results — then analyse the run folders and write ``report.md``, ``results.json`` and
``provenance.json`` (``outputs.write_outputs``). Re-running the same command after a kill continues
where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..analysis.runs import Run, load_run
from ..train.config import TrainConfig, load_config_file
from .display import Monitor, format_duration, format_tokens
from .estimate import Estimate, cost_configs, estimate, probe_configs, run_model
from .lock import study_lock
from .progress import StudyProgress
from .provenance import git_revision, machine, machine_key
from .registry import all_studies
from .runner import is_finished, run_configs
from .study import Finished, PlannedRun, Study, parameters

__all__ = ["StudyPlan", "default_out", "default_workers", "dry_run", "list_text", "plan", "plan_text", "run_study"]


def default_out(study: Study, preset: str) -> Path:
    """``runs/<study>`` for the cpu preset, ``runs/<study>-<preset>`` for the others."""
    return Path("runs") / (study.name if preset == "cpu" else f"{study.name}-{preset}")


def default_workers(study: Study, planned: Sequence[PlannedRun]) -> int:
    """One run at a time on a GPU or for a study that times steps (``Study.times_steps``); on a CPU one
    single-threaded run per core (at most one per run)."""
    import torch

    on_gpu = any(p.config.device == "cuda" or (p.config.device == "auto" and torch.cuda.is_available())
                 for p in planned)
    if study.times_steps or on_gpu:
        return 1
    return max(1, min(os.cpu_count() or 1, len(planned)))


@dataclass(frozen=True)
class StudyPlan:
    """A study with its parameters (preset, file, ``--set``), the ``TrainConfig`` overrides for every
    run and the output folder: everything needed to plan its runs at any point of its progress."""

    study: Study
    preset: str
    params: dict[str, Any]
    overrides: dict[str, Any]
    out: Path

    def resolve(self) -> tuple[list[PlannedRun], dict[str, Run]]:
        """``(runs, done)``: the plan given every run that is finished, and those runs by name.

        A run counts as done when the runs it needs are done and its folder holds it trained to the
        end (checked against the config planned from those runs' results, so a provisional config is
        never compared with a finished folder). Raises ``RunFolderError`` when a folder holds another run.
        """
        done: dict[str, Run] = {}
        while True:
            planned = self.study.planned(self.params, self.out, self.overrides, done)
            newly = [p for p in planned if p.name not in done and all(n in done for n in p.needs)
                     and is_finished(p.config)]
            if not newly:
                return planned, done
            done.update((p.name, load_run(p.config.run_dir)) for p in newly)

    @property
    def runs(self) -> list[PlannedRun]:
        """The plan given the runs finished so far (``resolve``)."""
        return self.resolve()[0]

    @property
    def projected_runs(self) -> list[PlannedRun]:
        """The plan as it is expected to end (``Study.projected``): what ``--dry-run`` costs. The runs a growing
        plan has already decided come first, so their checkpoints count as done."""
        now = self.runs
        known = {p.name for p in now}
        return now + [p for p in self.study.projected(self.params, self.out, self.overrides) if p.name not in known]


def plan(study: Study, preset: str = "cpu", out: Path | None = None, config_file: str | None = None,
         sets: Sequence[str] = ()) -> StudyPlan:
    """The study's plan for a preset and the overrides (a TOML file, then ``--set key=value``)."""
    file_values = load_config_file(config_file) if config_file else None
    params, overrides = parameters(study, preset, file_values, sets)
    return StudyPlan(study, preset, params, overrides, out or default_out(study, preset))


def _prepare_data(configs: Sequence[TrainConfig], say: Callable[[str], None]) -> None:
    """Tokenize each distinct corpus once (cached), before runs or probes read it side by side."""
    from ..data import prepare_dataset

    specs = dict.fromkeys((c.corpus, c.tokenizer, c.vocab_size, c.val_fraction) for c in configs
                          if c.task == "pretrain")  # fine-tuning data needs its model's tokenizer: the run prepares it
    for corpus, tokenizer, vocab, val_fraction in specs:
        started = time.perf_counter()
        data = prepare_dataset(corpus, tokenizer=tokenizer, vocab_size=vocab, val_fraction=val_fraction)
        say(f"data: {corpus} corpus, {tokenizer} tokenizer (vocab {data.vocab_size:,}): "
            f"{len(data.train_tokens):,} training tokens ({time.perf_counter() - started:.1f} s; cached)")


def format_estimate(study: Study, preset: str, est: Estimate, device: str) -> str:
    """The ``--dry-run`` table: every run's optimizer, tokens, FLOPs and estimated time, then the totals."""
    width = max([24, *(len(r.name) for r in est.runs)])
    lines = [f"study {study.name} (preset {preset}): {len(est.runs)} runs, {est.workers} at a time",
             f"  {'run':<{width}} {'optimizer':<9} {'tokens':>8} {'FLOPs':>9} {'left':>8} {'estimate':>9}"]
    for r in est.runs:
        lines.append(f"  {r.name:<{width}} {r.optimizer:<9} {format_tokens(r.tokens):>8} {r.flops:>9.2e} "
                     f"{format_tokens(r.tokens_left):>8} {format_duration(r.seconds):>9}")
    wall = (f"estimated wall time {format_duration(est.wall_s)} on this machine ({machine_key(device)}), "
            "from measured probes, plus the report" if est.wall_s is not None else "wall time not estimated")
    lines.append(f"total: {format_tokens(est.tokens)} tokens, {est.flops:.2e} FLOPs; {wall}")
    return "\n".join(lines)


def dry_run(study: Study, preset: str, planned: Sequence[PlannedRun], workers: int,
            say: Callable[[str], None] = print) -> Estimate:
    """Print the plan and its estimated cost; measure probes first (``calibration``) when not cached.

    Without the device the plan asks for (``device=cuda`` on a machine without one), the cost is
    given in tokens and FLOPs only.
    """
    from ..train.loop import resolve_device
    from .calibration import calibrate

    for run in planned:
        is_finished(run.config)  # a folder holding another config's run is reported now, not at run time
    device = planned[0].config.device
    measurements = None
    try:
        resolve_device(device)
    except ValueError as err:
        say(f"not measuring the speed: {err}")
    else:
        configs = cost_configs(planned)
        _prepare_data(configs, say)
        measurements = calibrate(probe_configs(configs, workers), workers, say=say)
    est = estimate(planned, workers, measurements)
    say(format_estimate(study, preset, est, device))
    return est


def cached_estimate(planned: Sequence[PlannedRun], workers: int) -> Estimate:
    """The cost of what is left of ``planned``, its time from this machine's cached calibration (none
    when a probe is missing: nothing is measured here)."""
    from .calibration import cached_measurements, probe_key

    probes = probe_configs(cost_configs(planned), workers)
    return estimate(planned, workers, cached_measurements([probe_key(p, workers) for p in probes],
                                                          planned[0].config.device))


def plan_text(study: Study, preset: str, planned: Sequence[PlannedRun], workers: int, est: Estimate) -> str:
    """What a study is about to train, said before its first step: the runs left, their model sizes,
    tokens and steps, and the wall time of ``est`` (``cached_estimate`` of the same runs: nothing is
    measured here; without a calibration the line names the dry run that makes one)."""
    configs = cost_configs(planned)
    left = [(cost, config) for cost, config in zip(est.runs, configs) if cost.tokens_left]
    sizes = sorted({run_model(config).num_params() for _, config in left}) or [0]
    size = f"{sizes[0] / 1e6:.2f}M" + (f"–{sizes[-1] / 1e6:.2f}M" if len(sizes) > 1 else "")
    steps = sum(cost.tokens_left // config.tokens_per_step() for cost, config in left)
    when = (f"estimated wall time {format_duration(est.wall_s)} on this machine (from its calibration)"
            if est.wall_s is not None else
            f"no wall-time estimate yet: `muonlab experiment {study.name} --dry-run` calibrates this machine once")
    return (f"plan: study {study.name} (preset {preset}): {len(left)} of {len(planned)} runs to train, "
            f"{workers} at a time; models of {size} parameters; {format_tokens(sum(c.tokens_left for c, _ in left))} "
            f"tokens in {steps:,} steps; {when}")


def list_text() -> str:
    """Every study: name, the claim it checks, and its cpu preset's cost (time when measured on this machine)."""
    from .calibration import cached_measurements, probe_key

    blocks = []
    for study in all_studies().values():
        planned = plan(study).projected_runs
        workers = default_workers(study, planned)
        probes = probe_configs(cost_configs(planned), workers)
        cached = cached_measurements([probe_key(p, workers) for p in probes], planned[0].config.device)
        est = estimate(planned, workers, cached, from_scratch=True)  # the preset's cost, not what is left
        time_text = (f"≈ {format_duration(est.wall_s)} here ({workers} at a time)" if est.wall_s is not None
                     else f"time not measured here yet (muonlab experiment {study.name} --dry-run measures it)")
        blocks.append(f"{study.name}: {study.title}\n  claim: {study.claim}\n  cpu preset: {len(planned)} runs, "
                      f"{format_tokens(est.tokens)} tokens, {est.flops:.2e} FLOPs; {time_text}")
    return "\n\n".join(blocks)


def _analyse(study: Study, params: Mapping[str, Any], planned: Sequence[PlannedRun], out: Path):
    runs = {p.name: load_run(p.config.run_dir) for p in planned}
    return runs, study.analyse(Finished(params, runs, out))


def _progress_entry(run: PlannedRun) -> tuple[str, str, int]:
    return run.name, run.config.run_dir, run.config.total_steps() * run.config.tokens_per_step()


def _train_stages(study_plan: StudyPlan, planned: list[PlannedRun], done: dict[str, Run], workers: int,
                  observer: StudyProgress) -> list[PlannedRun]:
    """Train the ready runs (those whose needs are done), plan again with their results, until every
    run is done; return the final plan. A growing plan may add runs; it may not drop or rename one."""
    while True:
        ready = [p for p in planned if p.name not in done and all(n in done for n in p.needs)]
        if not ready:
            break
        run_configs([p.config for p in ready], workers=workers, observer=observer)
        names = [p.name for p in planned]
        planned, done = study_plan.resolve()
        dropped = sorted(set(names) - {p.name for p in planned})
        if dropped:
            raise ValueError(f"study {study_plan.study.name!r} dropped or renamed runs once earlier stages finished "
                             f"({dropped}); a run's name must not depend on the results of the runs it needs")
        observer.add([_progress_entry(p) for p in planned if p.name not in names])
    waiting = [p.name for p in planned if p.name not in done]
    if waiting:
        raise RuntimeError(f"study {study_plan.study.name!r}: runs {waiting} never became ready")
    return planned


def run_study(study_plan: StudyPlan, workers: int, command: str, console=None, show_progress: bool = True,
              say: Callable[[str], None] = print) -> Path:
    """Train what is not finished, analyse the run folders, write the outputs; return the report's path.

    ``console``: where the progress display goes (default: stdout, live on a terminal, plain lines
    otherwise); ``show_progress=False``: no display. One invocation per output folder at a time
    (``lock.study_lock``; a second raises ``StudyBusyError``).
    """
    with study_lock(study_plan.out):
        return _run_study(study_plan, workers, command, console, show_progress, say)


def _run_study(study_plan: StudyPlan, workers: int, command: str, console, show_progress: bool,
               say: Callable[[str], None]) -> Path:
    from .outputs import record_start, write_outputs

    started = time.perf_counter()
    study, out = study_plan.study, study_plan.out
    planned, done = study_plan.resolve()
    configs = [p.config for p in planned]
    est = cached_estimate(study_plan.projected_runs, workers)
    invocation = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
                  "git_revision": git_revision(), "machine": machine(configs[0].device),
                  "trained": [p.name for p in planned if p.name not in done], "estimate_s": est.wall_s}
    if len(done) < len(planned):
        record_start(out, invocation)
        if done:
            say(f"{len(done)} of {len(planned)} runs are finished already; they are not run again")
        say(plan_text(study, study_plan.preset, study_plan.projected_runs, workers, est))
        _prepare_data(configs, say)
        progress = StudyProgress(study.name, [_progress_entry(p) for p in planned],
                                 done=[p.config.run_dir for p in planned if p.name in done])
        with Monitor(progress, console=console) if show_progress else nullcontext():
            planned = _train_stages(study_plan, planned, done, workers, progress)
    runs, analysis = _analyse(study, study_plan.params, planned, out)
    trained = [p.name for p in planned if p.name not in done]  # a growing plan's later runs included
    report = write_outputs(study, study_plan.preset, study_plan.params, runs, analysis, out,
                           {**invocation, "trained": trained, "wall_s": time.perf_counter() - started})
    if analysis.summary:
        say(analysis.summary)
    say(f"report: {report}")
    return report
