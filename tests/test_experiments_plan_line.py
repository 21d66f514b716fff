"""``muonlab experiment NAME`` says its plan before the first step: the runs left, their model sizes,
tokens and steps, and the wall time from this machine's cached calibration (or how to get one)."""

from __future__ import annotations

import pytest

from muonlab.experiments import calibration, command
from muonlab.experiments.calibration import Measurement
from muonlab.experiments.display import format_tokens
from muonlab.experiments.registry import get_study
from muonlab.models import model_config_for


def _study_plan(tmp_path):
    study = get_study("demo")
    return study, command.plan(study, "cpu", tmp_path / "out", None, ["seeds=0", "train_tokens=40960"])


def test_the_plan_names_runs_sizes_tokens_steps_and_the_calibrated_wall_time(tmp_path, monkeypatch):
    study, study_plan = _study_plan(tmp_path)
    planned = study_plan.projected_runs
    step = Measurement(startup_s=2.0, build_s=1.0, first_step_s=0.5, step_s=0.5, telemetry_step_s=0.5,
                       eval_s=0.0, checkpoint_s=0.0)
    monkeypatch.setattr(calibration, "cached_measurements", lambda keys, device="cpu", cache_dir=None:
                        dict.fromkeys(keys, step))
    line = command.plan_text(study, "cpu", planned, 2, command.cached_estimate(planned, 2))
    configs = [p.config for p in planned]
    vocab = configs[0].vocab_size
    params = model_config_for(configs[0].model, vocab, configs[0].seq_len, d_model=configs[0].d_model,
                              n_layers=configs[0].n_layers, n_heads=configs[0].n_heads, mlp=configs[0].mlp,
                              tie_embeddings=configs[0].tie_embeddings).num_params()
    steps = sum(c.total_steps() for c in configs)
    n = len(planned)
    assert line.startswith(f"plan: study demo (preset cpu): {n} of {n} runs to train, 2 at a time;")
    assert f"models of {params / 1e6:.2f}M parameters" in line
    tokens = sum(c.total_steps() * c.tokens_per_step() for c in configs)
    assert f"; {format_tokens(tokens)} tokens in {steps:,} steps; estimated wall time " in line
    assert line.endswith("on this machine (from its calibration)")


def test_without_a_calibration_the_plan_names_the_dry_run_that_makes_one(tmp_path, monkeypatch):
    study, study_plan = _study_plan(tmp_path)
    monkeypatch.setattr(calibration, "cached_measurements", lambda keys, device="cpu", cache_dir=None: {})
    planned = study_plan.projected_runs
    line = command.plan_text(study, "cpu", planned, 1, command.cached_estimate(planned, 1))
    assert line.endswith("no wall-time estimate yet: `muonlab experiment demo --dry-run` calibrates this machine once")


def test_a_study_prints_its_plan_before_its_first_step(tmp_path, monkeypatch):
    study, study_plan = _study_plan(tmp_path)
    said: list[str] = []

    class FirstStep(Exception):
        pass

    def first_step(configs, workers, observer):  # the runner is where the first step would happen
        assert any(line.startswith("plan: study demo") for line in said), said
        raise FirstStep

    monkeypatch.setattr(command, "run_configs", first_step)
    monkeypatch.setattr(command, "_prepare_data", lambda configs, say: None)
    with pytest.raises(FirstStep):
        command.run_study(study_plan, 1, "muonlab experiment demo", show_progress=False, say=said.append)
