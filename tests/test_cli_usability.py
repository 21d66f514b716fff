"""What a person meets at the command line: grouped help with choices and on/off flags, the plan line
before the first step (with a wall time from this machine's calibration), ``presets`` counting what
``train`` builds, ``sft --epochs``, the warmup notice, silent broken pipes, no folder left by a failed
run, one copy of an error under torchrun, and ``muonlab.load_run``."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import muonlab
from muonlab.cli import build_parser, main
from muonlab.data import prepare_dataset
from muonlab.experiments.calibration import CACHE_FILE, probe_key
from muonlab.experiments.provenance import machine_key
from muonlab.models import Transformer
from muonlab.rundir import read_metrics
from muonlab.train.config import TrainConfig
from muonlab.train.loop import evaluate, train
from muonlab.train_command import FLAG_GROUPS, fold_bool_values

from conftest import tiny_config_dict

FOUR_STEPS = dict(train_tokens=32 * 4 * 4, log_every=2, eval_every=2, telemetry_every=2)


@pytest.fixture(autouse=True)
def _isolated(single_thread, muonlab_cache, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def _flags(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        out += [f"--{key}" if value is True else f"--no-{key}"] if isinstance(value, bool) else [f"--{key}", str(value)]
    return out


def _train_argv(tiny_corpus: Path, run_dir: Path, **overrides) -> list[str]:
    return ["train", *_flags(tiny_config_dict(tiny_corpus, run_dir, **{**FOUR_STEPS, **overrides}))]


def test_every_field_is_in_exactly_one_help_group():
    listed = [name for names in FLAG_GROUPS.values() for name in names]
    assert {f.name: listed.count(f.name) for f in dataclasses.fields(TrainConfig)} == {
        f.name: 1 for f in dataclasses.fields(TrainConfig)}


def test_help_groups_fields_lists_choices_and_shows_on_off_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    sections = re.findall(r"^(\S[^\n]*):$", text, flags=re.M)
    assert [s for s in sections if s in FLAG_GROUPS] == list(FLAG_GROUPS)
    assert "--schedule {cosine,wsd,linear,constant}" in text
    assert "--parallel {none,ddp,zero1,fsdp,mesh}" in text and "--device {auto,cpu,cuda}" in text
    assert "--compile, --no-compile" in text and "--progress, --no-progress" in text
    help_of = " ".join(text.split())
    assert "over all processes (global" in help_of and "per data shard" in help_of


@pytest.mark.parametrize("argv, compile_", [(["--compile"], True), (["--no-compile"], False),
                                             (["--compile", "false"], False), (["--compile=yes"], True), ([], None)])
def test_on_off_flags_take_no_value_and_the_old_form_still_parses(argv, compile_):
    args = build_parser().parse_args(fold_bool_values(["train", *argv, "--lr", "0.1"]))
    assert args.compile is compile_ and args.lr == "0.1"


def test_the_plan_line_comes_before_the_first_step_and_matches_the_run(tiny_corpus, tmp_path, capsys):
    assert main(_train_argv(tiny_corpus, tmp_path / "run")) == 0
    out = capsys.readouterr().out.splitlines()
    plan = next(i for i, line in enumerate(out) if line.startswith("muonlab train: plan: "))
    assert plan < next(i for i, line in enumerate(out) if line.startswith("finished "))
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert f"{record['num_params'] / 1e6:.2f}M parameters" in out[plan]
    assert f"{record['total_steps']} steps of {record['tokens_per_step']} tokens" in out[plan]
    assert "no wall-time estimate yet" in out[plan]  # this test's cache holds no calibration


def test_the_plan_line_estimates_the_wall_time_from_the_calibration(tiny_corpus, tmp_path, muonlab_cache, capsys):
    values = tiny_config_dict(tiny_corpus, tmp_path / "run", **FOUR_STEPS)
    measured = dict(startup_s=1000.0, build_s=10.0, first_step_s=20.0, step_s=30.0, telemetry_step_s=40.0,
                    eval_s=50.0, checkpoint_s=60.0, cpu_share=1.0)
    cache = {machine_key("cpu"): {probe_key(TrainConfig(**values), 1): measured}}
    (muonlab_cache / CACHE_FILE).write_text(json.dumps(cache))
    try:
        assert main(_train_argv(tiny_corpus, tmp_path / "run")) == 0
    finally:
        (muonlab_cache / CACHE_FILE).unlink()
    # 4 steps: set-up 10 + first step 20 + 3 later steps x 30 + 3 telemetry steps (1, 2, 4) x (40 - 30)
    # + 2 evaluations (2, 4) x 50 + 1 checkpoint (the end) x 60 = 310 s; no start-up: it is this process
    assert "estimated wall time 5 min 10 s on this machine" in capsys.readouterr().out


def test_presets_counts_the_model_train_builds(tiny_corpus, tmp_path, capsys):
    for tied in (False, True):
        run_dir = tmp_path / f"tied-{tied}"
        assert main(_train_argv(tiny_corpus, run_dir, tie_embeddings=tied)) == 0
        built = json.loads((run_dir / "config.json").read_text())["num_params"]
        capsys.readouterr()
        assert main(["presets", "--vocab-size", "257", "--seq-len", "32", *(["--tie_embeddings"] if tied else [])]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny "))
        assert row.split()[5] == f"{built / 1e3:.0f}K"
    assert built < json.loads((tmp_path / "tied-False" / "config.json").read_text())["num_params"]


def test_a_warmup_longer_than_the_run_is_stated(tiny_corpus, tmp_path, capsys):
    assert main(_train_argv(tiny_corpus, tmp_path / "run", warmup_steps=50)) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warmup_steps=50" in line]
    assert err == [err[0]] and err[0].startswith("muonlab train: warning: ") and "4-step schedule" in err[0]
    assert main(_train_argv(tiny_corpus, tmp_path / "short", warmup_steps=2)) == 0
    assert "warmup_steps" not in capsys.readouterr().err  # negative control: a warmup inside the run says nothing


def test_a_run_that_fails_leaves_no_folder_and_keeps_an_existing_one(tiny_corpus, tmp_path, capsys):
    missing = str(tmp_path / "no-such-corpus.txt")
    assert main(_train_argv(tiny_corpus, tmp_path / "new" / "deeper" / "run", corpus=missing)) == 2
    assert "no-such-corpus.txt" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    assert main(_train_argv(tiny_corpus, tmp_path / "mine", corpus=missing)) == 2
    assert (tmp_path / "mine").is_dir()  # it was there before: it stays


def _sft_file(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}", "response": f"{i}"}) + "\n"
                            for i in range(rows)))
    return path


def test_sft_trains_one_pass_by_default_and_epochs_passes_when_asked(tiny_corpus, tmp_path, capsys):
    assert main(_train_argv(tiny_corpus, tmp_path / "base", seq_len=64)) == 0
    sft = ["sft", "--init_from", str(tmp_path / "base"), "--corpus", str(_sft_file(tmp_path, 200)), "--seq_len", "64",
           "--batch_size", "4", "--eval_every", "1000", "--eval_batches", "1", "--log_every", "1000",
           "--telemetry_every", "0", "--device", "cpu", "--dtype", "fp32", "--no-progress"]
    for epochs, run in ((None, "one"), ("6", "six")):
        capsys.readouterr()
        assert main([*sft, "--run_dir", str(tmp_path / run), *(["--epochs", epochs] if epochs else [])]) == 0
        record = json.loads((tmp_path / run / "config.json").read_text())
        passes = record["train_tokens"] / record["train_split_tokens"]
        assert passes == pytest.approx(float(epochs or 1), abs=1e-6)
        warned = "may memorise" in capsys.readouterr().out
        assert warned == (epochs == "6")
    assert main([*sft, "--run_dir", str(tmp_path / "both"), "--epochs", "2", "--train_tokens", "4096"]) == 2
    assert "--epochs or --train_tokens" in capsys.readouterr().err and not (tmp_path / "both").exists()


def test_a_broken_pipe_is_silent():
    env = {**os.environ, "MUONLAB_ALLOCATOR": "default"}
    read, write = os.pipe()
    os.close(read)  # the reader has gone before muonlab writes a byte: its first write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "muonlab.cli", "presets"], stdout=write, stderr=subprocess.PIPE,
                              env=env, text=True, timeout=300)
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == 141


@pytest.mark.parametrize("values, lines", [(["-1", "-1"], 1), (["-1", "-2"], 2)])
def test_under_torchrun_an_error_prints_once_unless_it_differs_by_rank(values, lines, tmp_path):
    """Two processes as torchrun starts them (same parent, same run id) fail on their config; a
    message that differs by rank (negative control) prints on each."""
    env = {**os.environ, "MUONLAB_ALLOCATOR": "default", "WORLD_SIZE": "2",
           "TORCHELASTIC_RUN_ID": f"test-{os.getpid()}-{tmp_path.name}-{values[1]}"}
    procs = [subprocess.Popen([sys.executable, "-m", "muonlab.cli", "train", "--lr", lr, "--run_dir", str(tmp_path)],
                              env={**env, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
             for rank, lr in enumerate(values)]
    errors = [line for proc in procs for line in proc.communicate(timeout=300)[1].splitlines() if "error" in line]
    assert [proc.returncode for proc in procs] == [2, 2]
    assert len(errors) == lines and all(e.startswith("muonlab train: error: lr must be >= 0") for e in errors)


def test_under_torchrun_a_restarted_attempt_prints_its_error_again(monkeypatch, tmp_path, capsys):
    """torchrun restarts failed workers under the same run id and launcher: the second attempt's error is news."""
    from muonlab.console import say_once

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", f"test-{os.getpid()}-{tmp_path.name}")
    for attempt in ("0", "0", "1", "1"):  # two ranks per attempt
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", attempt)
        say_once("muonlab train: error: the same failure")
    assert capsys.readouterr().err.splitlines() == ["muonlab train: error: the same failure"] * 2


def test_under_torchrun_a_warning_prints_once_unless_it_differs_by_rank(monkeypatch, tmp_path, capsys):
    """Warnings take the errors' path: the ranks of one launch (same launcher, same run id; simulated in
    this process) that warn the same text show it once, muonlab's as ``muonlab CMD: warning:`` lines and
    others' (torch's) as Python prints them; texts that differ by rank (negative control) show on each."""
    import warnings

    from muonlab import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", f"test-{os.getpid()}-{tmp_path.name}")
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # put back after the test
    cli._show_warnings("train")
    ours, torch_file = str(Path(muonlab.__file__)), str(Path(torch.__file__))
    for text, filename in [("same on every rank", ours), ("same on every rank", ours), ("rank 0's own", ours),
                           ("rank 1's own", ours), ("torch's", torch_file), ("torch's", torch_file)]:
        warnings.showwarning(UserWarning(text), UserWarning, filename, 7, None, "")  # no source line
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == ["muonlab train: warning: same on every rank", "muonlab train: warning: rank 0's own",
                       "muonlab train: warning: rank 1's own"]
    assert len(err) == 4 and err[3].endswith("UserWarning: torch's") and torch_file in err[3]


def test_load_run_gives_the_trained_model_and_its_tokenizer(tiny_config, tmp_path):
    config = tiny_config("run", tokenizer="bpe", vocab_size=300, eval_batches=2)
    train(config)
    run = muonlab.load_run(config.run_dir)
    recorded = [row["val_loss"] for row in read_metrics(config.run_dir) if "val_loss" in row][-1]
    data = prepare_dataset(config.corpus, tokenizer=config.tokenizer, vocab_size=config.vocab_size,
                           val_fraction=config.val_fraction)
    with torch.no_grad():
        loss = evaluate(run.model, data, config, torch.device("cpu"))
    assert loss == pytest.approx(recorded, abs=1e-5)
    fresh = Transformer(run.model.config).eval()  # negative control: untrained weights
    with torch.no_grad():
        assert evaluate(fresh, data, config, torch.device("cpu")) > recorded + 0.5
    assert run.tokenizer.id == data.tokenizer.id and not run.model.training
    assert run.record["total_steps"] == config.total_steps()
    with pytest.raises(ValueError, match="no config.json"):
        muonlab.load_run(tmp_path)
