"""The ``lr-transfer`` study: its plan (fixed tokens, the batch sets the steps, both optimizers bracketed in
every group) and its map and rule on made-up runs whose optimal learning rates are known."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from muonlab.analysis.runs import Run
from muonlab.experiments.studies.lr_transfer import plan as transfer_plan
from muonlab.experiments.studies.lr_transfer import report
from muonlab.experiments.study import Finished


def _params() -> dict:
    return dict(transfer_plan.PRESETS["cpu"])


def test_every_run_trains_the_same_tokens_and_the_batch_sets_the_steps():
    p = _params()
    runs = transfer_plan.projected_plan(p)
    assert {r.config.train_tokens for r in runs} == {p["train_tokens"]}
    steps = {r.config.batch_size: r.config.total_steps() for r in runs}
    assert steps == {b: p["train_tokens"] // (p["seq_len"] * b) for b in p["batch_sizes"]}
    assert max(steps.values()) >= 1000 and max(steps.values()) / min(steps.values()) >= 16


def _done(p: dict, loss_of) -> dict[str, Run]:
    done: dict[str, Run] = {}
    for _ in range(30):
        new = [r for r in transfer_plan.plan(p, done) if r.name not in done and all(n in done for n in r.needs)]
        if not new:
            return done
        for r in new:
            c = r.config
            done[r.name] = Run(r.name, Path(r.name), c.to_dict(), [
                {"step": c.total_steps(), "val_loss": loss_of(c.optimizer, c.d_model, c.total_steps(), c.lr, c.seed)}])
    raise AssertionError("the plan never settled")


def _losses(o: str, width: int, steps: int, lr: float, seed: int) -> float:
    """AdamW's optimum 2.5e-3 everywhere; Muon's 4× that below 1,000 steps and equal to it from 1,000 steps on;
    0.02 nats per squared doubling off the optimum; seeds shift every arm alike."""
    best = 2.5e-3 if o == "adamw" or steps >= 1000 else 1e-2
    base = 2.0 + 1.0 / width - (0.1 if o == "muon" else 0.0)
    return base + 0.02 * math.log2(lr / best) ** 2 + 1e-3 * seed


def test_the_map_recovers_the_known_optimal_lrs_and_the_rule_its_step_threshold(tmp_path):
    p = _params()
    analysis = report.analyse(Finished(p, _done(p, _losses), tmp_path))
    rows = analysis.results["groups"]
    assert len(rows) == len(p["widths"]) * len(p["batch_sizes"])
    for row in rows:
        assert row["adamw_lr"] == 2.5e-3 and row["status"] == {"adamw": "interior", "muon": "interior"}
        if row["steps"] >= 1000:
            assert row["lr_ratio"] == 1.0 and row["penalty"]["point"] == pytest.approx(0.0, abs=1e-12)
        else:
            assert row["lr_ratio"] == 4.0
            assert row["penalty"]["point"] == pytest.approx(0.02 * 4)  # two doublings below its optimum
            assert row["paired_penalty"]["separated"]
    rule = analysis.results["rule"]
    assert rule["min_steps"] == 2048
    assert "2,048 steps" in analysis.sections[0][1]
    assert analysis.results["claims_agree"] == [None]  # carries over at many steps, not at few


def test_the_rule_says_when_no_step_count_qualifies_and_when_all_do():
    def row(steps, high, point=0.0, ratio=1.0):
        return {"steps": steps, "lr_ratio": ratio, "relative_penalty": {"point": point, "low": 0.0, "high": high}}

    none = report.rule([row(256, 0.05), row(4096, 0.02, point=0.015)])
    assert none["min_steps"] is None and "at every step count tried" in report.rule_text(none, [24])
    # 1,024 qualifies alone but 4,096 does not: the rule needs every longer run to qualify too
    gap = report.rule([row(256, 0.05), row(1024, 0.005), row(4096, 0.02)])
    assert gap["min_steps"] is None
    every = report.rule([row(256, 0.004, ratio=2.0), row(4096, 0.001, ratio=0.5)])
    assert every["min_steps"] == 256 and every["lr_ratio_geomean"] == pytest.approx(1.0)


def test_a_map_where_muon_always_needs_its_own_lr_disagrees(tmp_path):
    p = _params()

    def losses(o, width, steps, lr, seed):
        best = 2.5e-3 if o == "adamw" else 1e-2
        return 2.0 + 0.02 * math.log2(lr / best) ** 2 + 1e-3 * seed

    analysis = report.analyse(Finished(p, _done(p, losses), tmp_path))
    assert analysis.results["claims_agree"] == [False]
    assert analysis.results["rule"]["min_steps"] is None


def test_the_gpu_preset_asks_for_a_corpus_and_its_embeddings_are_smaller_than_the_rest():
    from muonlab.models import model_config_for
    from muonlab.train.config import ConfigError

    p = dict(transfer_plan.PRESETS["gpu"])
    with pytest.raises(ConfigError, match="--set corpus="):
        transfer_plan.plan(p, {})
    for width in p["widths"]:
        model = model_config_for("demo", p["vocab_size"], p["seq_len"], d_model=width, n_layers=p["n_layers"],
                                 n_heads=width // p["head_dim"])
        hidden = model.num_params(include_embedding=False)
        assert model.num_params() - hidden < hidden


def test_every_group_is_validated_on_the_same_number_of_tokens():
    p = _params()
    held_out = {r.config.eval_batches * r.config.batch_size * r.config.seq_len for r in transfer_plan.projected_plan(p)}
    assert held_out == {p["eval_tokens"]}
