"""The training loop end to end, at tiny scale on the CPU.

Covers what a run folder holds (README "Training runs"), that resume continues the exact trajectory,
and that bad input stops with one clear sentence and nothing already written is lost. Every test
trains the "tiny" preset on a ~36 KB byte-tokenized corpus written by ``conftest.py``; a run of 20
steps takes a fraction of a second.
"""

from __future__ import annotations

import errno
import json
import math
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch

from muonlab.data import DataError
from muonlab.models import ModelConfig, Transformer
from muonlab.rundir import MetricsLogger, read_metrics
from muonlab.rundir.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from muonlab.train import loop
from muonlab.train.config import ConfigError, TrainConfig
from muonlab.train.loop import NonFiniteLossError, build_model_config, train
from muonlab.train.run_folder import RunFolderError

from conftest import TINY_STEPS, assert_identical, interrupt_after_checkpoint, tiny_config_dict


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here trains on one torch thread (see conftest.single_thread)."""


TIMING_KEYS = frozenset({"tokens_per_s", "wall_s", "optim_step_ms"})
LOG_KEYS = ("step", "tokens", "loss", "lr", "tokens_per_s", "wall_s", "optim_step_ms")
TOKENS_PER_STEP = 32 * 4


def _deterministic(rows: list[dict]) -> list[dict]:
    """Metrics rows without the timing keys, which legitimately differ between two runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def _optimizer_state(run_dir: Path):
    return torch.load(latest_checkpoint(run_dir) / "optimizer.pt", map_location="cpu", weights_only=True)


def _steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in read_metrics(run_dir)]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder, by relative path, with its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _model_from_run(run_dir: Path) -> Transformer:
    config = json.loads((run_dir / "config.json").read_text())["model_config"]
    return Transformer(ModelConfig(**config))


# ---------------------------------------------------------------------------------------------
# Resume continues the exact trajectory

N = 8  # steps of the resume runs; interrupted after the checkpoint at N // 2
RESUME = dict(train_tokens=TOKENS_PER_STEP * N, checkpoint_every=N // 2, keep_checkpoints=4,
              log_every=2, eval_every=2, telemetry_every=2)  # fmt: skip


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_resume_after_interrupt_matches_uninterrupted_run(tiny_config, monkeypatch, optimizer, dtype):
    full = tiny_config("full", optimizer=optimizer, dtype=dtype, **RESUME)
    split = tiny_config("split", optimizer=optimizer, dtype=dtype, **RESUME)
    full_summary = train(full)

    real_save = interrupt_after_checkpoint(monkeypatch, N // 2)
    with pytest.raises(KeyboardInterrupt):
        train(split)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert latest_checkpoint(split.run_dir).name == f"step_{N // 2:08d}"
    assert max(_steps(split.run_dir)) == N // 2

    summary = train(split)  # resume=True is the default

    assert summary.steps == N and summary.tokens == N * TOKENS_PER_STEP
    assert summary.final_val_loss == full_summary.final_val_loss
    full_rows, split_rows = read_metrics(full.run_dir), read_metrics(split.run_dir)
    assert _steps(split.run_dir) == _steps(full.run_dir)
    assert len(set(_steps(split.run_dir))) == len(split_rows), "metrics.jsonl has duplicate steps"
    after = [r for r in _deterministic(split_rows) if r["step"] >= N // 2]
    assert after == [r for r in _deterministic(full_rows) if r["step"] >= N // 2]
    assert any("update_rms/adamw" in r for r in after) and any("val_loss" in r for r in after)
    assert _deterministic(split_rows) == _deterministic(full_rows)
    assert_identical(_weights(split.run_dir), _weights(full.run_dir), "weights")
    assert_identical(_optimizer_state(split.run_dir), _optimizer_state(full.run_dir), "optimizer")


def test_a_checkpoint_inside_a_logging_interval_resumes_the_same_mean_loss(tiny_config, monkeypatch):
    """Checkpoint at step 3, rows every 2 steps: the row at step 4 averages steps 3 and 4 after a resume too."""
    settings = dict(RESUME, checkpoint_every=3)
    full, split = tiny_config("full", **settings), tiny_config("split", **settings)
    train(full)
    real_save = interrupt_after_checkpoint(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(split)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    train(split)
    full_rows, split_rows = _deterministic(read_metrics(full.run_dir)), _deterministic(read_metrics(split.run_dir))
    assert [r for r in split_rows if r["step"] == 4] == [r for r in full_rows if r["step"] == 4]
    assert split_rows == full_rows


@pytest.mark.parametrize("model", ["tiny", "moe-tiny"], ids=["dense-mha", "moe-mla"])
def test_resume_with_qk_clip_matches_uninterrupted_run(tiny_config, monkeypatch, model):
    """QK-Clip keeps no state across steps: a resumed run clips (and logs) exactly as the uninterrupted one."""
    settings = dict(RESUME, model=model, qk_clip_tau=0.065, dtype="fp32")
    full, split = tiny_config("full", **settings), tiny_config("split", **settings)
    full_summary = train(full)
    real_save = interrupt_after_checkpoint(monkeypatch, N // 2)
    with pytest.raises(KeyboardInterrupt):
        train(split)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)

    summary = train(split)

    assert summary.final_val_loss == full_summary.final_val_loss
    full_rows = _deterministic(read_metrics(full.run_dir))
    assert _deterministic(read_metrics(split.run_dir)) == full_rows
    assert sum(r.get("qk_clip/heads_clipped", 0) for r in full_rows if r["step"] > N // 2) > 0  # clipping after resume
    assert_identical(_weights(split.run_dir), _weights(full.run_dir), "weights")
    assert_identical(_optimizer_state(split.run_dir), _optimizer_state(full.run_dir), "optimizer")


def test_resume_drops_rows_logged_after_the_checkpoint(tiny_config, monkeypatch):
    """Killed after logging steps past the last checkpoint: the resumed run logs them once, identically."""
    full = tiny_config("full", **RESUME)
    split = tiny_config("split", **RESUME)
    train(full)

    class StopAfterStep6(MetricsLogger):
        def log(self, step, metrics):
            super().log(step, metrics)
            if step == 6:
                raise KeyboardInterrupt

    monkeypatch.setattr(loop, "MetricsLogger", StopAfterStep6)
    with pytest.raises(KeyboardInterrupt):
        train(split)
    monkeypatch.setattr(loop, "MetricsLogger", MetricsLogger)
    assert max(_steps(split.run_dir)) == 6  # rows 5 and 6 were logged ...
    assert latest_checkpoint(split.run_dir).name == f"step_{4:08d}"  # ... after the last checkpoint

    train(split)

    steps = _steps(split.run_dir)
    assert len(steps) == len(set(steps)), f"metrics.jsonl has duplicate steps: {steps}"
    assert steps == _steps(full.run_dir)
    assert _deterministic(read_metrics(split.run_dir)) == _deterministic(read_metrics(full.run_dir))
    assert_identical(_weights(split.run_dir), _weights(full.run_dir), "weights")


def test_a_run_killed_before_its_first_checkpoint_starts_over_without_duplicate_rows(tiny_config, monkeypatch):
    """No checkpoint to resume from: the rerun starts at step 0 and the killed attempt's rows are dropped."""
    full = tiny_config("full", **RESUME)
    split = tiny_config("split", **RESUME)
    train(full)

    class StopAfterStep2(MetricsLogger):
        def log(self, step, metrics):
            super().log(step, metrics)
            if step == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(loop, "MetricsLogger", StopAfterStep2)
    with pytest.raises(KeyboardInterrupt):
        train(split)
    monkeypatch.setattr(loop, "MetricsLogger", MetricsLogger)
    assert latest_checkpoint(split.run_dir) is None and _steps(split.run_dir) == [1, 2]

    train(split)

    assert _steps(split.run_dir) == _steps(full.run_dir)
    assert _deterministic(read_metrics(split.run_dir)) == _deterministic(read_metrics(full.run_dir))


def test_resuming_a_finished_run_trains_nothing_more(tiny_config):
    config = tiny_config(train_tokens=TOKENS_PER_STEP * 4, log_every=2, eval_every=2)
    first = train(config, command="muonlab train ...")
    rows = read_metrics(config.run_dir)
    weights = _weights(config.run_dir)

    again = train(config, command="muonlab train ...")

    assert read_metrics(config.run_dir) == rows
    assert_identical(_weights(config.run_dir), weights, "weights")
    assert again.steps == first.steps == 4 and again.tokens == first.tokens
    assert again.final_val_loss == first.final_val_loss == rows[-1]["val_loss"]


# ---------------------------------------------------------------------------------------------
# The run folder


@pytest.fixture(scope="module")
def finished_runs(tiny_corpus, muonlab_cache_dir, tmp_path_factory):
    """One finished 20-step run per optimizer: {"muon": (config, summary), "adamw": (...)}."""
    root = tmp_path_factory.mktemp("finished-runs")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
            runs = {}
            for optimizer in ("muon", "adamw"):
                config = TrainConfig(**tiny_config_dict(tiny_corpus, root / optimizer, optimizer=optimizer))
                runs[optimizer] = (config, train(config, command=f"muonlab train --optimizer {optimizer}"))
    finally:
        torch.set_num_threads(before)
    return runs


def test_config_json_is_the_resolved_config(finished_runs):
    config, _ = finished_runs["muon"]
    record = json.loads((Path(config.run_dir) / "config.json").read_text())

    for key, value in config.to_dict().items():
        assert record[key] == value, key
    model_config = build_model_config(config, vocab_size=257)
    assert record["model_config"] == json.loads(json.dumps(model_config.to_dict()))
    assert record["model_config"]["vocab_size"] == 257  # byte tokenizer
    model = Transformer(ModelConfig(**record["model_config"]))
    assert record["num_params"] == model_config.num_params() == sum(p.numel() for p in model.parameters())
    assert record["total_steps"] == TINY_STEPS
    assert record["tokens_per_step"] == TOKENS_PER_STEP
    assert record["command"] == "muonlab train --optimizer muon"


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_metrics_rows(finished_runs, optimizer):
    config, summary = finished_runs[optimizer]
    rows = read_metrics(config.run_dir)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == TINY_STEPS

    log_rows = [r for r in rows if r["step"] % config.log_every == 0]
    assert [r["step"] for r in log_rows] == list(range(5, TINY_STEPS + 1, 5))
    for row in log_rows:
        assert set(LOG_KEYS) <= set(row), f"step {row['step']} lacks {set(LOG_KEYS) - set(row)}"
        assert row["tokens"] == row["step"] * TOKENS_PER_STEP
        assert math.isfinite(row["loss"]) and row["tokens_per_s"] > 0 and row["optim_step_ms"] > 0
        assert 0 < row["lr"] <= config.lr
    walls = [r["wall_s"] for r in log_rows]
    assert walls == sorted(walls) and walls[0] > 0

    eval_steps = [r["step"] for r in rows if "val_loss" in r]
    assert eval_steps == list(range(5, TINY_STEPS + 1, 5))
    assert summary.final_val_loss == rows[-1]["val_loss"]
    assert rows[-1]["val_loss"] < rows[steps.index(5)]["val_loss"] < math.log(257)  # it learns

    telemetry = [r for r in rows if r["step"] == 1 or r["step"] % config.telemetry_every == 0]
    assert [r["step"] for r in telemetry] == [1, 5, 10, 15, 20]
    for row in telemetry:
        assert "update_rms/adamw" in row
        assert ("update_rms/muon" in row) == (optimizer == "muon")
    # exactly the telemetry steps carry Muon's update RMS under Muon, and no row does under AdamW
    assert [r["step"] for r in rows if "update_rms/muon" in r] == ([1, 5, 10, 15, 20] if optimizer == "muon" else [])

    ckpt = latest_checkpoint(config.run_dir)
    assert ckpt is not None and ckpt.name == f"step_{TINY_STEPS:08d}"


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_weight_and_output_rms_are_logged_on_telemetry_steps_only(finished_runs, optimizer):
    config, _ = finished_runs[optimizer]
    rows = read_metrics(config.run_dir)
    types = ["embed.weight", "norm.weight", "lm_head.weight"] + [
        f"layers.*.{part}.weight" for part in ("attn_norm", "attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp_norm",
                                               "mlp.w_gate", "mlp.w_up", "mlp.w_down")]
    expected = {f"weight_rms/{t}" for t in types} | {"output_rms/layer0", "output_rms/layer1", "output_rms/max"}
    for row in rows:
        logged = {k for k in row if k.startswith(("weight_rms/", "output_rms/"))}
        assert logged == (expected if row["step"] in (1, 5, 10, 15, 20) else set()), row["step"]
        assert all(0 < row[k] < 100 for k in logged)
    last, weights = rows[-1], _weights(config.run_dir)  # step 20: a telemetry step and the final checkpoint
    for part in ("attn.wq", "mlp_norm", "mlp.w_down"):
        both = torch.cat([weights[f"layers.{i}.{part}.weight"].double().flatten() for i in (0, 1)])
        assert last[f"weight_rms/layers.*.{part}.weight"] == pytest.approx(float(both.square().mean().sqrt()),
                                                                            rel=1e-12), part
    assert last["output_rms/max"] == max(last["output_rms/layer0"], last["output_rms/layer1"])


def test_muon_update_rms_matches_adamw_scale(finished_runs):
    """Moonlight scale 0.2·sqrt(max(A, B)): the Muon update RMS sits near AdamW's ~0.2."""
    config, _ = finished_runs["muon"]
    values = [r["update_rms/muon"] for r in read_metrics(config.run_dir) if "update_rms/muon" in r]
    assert len(values) == 5
    assert all(0.05 < v < 0.25 for v in values), values


# ---------------------------------------------------------------------------------------------
# Bad input: one clear sentence, nothing lost


def _one_sentence(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"lrr": 0.01})
    message = _one_sentence(info.value)
    assert "'lrr'" in message
    for key in ("lr", "optimizer", "train_tokens", "run_dir"):
        assert repr(key) in message


@pytest.mark.parametrize(
    "values, names",
    [
        ({"optimizer": "sgd"}, ["optimizer", "'sgd'", "'muon'", "'adamw'"]),
        ({"dtype": "bfloat16"}, ["dtype", "'bf16'", "'fp32'"]),
        ({"lr": -1}, ["lr", "-1"]),
        ({"lr": "fast"}, ["lr", "'fast'", "float"]),
        ({"seq_len": "32.5"}, ["seq_len", "int"]),
        ({"progress": "maybe"}, ["progress", "bool"]),
        ({"batch_size": 0}, ["batch_size", "positive"]),
        ({"val_fraction": 1.5}, ["val_fraction", "(0, 1)"]),
    ],
)
def test_invalid_config_value_names_it(values, names):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values)
    message = _one_sentence(info.value)
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    "values",
    [{"lr": None}, {"lr": [0.01]}, {"warmup_steps": {"a": 1}}, {"seq_len": 32.5}, {"lr": "nan"}],
    ids=["null", "list", "object", "fractional-int", "nan"],
)
def test_malformed_values_from_a_config_file_raise_config_error(values):
    """JSON/TOML files can hold null, lists, objects and 32.5 where an int goes: each is a ConfigError."""
    key = next(iter(values))
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values)
    assert key in _one_sentence(info.value)


def test_integer_model_depth_from_a_config_file_works():
    """{"model": 4} in a JSON file is the depth dial; it must build a model (or be a ConfigError)."""
    try:
        config = TrainConfig.from_dict({"model": 4})
    except ConfigError as err:
        assert "model" in _one_sentence(err)
        return
    assert build_model_config(config, vocab_size=257).n_layers == 4


def test_missing_data_file(tiny_config, tmp_path):
    missing = tmp_path / "no-such-corpus.txt"
    with pytest.raises(DataError) as info:
        train(tiny_config(corpus=str(missing)))
    assert str(missing) in _one_sentence(info.value)


def test_empty_corpus(tiny_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("  \n\n \t\n")
    with pytest.raises(DataError) as info:
        train(tiny_config(corpus=str(empty)))
    message = _one_sentence(info.value)
    assert str(empty) in message and "no non-empty document" in message


@pytest.mark.parametrize("change, field", [({"d_model": 128}, "d_model"), ({"n_layers": 3}, "n_layers")])
def test_resume_with_another_model_refuses_and_keeps_the_run(tiny_config, change, field):
    config = tiny_config(train_tokens=TOKENS_PER_STEP * 4, log_every=2, eval_every=2)
    train(config, command="muonlab train --d_model 64")
    before = _snapshot(Path(config.run_dir))

    with pytest.raises(CheckpointError) as info:
        train(config.replace(**change))
    message = _one_sentence(info.value)
    assert field in message and str(change[field]) in message

    assert _snapshot(Path(config.run_dir)) == before, "the failed resume changed the run folder"
    model = _model_from_run(Path(config.run_dir))
    state = load_checkpoint(latest_checkpoint(config.run_dir), model)
    assert state["step"] == 4


def _bytes_and_mtimes(run_dir: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every entry of a run folder, by relative path: a file's bytes (None for a folder) and its mtime in ns."""
    return {str(p.relative_to(run_dir)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted([run_dir, *run_dir.rglob("*")])}


@pytest.mark.parametrize("change, named", [
    ({"lr": 0.01}, ["lr", "0.003", "0.01"]),
    ({"train_tokens": TOKENS_PER_STEP * 6}, ["train_tokens", "512", "768"]),
    ({"corpus": "english"}, ["corpus", "'english'"]),
    ({"resume": False}, ["already holds a run", "resume=True"]),
], ids=["lr", "train_tokens", "corpus", "resume-off"])
def test_rerun_into_a_finished_run_with_another_config_fails_at_once_and_changes_nothing(
        tiny_config, monkeypatch, tmp_path, change, named):
    """The run-folder decision comes before the tokenizer and the dataset: no cache is built, and the
    error names the folder and the first differing field (no wall-clock bound: the empty cache shows it)."""
    config = tiny_config(train_tokens=TOKENS_PER_STEP * 4, log_every=2, eval_every=2)
    train(config, command="muonlab train ...")
    run_dir = Path(config.run_dir)
    before = _bytes_and_mtimes(run_dir)
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    monkeypatch.setenv("MUONLAB_CACHE", str(empty_cache))

    with pytest.raises(RunFolderError) as info:
        train(config.replace(**change))

    message = _one_sentence(info.value)
    assert str(run_dir) in message
    for word in named:
        assert word in message
    assert list(empty_cache.iterdir()) == [], "the re-run built a tokenizer or dataset before failing"
    assert _bytes_and_mtimes(run_dir) == before, "the failed re-run changed the run folder"


def test_rerun_may_change_how_the_run_executes(tiny_config):
    """Threads, progress bar and checkpoint keeping are not part of what is trained: a finished run
    re-run with other values of them resumes (and trains nothing more)."""
    config = tiny_config(train_tokens=TOKENS_PER_STEP * 4, log_every=2, eval_every=2)
    first = train(config)
    rows = read_metrics(config.run_dir)

    again = train(config.replace(threads=1, progress=True, keep_checkpoints=3, checkpoint_every=2))

    assert again.steps == first.steps and again.final_val_loss == first.final_val_loss
    assert read_metrics(config.run_dir) == rows


def _nan_loss_at_training_call(monkeypatch, k: int) -> None:
    """The k-th training forward (= step k with grad_accum 1) returns a NaN loss."""
    real_forward = Transformer.forward
    calls = [0]

    def forward(self, input_ids, targets=None):
        out = real_forward(self, input_ids, targets)
        if self.training and targets is not None:
            calls[0] += 1
            if calls[0] == k:
                out = out * float("nan")
        return out

    monkeypatch.setattr(Transformer, "forward", forward)


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        tiny_config, monkeypatch, grad_clip):
    config = tiny_config(checkpoint_every=3, keep_checkpoints=2, grad_clip=grad_clip)
    _nan_loss_at_training_call(monkeypatch, 7)

    with pytest.raises(NonFiniteLossError) as info:
        train(config)
    message = _one_sentence(info.value)
    assert "step 7" in message  # not the next logging step (10)
    assert str(Path(config.run_dir) / "checkpoints") in message

    ckpt = latest_checkpoint(config.run_dir)
    assert ckpt.name == f"step_{6:08d}"
    model = _model_from_run(Path(config.run_dir))
    assert load_checkpoint(ckpt, model)["step"] == 6
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    rows = read_metrics(config.run_dir)
    assert max(r["step"] for r in rows) < 7
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))


def test_non_finite_loss_error_comes_without_a_torch_warning(tiny_config, monkeypatch):
    """The stop is one clear sentence: no stray 'requires_grad ... to a scalar' UserWarning before it."""
    _nan_loss_at_training_call(monkeypatch, 3)
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch otherwise warns once per process: the test would depend on order
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(NonFiniteLossError):
                train(tiny_config())
    finally:
        torch.set_warn_always(warn_always)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


def test_disk_full_while_saving_names_the_path_and_keeps_the_previous_checkpoint(tiny_config, monkeypatch):
    config = tiny_config(checkpoint_every=4, keep_checkpoints=2)
    ckpt_root = Path(config.run_dir) / "checkpoints"
    real_save = torch.save
    calls = [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the optimizer state of the second checkpoint (step 8)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as info:
        train(config)
    monkeypatch.setattr(torch, "save", real_save)

    err = info.value
    assert err.errno == errno.ENOSPC
    message = _one_sentence(err)
    assert str(ckpt_root) in message and "step_00000008" in message and "No space left" in message
    assert f"step_{4:08d}" in message  # says which checkpoint is kept
    assert latest_checkpoint(config.run_dir).name == f"step_{4:08d}"
    assert sorted(p.name for p in ckpt_root.iterdir()) == ["latest", f"step_{4:08d}"], "partial files left"
    model = _model_from_run(Path(config.run_dir))
    assert load_checkpoint(latest_checkpoint(config.run_dir), model)["step"] == 4

    # With space again, the run resumes from step 4 and finishes without duplicate rows.
    summary = train(config)
    assert summary.steps == TINY_STEPS
    steps = _steps(config.run_dir)
    assert len(steps) == len(set(steps)) and steps[-1] == TINY_STEPS
