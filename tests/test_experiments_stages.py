"""Staged studies: runs that need other runs, configs planned from their results, costed stage by stage.

A toy study sweeps two learning rates (stage 0), then trains a third run at the winner's learning
rate (stage 1, needing both). The winner is read back here from the sweep runs' metrics files, not
from the study's own code, and a second invocation must train nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muonlab.experiments import command
from muonlab.experiments.calibration import Measurement, probe_key
from muonlab.experiments.estimate import Estimate, cost_configs, estimate, probe_configs, stages
from muonlab.experiments.study import Analysis, PlannedRun, Study
from muonlab.rundir import read_metrics
from muonlab.train.config import TrainConfig

from conftest import tiny_config_dict

SWEEP = {"lr-hi": 3e-2, "lr-lo": 1e-4}
PROVISIONAL_LR = 1.0


def _staged_study(corpus: Path, name_after_the_lr: bool = False) -> Study:
    def plan(p, done):
        base = TrainConfig(**tiny_config_dict(corpus, Path("unused")))
        runs = [PlannedRun(name, base.replace(lr=lr)) for name, lr in SWEEP.items()]
        if all(name in done for name in SWEEP):
            best = min(SWEEP, key=lambda name: done[name].final("val_loss"))
            lr = SWEEP[best]
        else:
            lr = PROVISIONAL_LR
        name = f"winner-lr{lr:g}" if name_after_the_lr else "winner"
        runs.append(PlannedRun(name, base.replace(lr=lr, seed=1), needs=tuple(SWEEP)))
        return runs

    def analyse(finished):
        return Analysis({"winner_lr": finished.runs["winner"].config["lr"]})

    return Study(name="toy-staged", title="toy", claim="none", presets={"cpu": {"unused": 0}}, plan=plan,
                 analyse=analyse)


def _final_val_loss(run_dir: Path) -> float:
    return [row["val_loss"] for row in read_metrics(run_dir) if "val_loss" in row][-1]


def test_a_staged_study_runs_each_stage_on_the_results_of_the_one_before(tiny_corpus, muonlab_cache, tmp_path):
    study = _staged_study(tiny_corpus)
    study_plan = command.StudyPlan(study, "cpu", {"unused": 0}, {}, tmp_path / "study")
    first = study_plan.runs
    assert [(p.name, p.needs) for p in first] == [("lr-hi", ()), ("lr-lo", ()), ("winner", ("lr-hi", "lr-lo"))]
    assert first[2].config.lr == PROVISIONAL_LR  # planned provisionally until the sweep is done

    command.run_study(study_plan, workers=1, command="toy", show_progress=False, say=lambda s: None)
    losses = {name: _final_val_loss(tmp_path / "study" / name) for name in SWEEP}
    expected = SWEEP[min(losses, key=losses.get)]
    winner_config = json.loads((tmp_path / "study" / "winner" / "config.json").read_text())
    assert winner_config["lr"] == expected != PROVISIONAL_LR
    assert json.loads((tmp_path / "study" / "results.json").read_text())["results"]["winner_lr"] == expected

    planned, done = study_plan.resolve()
    assert set(done) == {"lr-hi", "lr-lo", "winner"} and planned[2].config.lr == expected
    before = {name: (tmp_path / "study" / name / "metrics.jsonl").read_bytes() for name in done}
    said = []
    command.run_study(study_plan, workers=1, command="toy", show_progress=False, say=said.append)
    assert {name: (tmp_path / "study" / name / "metrics.jsonl").read_bytes() for name in done} == before
    assert not any("finished already" in line for line in said)  # nothing left to train: no training message


def test_a_run_renamed_by_the_results_it_needs_is_refused(tiny_corpus, muonlab_cache, tmp_path):
    study_plan = command.StudyPlan(_staged_study(tiny_corpus, name_after_the_lr=True), "cpu", {"unused": 0}, {},
                                   tmp_path / "study")
    with pytest.raises(ValueError, match=r"renamed runs .*'winner-lr1'.*must not depend on the results"):
        command.run_study(study_plan, workers=1, command="toy", show_progress=False, say=lambda s: None)


def test_a_run_may_only_need_runs_planned_before_it():
    base = TrainConfig(model="tiny")
    study = Study(name="bad", title="bad", claim="none", presets={"cpu": {}}, analyse=lambda f: Analysis({}),
                  plan=lambda p, done: [PlannedRun("b", base, needs=("a",)), PlannedRun("a", base)])
    with pytest.raises(ValueError, match=r"run 'b' needs \['a'\], which are not planned before it"):
        study.planned({}, Path("o"), {})


def _measurement(step_s: float) -> Measurement:
    return Measurement(startup_s=0.0, build_s=0.0, first_step_s=step_s, step_s=step_s, telemetry_step_s=step_s,
                       eval_s=0.0, checkpoint_s=0.0)


def test_runs_started_from_planned_runs_cost_as_their_model_and_stages_add_up(tmp_path):
    def config(name: str, **fields) -> TrainConfig:
        return TrainConfig(run_dir=str(tmp_path / name), model="tiny", seq_len=32, batch_size=4,
                           train_tokens=128 * 10, eval_every=1000, telemetry_every=0, **fields)

    planned = [PlannedRun("small", config("small", d_model=64)), PlannedRun("large", config("large", d_model=128)),
               PlannedRun("tune", config("tune", task="sft", corpus="python-functions",
                                         init_from=str(tmp_path / "large")), needs=("large",))]
    costed = cost_configs(planned)
    assert costed[2].d_model == 128 and costed[2].task == "pretrain" and costed[2].init_from == ""
    assert costed[2].corpus == planned[1].config.corpus and costed[2].train_tokens == 128 * 10
    assert stages(planned) == [0, 0, 1]
    probes = probe_configs(costed, workers=2)
    step_s = {64: 1.0, 128: 2.0}
    measured = {probe_key(p, 2): _measurement(step_s[p.d_model]) for p in probes}
    est = estimate(planned, 2, measured)
    assert [r.seconds for r in est.runs] == pytest.approx([10.0, 20.0, 20.0])
    # Stage 0 runs side by side (20 s), then the fine-tuning alone (20 s): not 30 s as one stage would give.
    assert est.wall_s == pytest.approx(40.0)


def test_a_growing_plan_adds_the_runs_its_results_decide_and_provenance_lists_them(tiny_corpus, muonlab_cache,
                                                                                   tmp_path):
    def plan(p, done):
        base = TrainConfig(**tiny_config_dict(tiny_corpus, Path("unused")))
        runs = [PlannedRun(name, base.replace(lr=lr)) for name, lr in SWEEP.items()]
        if all(name in done for name in SWEEP):  # the winner's run appears only once it is known, named after it
            lr = SWEEP[min(SWEEP, key=lambda name: done[name].final("val_loss"))]
            runs.append(PlannedRun(f"winner-lr{lr:g}", base.replace(lr=lr, seed=1), needs=tuple(SWEEP)))
        return runs

    study = Study(name="toy-growing", title="toy", claim="none", presets={"cpu": {"unused": 0}}, plan=plan,
                  analyse=lambda finished: Analysis({"runs": sorted(finished.runs)}))
    study_plan = command.StudyPlan(study, "cpu", {"unused": 0}, {}, tmp_path / "study")
    assert [p.name for p in study_plan.runs] == list(SWEEP)
    command.run_study(study_plan, workers=1, command="toy", show_progress=False, say=lambda s: None)
    losses = {name: _final_val_loss(tmp_path / "study" / name) for name in SWEEP}
    winner = f"winner-lr{SWEEP[min(losses, key=losses.get)]:g}"
    assert (tmp_path / "study" / winner / "config.json").exists()
    provenance = json.loads((tmp_path / "study" / "provenance.json").read_text())
    assert provenance["invocations"][-1]["trained"] == [*SWEEP, winner]
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert results["results"]["runs"] == sorted([*SWEEP, winner])


def test_each_invocation_records_its_starting_estimate_and_the_report_compares_it(tiny_corpus, muonlab_cache,
                                                                                 tmp_path, monkeypatch):
    """The wall time estimated from the calibration when an invocation starts is kept beside the time it
    took, and the report states their ratio; an invocation that trains nothing states none."""
    monkeypatch.setattr(command, "cached_estimate", lambda planned, workers: Estimate([], workers, 90.0))
    base = TrainConfig(**tiny_config_dict(tiny_corpus, Path("unused")))
    study = Study(name="toy-estimate", title="toy", claim="none", presets={"cpu": {"unused": 0}},
                  plan=lambda p, done: [PlannedRun(name, base.replace(lr=lr)) for name, lr in SWEEP.items()],
                  analyse=lambda finished: Analysis({"runs": sorted(finished.runs)}))
    study_plan = command.StudyPlan(study, "cpu", {"unused": 0}, {}, tmp_path / "study")
    for _ in range(2):  # the second invocation finds everything trained
        command.run_study(study_plan, workers=1, command="toy", show_progress=False, say=lambda s: None)
    first, second = json.loads((tmp_path / "study" / "provenance.json").read_text())["invocations"]
    assert first["estimate_s"] == 90.0 and first["wall_s"] > 0
    report = (tmp_path / "study" / "report.md").read_text()
    assert f"{first['wall_s'] / 90.0:.2f}× the 1.5 min estimated at its start" in report
    assert second["trained"] == [] and report.count("estimated at its start") == 1
