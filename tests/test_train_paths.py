"""User paths through the training loop that ``test_train_loop.py`` leaves out, at tiny scale.

- ``grad_accum`` > 1: two micro-batches of 2 give the run of one batch of 4 (same windows, same
  logged training loss, same weights up to summation order);
- an MoE model resumes exactly: stopped after the checkpoint at N/2 and resumed, its metrics rows,
  weights (with the router's balance bias) and optimizer state are bit-identical to the
  uninterrupted run;
- ``resume=False`` on a folder that already holds a run raises, naming the folder, and changes
  nothing in it;
- ``decay_norms=False`` keeps norm gains out of weight decay: their group has ``weight_decay`` 0,
  and a gain whose gradient is zero is left exactly as it was by a step;
- the ``lr`` column of ``metrics.jsonl`` follows each schedule (``constant``, ``wsd``, ``cosine``)
  written out by hand here from its formula;
- with ``schedule_tokens`` > ``train_tokens`` the run stops early on the longer schedule, also
  when interrupted and resumed, and counts as finished at its own last step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from muonlab.models import Transformer
from muonlab.rundir import read_metrics
from muonlab.rundir.checkpoint import latest_checkpoint
from muonlab.train import loop
from muonlab.train.loop import build_model_config, build_optimizer, train

from conftest import assert_identical, interrupt_after_checkpoint

TIMING_KEYS = frozenset({"tokens_per_s", "wall_s", "optim_step_ms"})


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here trains on one torch thread (see conftest.single_thread)."""


def _deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def _optimizer_state(run_dir):
    return torch.load(latest_checkpoint(run_dir) / "optimizer.pt", map_location="cpu", weights_only=True)


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Gradient accumulation

ACCUM_STEPS = 6


def test_grad_accum_equals_one_batch_of_the_combined_size(tiny_config):
    # fp32 Newton–Schulz, so that the summation order of the two micro-batch gradients is the only
    # difference (bf16 Newton–Schulz would amplify it to ~1e-3).
    common = dict(train_tokens=32 * 4 * ACCUM_STEPS, log_every=1, eval_every=ACCUM_STEPS, telemetry_every=0,
                  ns_dtype="float32")
    whole = tiny_config("whole", batch_size=4, grad_accum=1, **common)
    micro = tiny_config("micro", batch_size=2, grad_accum=2, **common)
    summary_whole, summary_micro = train(whole), train(micro)

    assert summary_micro.steps == summary_whole.steps == ACCUM_STEPS
    assert summary_micro.tokens == summary_whole.tokens == 32 * 4 * ACCUM_STEPS
    rows_whole, rows_micro = read_metrics(whole.run_dir), read_metrics(micro.run_dir)
    assert [r["step"] for r in rows_micro] == [r["step"] for r in rows_whole] == list(range(1, ACCUM_STEPS + 1))
    for a, b in zip(rows_micro, rows_whole):
        assert a["tokens"] == b["tokens"] and a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=0), a["step"]  # the mean over the 4 rows
    torch.manual_seed(whole.seed)  # the loop seeds torch right before building the model
    initial = Transformer(build_model_config(whole, vocab_size=257)).state_dict()
    final_whole, final_micro = _weights(whole.run_dir), _weights(micro.run_dir)
    moved = 0
    for name, w in final_whole.items():
        update, expected = final_micro[name].double() - initial[name].double(), w.double() - initial[name].double()
        assert float((update - expected).norm()) <= 1e-5 * float(expected.norm()) + 1e-7, name
        moved += bool(expected.norm() > 0)
    assert moved == len(final_whole)  # every weight trained, so every comparison means something


# ---------------------------------------------------------------------------------------------
# MoE resume

N = 8
RESUME = dict(model="moe-tiny", train_tokens=32 * 4 * N, checkpoint_every=N // 2, keep_checkpoints=4,
              log_every=2, eval_every=2, telemetry_every=2)  # fmt: skip


def test_moe_resume_after_interrupt_matches_uninterrupted_run(tiny_config, monkeypatch):
    full = tiny_config("full", **RESUME)
    split = tiny_config("split", **RESUME)
    full_summary = train(full)

    real_save = interrupt_after_checkpoint(monkeypatch, N // 2)
    with pytest.raises(KeyboardInterrupt):
        train(split)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert latest_checkpoint(split.run_dir).name == f"step_{N // 2:08d}"
    assert max(r["step"] for r in read_metrics(split.run_dir)) == N // 2

    summary = train(split)

    assert summary.steps == N and summary.final_val_loss == full_summary.final_val_loss
    split_rows, full_rows = _deterministic(read_metrics(split.run_dir)), _deterministic(read_metrics(full.run_dir))
    assert any("moe/load_max_over_mean" in r and r["step"] > N // 2 for r in split_rows)
    assert split_rows == full_rows
    weights = _weights(split.run_dir)
    bias = [k for k in weights if k.endswith("balance_bias")]
    assert bias and all(weights[k].abs().sum() > 0 for k in bias), "the balance bias never moved"
    assert_identical(weights, _weights(full.run_dir), "weights")
    assert_identical(_optimizer_state(split.run_dir), _optimizer_state(full.run_dir), "optimizer")


# ---------------------------------------------------------------------------------------------
# resume=False on an existing run


@pytest.mark.parametrize("what", ["checkpoint", "metrics only"])
def test_resume_false_on_an_existing_run_raises_and_changes_nothing(tiny_config, what):
    config = tiny_config(train_tokens=32 * 4 * 2, log_every=1, eval_every=2)
    train(config)
    run_dir = Path(config.run_dir)
    if what == "metrics only":  # a run stopped before its first checkpoint still owns the folder
        for path in sorted((run_dir / "checkpoints").rglob("*"), reverse=True):
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        assert latest_checkpoint(run_dir) is None
    before = _snapshot(run_dir)

    with pytest.raises(ValueError) as info:
        train(config.replace(resume=False))
    message = str(info.value)
    assert str(run_dir) in message and "resume=True" in message and "\n" not in message

    assert _snapshot(run_dir) == before, "the refused run changed the run folder"


def test_resume_false_on_a_new_folder_trains(tiny_config):
    config = tiny_config(resume=False, train_tokens=32 * 4 * 2, log_every=1, eval_every=2)
    assert train(config).steps == 2


# ---------------------------------------------------------------------------------------------
# decay_norms


@pytest.mark.parametrize("decay_norms", [False, True])
def test_decay_norms_false_keeps_norm_gains_out_of_weight_decay(tiny_config, decay_norms):
    config = tiny_config(decay_norms=decay_norms, weight_decay=0.1, lr=0.01)
    torch.manual_seed(0)
    model = Transformer(build_model_config(config, vocab_size=257))
    optimizer = build_optimizer(model, config)

    norm_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.RMSNorm) for p in m.parameters()}
    assert len(norm_ids) == 2 * 2 + 1  # two per block, one final
    for group in optimizer.param_groups:
        holds_norms = {id(p) for p in group["params"]} & norm_ids
        if holds_norms:
            assert holds_norms == {id(p) for p in group["params"]}, "norm gains share a group with other weights"
            assert group["weight_decay"] == (0.1 if decay_norms else 0.0)
        else:
            assert group["weight_decay"] == 0.1

    x = torch.randint(0, 257, (2, 17), generator=torch.Generator().manual_seed(0))
    model(x[:, :-1], x[:, 1:]).backward()
    gains = {n: p for n, p in model.named_parameters() if id(p) in norm_ids}
    for p in gains.values():
        p.grad = torch.zeros_like(p)  # AdamW's update is then exactly 0: only decay could move them
    before = {n: p.detach().clone() for n, p in gains.items()}
    others = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in norm_ids}
    optimizer.step()

    for name, p in gains.items():
        expected = before[name] if not decay_norms else before[name] * (1 - 0.01 * 0.1)
        assert torch.equal(p.detach(), expected), name
    assert all(not torch.equal(p.detach(), others[n]) for n, p in model.named_parameters() if n in others)


# ---------------------------------------------------------------------------------------------
# Schedules through the loop

# Not the config defaults (decay_fraction 0.2, final_lr_ratio 0.1), so a setting the loop drops shows.
SCHEDULE_STEPS, WARMUP, PEAK, FINAL, DECAY_FRACTION = 20, 2, 0.02, 0.2, 0.25


def _constant(t: int) -> float:
    return (t + 1) / WARMUP if t < WARMUP else 1.0


def _wsd(t: int) -> float:
    # decay_fraction 0.25 of 20 steps: 5 decay steps from S = 15, linear from 1 to FINAL at step 20.
    if t < WARMUP:
        return (t + 1) / WARMUP
    return 1.0 if t < 15 else 1.0 - (1.0 - FINAL) * (t - 15) / 5


def _cosine(t: int) -> float:
    if t < WARMUP:
        return (t + 1) / WARMUP
    progress = (t - WARMUP) / (SCHEDULE_STEPS - WARMUP)
    return FINAL + (1.0 - FINAL) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("schedule, multiplier", [("constant", _constant), ("wsd", _wsd), ("cosine", _cosine)])
def test_logged_lr_follows_the_schedule(tiny_config, schedule, multiplier):
    config = tiny_config(schedule=schedule, lr=PEAK, warmup_steps=WARMUP, final_lr_ratio=FINAL,
                         decay_fraction=DECAY_FRACTION,
                         log_every=1, eval_every=SCHEDULE_STEPS, telemetry_every=0)
    assert config.total_steps() == SCHEDULE_STEPS
    train(config)
    logged = [(r["step"], r["lr"]) for r in read_metrics(config.run_dir) if "lr" in r]
    # The lr of step s (1-based) is the multiplier at 0-based step s − 1.
    expected = [(s, PEAK * multiplier(s - 1)) for s in range(1, SCHEDULE_STEPS + 1)]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    for (step, got), (_, want) in zip(logged, expected):
        assert got == pytest.approx(want, rel=1e-12, abs=0), step
    assert json.loads((Path(config.run_dir) / "config.json").read_text())["schedule"] == schedule


# ---------------------------------------------------------------------------------------------
# schedule_tokens: stop early on a longer schedule (Moonlight Table 1: 4B tokens of a 20B schedule)

EARLY_STEPS = 5  # of the SCHEDULE_STEPS-step cosine schedule above


def test_a_run_stopped_early_follows_the_longer_schedule_and_resumes_on_it(tiny_config, monkeypatch):
    from muonlab.experiments.runner import is_finished
    from muonlab.train.run_folder import RunFolderError

    tokens_per_step = 32 * 4
    config = tiny_config(schedule="cosine", lr=PEAK, warmup_steps=WARMUP, final_lr_ratio=FINAL, log_every=1,
                         eval_every=EARLY_STEPS, telemetry_every=0, checkpoint_every=2,
                         train_tokens=EARLY_STEPS * tokens_per_step, schedule_tokens=SCHEDULE_STEPS * tokens_per_step)
    assert (config.total_steps(), config.schedule_steps()) == (EARLY_STEPS, SCHEDULE_STEPS)
    real_save = interrupt_after_checkpoint(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert not is_finished(config)
    summary = train(config)  # resumes from step 2

    assert summary.steps == EARLY_STEPS and is_finished(config)
    logged = [(r["step"], r["lr"]) for r in read_metrics(config.run_dir) if "lr" in r]
    assert [s for s, _ in logged] == list(range(1, EARLY_STEPS + 1))
    for step, got in logged:  # the 20-step cosine of test_logged_lr_follows_the_schedule, not a 5-step one
        assert got == pytest.approx(PEAK * _cosine(step - 1), rel=1e-12, abs=0), step
    assert logged[-1][1] > 0.9 * PEAK  # a 5-step schedule would be near its end (FINAL · PEAK) by now
    record = json.loads((Path(config.run_dir) / "config.json").read_text())
    assert (record["total_steps"], record["schedule_steps"]) == (EARLY_STEPS, SCHEDULE_STEPS)
    with pytest.raises(RunFolderError, match="schedule_tokens"):  # another schedule is another run
        is_finished(config.replace(schedule_tokens=0))


def test_schedule_tokens_may_not_be_shorter_than_the_run(tiny_config):
    from muonlab.train.config import ConfigError

    with pytest.raises(ConfigError, match=r"schedule_tokens=100 is shorter than train_tokens=2560"):
        tiny_config(schedule_tokens=100)
    assert tiny_config(schedule_tokens=0).schedule_steps() == tiny_config().total_steps()
