"""Planning a study: parameters from presets, a TOML file and --set; the registry; cost estimates.

The estimate's event counts are checked against a step-by-step walk through the training loop's
conditions (an independent slow reference), and its schedule against hand-worked examples.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from muonlab.cli import main
from muonlab.experiments import calibration, command
from muonlab.experiments.calibration import Measurement, cached_measurements, probe_key
from muonlab.experiments.estimate import (
    estimate,
    interpolate_measurement,
    makespan,
    probe_configs,
    run_flops_per_step,
    run_seconds,
)
from muonlab.experiments.registry import all_studies, get_study
from muonlab.experiments.study import Analysis, PlannedRun, Study, parameters
from muonlab.train.config import ConfigError, TrainConfig


def _study(**presets) -> Study:
    def plan(p, done):
        base = TrainConfig(model="tiny", seq_len=32, batch_size=4, train_tokens=p["tokens"], lr=p["lr"])
        return [PlannedRun(f"{o}-s{s}", base.replace(optimizer=o, seed=s))
                for s in p["seeds"] for o in ("adamw", "muon")]

    return Study(name="toy", title="toy", claim="none", plan=plan, analyse=lambda f: Analysis({}),
                 presets=presets or {"cpu": {"seeds": (0, 1), "tokens": 1280, "lr": 3e-3, "compile": False}})


def test_parameters_come_from_the_preset_then_the_file_then_set():
    study = _study()
    params, train = parameters(study, "cpu", {"lr": 1, "seeds": [3], "train": {"dtype": "fp32"}},
                               ["seeds=0,1,2", "compile=yes", "tokens=2e3", "train.eval_batches=2"])
    assert params == {"seeds": (0, 1, 2), "tokens": 2000, "lr": 1.0, "compile": True}
    assert train == {"dtype": "fp32", "eval_batches": "2"}
    planned = study.planned(params, Path("out"), train)
    assert [p.name for p in planned] == ["adamw-s0", "muon-s0", "adamw-s1", "muon-s1", "adamw-s2", "muon-s2"]
    assert all(p.config.dtype == "fp32" and p.config.eval_batches == 2 and not p.config.progress for p in planned)
    assert planned[3].config.run_dir == str(Path("out") / "muon-s1")


@pytest.mark.parametrize("file_values, sets, message", [
    (None, ["nope=1"], "has no parameter 'nope'; parameters: ['compile', 'lr', 'seeds', 'tokens']"),
    (None, ["lr"], "expected key=value"),
    (None, ["tokens=many"], "tokens='many': not a valid int"),
    (None, ["compile=maybe"], "not a valid bool"),
    (None, ["train.colour=red"], "train.colour: not a TrainConfig field"),
    (None, ["train.run_dir=x"], "train.run_dir: not a TrainConfig field"),
    (None, ["train.dtype=fp8"], "dtype='fp8' is not valid"),
    ({"tokens": "1000"}, [], "tokens='1000' must be a int"),
    ({"seeds": 0}, [], "must be a list like [0, 1]"),
])
def test_bad_parameters_name_the_key_and_what_is_valid(file_values, sets, message):
    with pytest.raises(ConfigError, match=None) as err:
        parameters(_study(), "cpu", file_values, sets)
    assert message in str(err.value)


def test_study_checks_its_presets_and_run_names():
    with pytest.raises(ValueError, match="no 'cpu' preset"):
        _study(gpu={"seeds": (0,), "tokens": 1, "lr": 1.0, "compile": False})
    with pytest.raises(ValueError, match="preset 'gpu' has keys"):
        _study(cpu={"seeds": (0,), "tokens": 1, "lr": 1.0, "compile": False}, gpu={"seeds": (0,)})
    with pytest.raises(ConfigError, match="no preset 'tpu'"):
        parameters(_study(), "tpu")
    study = _study()
    with pytest.raises(ValueError, match=r"several runs named \['adamw-s0', 'muon-s0'\]"):
        study.planned({"seeds": (0, 0), "tokens": 1280, "lr": 1e-3, "compile": False}, Path("o"), {})


def test_every_registered_study_plans_each_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output folders (runs/<study>) must not be the checkout's
    studies = all_studies()
    assert "demo" in studies and get_study("demo") is studies["demo"]
    corpus = tmp_path / "user-corpus.txt"
    corpus.write_text("a corpus the user names\n")
    needing_a_corpus = []
    for study in studies.values():
        for preset in study.presets:
            study_plan = command.plan(study, preset)
            try:
                planned = study_plan.runs
            except ConfigError as error:  # presets whose token budget outgrows the built-in corpora
                assert "name yours with --set corpus=" in str(error)
                needing_a_corpus.append((study.name, preset))
                study_plan = command.plan(study, preset, sets=[f"corpus={corpus}"])
                planned = study_plan.runs
            assert planned and study_plan.out == command.default_out(study, preset)
            assert len({p.name for p in planned}) == len(planned)
    assert all(preset != "cpu" for _, preset in needing_a_corpus), needing_a_corpus
    with pytest.raises(ValueError, match="unknown study 'nope'; studies: .*demo"):
        get_study("nope")


def test_an_empty_list_parameter_stops_before_any_work_with_a_sentence(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"parameter seeds is empty; give at least one value, e.g. --set seeds=0,1,2"):
        command.plan(get_study("demo"), "cpu", tmp_path / "d", sets=["seeds="])
    toml = tmp_path / "empty.toml"
    toml.write_text("seeds = []\n")
    with pytest.raises(ConfigError, match="parameter seeds is empty"):
        command.plan(get_study("demo"), "cpu", tmp_path / "d", str(toml))
    assert main(["experiment", "demo", "--set", "seeds=", "--out", str(tmp_path / "e")]) == 2
    assert "parameter seeds is empty" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # nothing written, no lock left behind


def test_toml_file_and_set_reach_the_plan(tmp_path):
    toml = tmp_path / "over.toml"
    toml.write_text('seeds = [4, 5]\ntrain_tokens = 8192\n[train]\neval_batches = 3\n')
    planned = command.plan(get_study("demo"), "cpu", tmp_path / "d", str(toml), ["lr=0.01"]).runs
    assert [(p.name, p.config.seed) for p in planned][:2] == [("adamw-s4", 4), ("muon-s4", 4)]
    assert {(p.config.train_tokens, p.config.eval_batches, p.config.lr) for p in planned} == {(8192, 3, 0.01)}


def _events_by_walking(config: TrainConfig, start: int) -> tuple[int, int, int]:
    """The training loop's conditions, step by step (muonlab.train.loop.train)."""
    total = config.total_steps()
    evals = ckpts = telemetry = 0
    for step in range(start + 1, total + 1):
        telemetry += config.telemetry_every > 0 and (step % config.telemetry_every == 0 or step == 1)
        evals += step % config.eval_every == 0 or step == total
        ckpts += step == total or bool(config.checkpoint_every and step % config.checkpoint_every == 0)
    return evals, ckpts, telemetry


@pytest.mark.parametrize("steps, every, start", [(120, (20, 30, 25), 0), (120, (7, 0, 0), 45), (10, (1, 1, 1), 0),
                                                 (37, (5, 36, 50), 36), (37, (100, 0, 1), 0)])
def test_run_seconds_counts_the_loops_events(steps, every, start):
    config = TrainConfig(seq_len=8, batch_size=2, train_tokens=16 * steps, eval_every=every[0],
                         checkpoint_every=every[1], telemetry_every=every[2])
    m = Measurement(startup_s=1000.0, build_s=100.0, first_step_s=10.0, step_s=1.0, telemetry_step_s=1.5,
                    eval_s=0.01, checkpoint_s=0.0001)
    evals, ckpts, telemetry = _events_by_walking(config, start)
    expected = 100 + 10 + (steps - start - 1) * 1.0 + telemetry * 0.5 + evals * 0.01 + ckpts * 0.0001
    assert run_seconds(config, m, start, separate_process=False) == pytest.approx(expected, abs=1e-9)
    assert run_seconds(config, m, start, separate_process=True) == pytest.approx(expected + 1000, abs=1e-9)
    assert run_seconds(config, m, steps, separate_process=True) == 0.0


def test_makespan_runs_in_plan_order_on_the_first_free_slot():
    assert makespan([3, 3, 3], 2) == 6
    assert makespan([5, 1, 1, 1], 2) == 5
    assert makespan([1, 1, 1, 5], 2) == 6  # 1, 1 side by side; 1 on the first slot (free at 1); 5 at 1
    assert makespan([2, 2], 1) == 4 and makespan([], 3) == 0


def _measurement(step_s: float) -> Measurement:
    return Measurement(startup_s=2.0, build_s=1.0, first_step_s=step_s, step_s=step_s, telemetry_step_s=step_s,
                       eval_s=0.0, checkpoint_s=0.0)


def test_estimate_interpolates_step_time_as_a_power_law_in_flops_between_neighbouring_probes(tmp_path):
    sizes = {"small": 64, "between": 80, "mid": 96, "large": 128}
    planned = [PlannedRun(name, TrainConfig(run_dir=str(tmp_path / name), model="tiny", d_model=d, seq_len=32,
                                            batch_size=4, train_tokens=128 * 11, eval_every=1000, telemetry_every=0))
               for name, d in sizes.items()]
    probes = probe_configs([p.config for p in planned], workers=2)
    assert [p.d_model for p in probes] == [64, 96, 128] and all(p.threads >= 1 for p in probes)
    flops = {p.name: run_flops_per_step(p.config) for p in planned}
    assert flops["small"] < flops["between"] < flops["mid"] < flops["large"]
    measured = {probe_key(p, 2): _measurement(step) for p, step in zip(probes, (1.0, 2.0, 3.0))}
    est = estimate(planned, 2, measured)
    # t = 1.0·(F/F_small)^k between the small and the mid probe, k = ln(2.0 / 1.0) / ln(F_mid / F_small)
    k = math.log(2.0) / math.log(flops["mid"] / flops["small"])
    between_step = (flops["between"] / flops["small"]) ** k
    linear_step = 1.0 + (flops["between"] - flops["small"]) / (flops["mid"] - flops["small"])
    assert abs(between_step - linear_step) > 0.01  # the law is not the straight line: the test tells them apart
    # 11 steps; start-up, set-up; one evaluation and one checkpoint at the end cost nothing here.
    assert [r.seconds for r in est.runs] == pytest.approx([3 + 11 * 1.0, 3 + 11 * between_step, 3 + 11 * 2.0,
                                                          3 + 11 * 3.0])
    assert est.tokens == 4 * 128 * 11 and est.flops == pytest.approx(11 * sum(flops.values()))
    assert estimate(planned, 2, {}).wall_s is None  # nothing measured: no time, still tokens and FLOPs


def test_a_time_measured_as_zero_is_interpolated_linearly_and_never_below_zero():
    zero, some = _measurement(1.0), dataclasses.replace(_measurement(1.0), eval_s=0.4)
    assert interpolate_measurement([(1.0, zero), (3.0, some)], 2.0).eval_s == pytest.approx(0.2)
    assert interpolate_measurement([(1.0, some), (3.0, zero)], 9.0).eval_s == 0.0


def test_calibration_cache_is_per_machine(tmp_path, monkeypatch):
    config = TrainConfig(model="tiny", seq_len=32, batch_size=4)
    key = probe_key(config, 2)
    assert key != probe_key(config, 1) and key == probe_key(config.replace(lr=1.0, seed=3, train_tokens=5), 2)
    assert key != probe_key(config.replace(d_model=96), 2)
    monkeypatch.setattr(calibration, "_probe_batch", lambda configs: [_measurement(len(configs))] * len(configs))
    monkeypatch.setattr(calibration, "machine_key", lambda device: "cpu A")
    said = []
    first = calibration.calibrate([config], 2, cache_dir=tmp_path, say=said.append)
    assert first == {key: _measurement(2)} and len(said) == 1  # padded to the 2 workers
    assert calibration.calibrate([config], 2, cache_dir=tmp_path, say=said.append) == first and len(said) == 1
    assert cached_measurements([key], cache_dir=tmp_path) == first
    monkeypatch.setattr(calibration, "machine_key", lambda device: "cpu B")
    assert cached_measurements([key], cache_dir=tmp_path) == {}
    stored = json.loads((tmp_path / calibration.CACHE_FILE).read_text())
    assert set(stored) == {"cpu A"} and stored["cpu A"][key] == dataclasses.asdict(_measurement(2))


def test_a_probe_measured_on_a_busy_cpu_is_used_once_said_and_not_cached(tmp_path, monkeypatch):
    config = TrainConfig(model="tiny", seq_len=32, batch_size=4)
    key = probe_key(config, 1)
    starved = dataclasses.replace(_measurement(2.0), cpu_share=0.45)  # another process held the core half the time
    monkeypatch.setattr(calibration, "_probe_batch", lambda configs: [starved] * len(configs))
    said = []
    assert calibration.calibrate([config], 1, cache_dir=tmp_path, say=said.append) == {key: starved}
    assert "busy" in said[-1] and "45%" in said[-1] and "not cached" in said[-1]
    assert cached_measurements([key], cache_dir=tmp_path) == {}
    assert not starved.busy("cuda")  # a GPU probe's CPU share says nothing about the GPU
    idle = dataclasses.replace(starved, cpu_share=0.97)
    monkeypatch.setattr(calibration, "_probe_batch", lambda configs: [idle] * len(configs))
    said.clear()
    assert calibration.calibrate([config], 1, cache_dir=tmp_path, say=said.append) == {key: idle}
    assert not any("busy" in line for line in said) and cached_measurements([key], cache_dir=tmp_path) == {key: idle}


def test_a_cached_probe_without_its_cpu_share_is_measured_again(tmp_path, monkeypatch):
    """Entries cached before probes recorded their CPU share may come from a busy machine: they count as missing."""
    config = TrainConfig(model="tiny", seq_len=32, batch_size=4)
    key = probe_key(config, 1)
    monkeypatch.setattr(calibration, "machine_key", lambda device: "cpu A")
    old = {k: v for k, v in dataclasses.asdict(_measurement(2.0)).items() if k != "cpu_share"}
    (tmp_path / calibration.CACHE_FILE).write_text(json.dumps({"cpu A": {key: old}}))
    assert cached_measurements([key], cache_dir=tmp_path) == {}


def test_measure_times_a_real_tiny_run(tiny_corpus, muonlab_cache, single_thread):
    import time

    config = TrainConfig(corpus=str(tiny_corpus), tokenizer="byte", model="tiny", seq_len=32, batch_size=4,
                         eval_batches=2, device="cpu", dtype="fp32")
    m = calibration.measure(config, launched_at=time.time() - 5.0, min_time_s=0.05)
    # launched 5 s ago: the start-up includes them; the upper bounds are loose enough for any load and
    # catch only a unit slip (milliseconds for seconds) or a hang, not a slow machine
    assert 5.0 <= m.startup_s < 3600
    assert all(0 < getattr(m, f.name) < 600 for f in dataclasses.fields(m) if f.name != "startup_s")


def test_dry_run_prints_the_plan_with_its_cost(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(calibration, "_probe_batch", lambda configs: [_measurement(0.5)] * len(configs))
    monkeypatch.setenv("MUONLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(command, "_prepare_data", lambda configs, say: None)
    assert main(["experiment", "demo", "--dry-run", "--out", str(tmp_path / "d"), "--workers", "2",
                 "--set", "seeds=0", "--set", "train_tokens=40960"]) == 0
    out = capsys.readouterr().out
    assert "study demo (preset cpu): 2 runs, 2 at a time" in out
    assert "adamw-s0" in out and "muon-s0" in out and "41k" in out and "estimated wall time" in out
    assert not (tmp_path / "d").exists()  # a dry run trains nothing


def test_list_names_each_study_with_its_claim_and_cost(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUONLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    demo = get_study("demo")
    assert f"demo: {demo.title}\n  claim: {demo.claim}\n  cpu preset: 6 runs, 2.36M tokens" in out
    assert "time not measured here yet (muonlab experiment demo --dry-run measures it)" in out
    # Once this machine has measured the demo's probes, the list shows the estimated time.
    planned = command.plan(demo).runs
    workers = command.default_workers(demo, planned)
    monkeypatch.setattr(calibration, "_probe_batch", lambda configs: [_measurement(0.5)] * len(configs))
    calibration.calibrate(probe_configs([p.config for p in planned], workers), workers, say=lambda s: None)
    assert main(["experiment", "--list"]) == 0
    assert f"here ({workers} at a time)" in capsys.readouterr().out


def test_the_whole_plan_is_costed_from_scratch_when_asked(tmp_path, monkeypatch):
    from muonlab.experiments import estimate as estimate_module

    planned = [PlannedRun("r", TrainConfig(run_dir=str(tmp_path / "r"), model="tiny", seq_len=32, batch_size=4,
                                           train_tokens=128 * 10, eval_every=1000, telemetry_every=0))]
    measured = {probe_key(p, 1): _measurement(1.0) for p in probe_configs([planned[0].config], 1)}
    monkeypatch.setattr(estimate_module, "steps_done", lambda config: 6)  # as if checkpointed at step 6 of 10
    left = estimate(planned, 1, measured)
    whole = estimate(planned, 1, measured, from_scratch=True)
    assert left.runs[0].tokens_left == 4 * 128 and whole.runs[0].tokens_left == 10 * 128
    assert whole.wall_s == pytest.approx(1.0 + 10 * 1.0) and left.wall_s < whole.wall_s


def test_a_study_that_times_steps_trains_one_run_at_a_time_by_default(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    demo, pareto = get_study("demo"), get_study("pareto")
    assert pareto.times_steps and not demo.times_steps
    assert command.default_workers(pareto, command.plan(pareto).runs) == 1
    assert command.default_workers(demo, command.plan(demo).runs) == 2
