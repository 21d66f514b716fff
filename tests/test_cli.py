"""The ``muonlab`` command line, and the demo's plumbing at tiny scale.

Commands run in-process through ``muonlab.cli.main(argv)`` (an explicit argv skips the allocator
re-exec); one real subprocess checks that re-exec. Training runs are the tiny ones of conftest.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from muonlab.allocator import allocator_environment
from muonlab.cli import build_parser, main
from muonlab.experiments import command
from muonlab.experiments.studies import demo
from muonlab.models import list_presets
from muonlab.rundir import read_metrics
from muonlab.train import loop
from muonlab.train.config import TrainConfig
from muonlab.train_command import fold_bool_values

from conftest import tiny_config_dict

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


@pytest.fixture(autouse=True)
def _isolated(single_thread, muonlab_cache, monkeypatch, tmp_path):
    """One torch thread, a private data cache, and a scratch working directory (runs/ goes there)."""
    monkeypatch.chdir(tmp_path)


def _tiny_file_values(tiny_corpus: Path, run_dir: Path, **overrides) -> dict:
    return tiny_config_dict(tiny_corpus, run_dir, train_tokens=32 * 4 * 4, log_every=2, eval_every=2,
                            telemetry_every=2, **overrides)


def _write_toml(path: Path, values: dict) -> None:
    def literal(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    path.write_text("".join(f"{k} = {literal(v)}\n" for k, v in values.items()))


def _one_line_error(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"muonlab {command}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# muonlab train


def test_train_help_mentions_every_config_field(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in text, f.name
        assert " ".join(f.metadata["help"].split()) in text, f"help text of {f.name}"


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_train_merges_config_file_then_flags(tiny_corpus, tmp_path, capsys, suffix):
    run_dir = tmp_path / "run"
    file_values = _tiny_file_values(tiny_corpus, run_dir, lr=0.5, weight_decay=0.05, optimizer="adamw")
    config_file = tmp_path / f"config{suffix}"
    if suffix == ".json":
        config_file.write_text(json.dumps(file_values))
    else:
        _write_toml(config_file, file_values)

    rc = main(["train", "--config", str(config_file), "--lr", "0.01", "--optimizer", "muon"])

    assert rc == 0
    out = capsys.readouterr().out
    assert "finished 4 steps" in out and str(run_dir) in out
    record = json.loads((run_dir / "config.json").read_text())
    assert record["lr"] == 0.01 and record["optimizer"] == "muon"  # flags win over the file
    assert record["weight_decay"] == 0.05 and record["seq_len"] == 32  # the file wins over defaults
    assert record["schedule"] == TrainConfig().schedule  # defaults fill the rest
    assert record["total_steps"] == 4
    assert TrainConfig.from_dict({k: record[k] for k in FIELDS}) == TrainConfig.from_dict(
        {**file_values, "lr": 0.01, "optimizer": "muon"})


def test_train_records_the_command_it_was_given(tiny_corpus, tmp_path):
    """config.json's "command" must reproduce the run: it is the argv given to main(), not sys.argv."""
    run_dir = tmp_path / "run"
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(_tiny_file_values(tiny_corpus, run_dir)))
    argv = ["train", "--config", str(config_file), "--lr", "0.01"]

    assert main(argv) == 0

    command = json.loads((run_dir / "config.json").read_text())["command"]
    assert shlex.split(command) == ["muonlab", *argv]


def test_train_config_from_a_run_folder_trains_a_new_run_with_its_settings(tiny_corpus, tmp_path, capsys):
    """A finished run's config.json is a valid --config: its settings, not its recorded counts, and never its folder."""
    first, second = tmp_path / "first", tmp_path / "second"
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(_tiny_file_values(tiny_corpus, first, lr=0.02, weight_decay=0.05)))
    assert main(["train", "--config", str(config_file)]) == 0
    before = (first / "metrics.jsonl").read_bytes()

    assert main(["train", "--config", str(first / "config.json"), "--run_dir", str(second), "--seed", "3"]) == 0

    assert "finished 4 steps" in capsys.readouterr().out
    assert (first / "metrics.jsonl").read_bytes() == before  # the recorded run is not resumed or touched
    old, new = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert new["seed"] == 3 and old["seed"] != 3  # flags still win over the file
    assert {k: new[k] for k in FIELDS if k not in ("run_dir", "seed")} == {
        k: old[k] for k in FIELDS if k not in ("run_dir", "seed")}


def test_train_config_file_with_a_recorded_key_but_no_run_record_is_refused(tiny_corpus, tmp_path, capsys):
    """Only a run folder's own record is filtered: a hand-written file with a non-config key still fails."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**_tiny_file_values(tiny_corpus, tmp_path / "run"), "num_params": 5}))
    assert main(["train", "--config", str(config_file)]) == 2
    assert "num_params" in capsys.readouterr().err


def test_train_unknown_key_in_config_file_exits_2(tmp_path, capsys):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "lrr": 0.01}))

    rc = main(["train", "--config", str(config_file)])

    assert rc == 2
    captured = capsys.readouterr()
    message = _one_line_error(captured.err, "train")
    assert "'lrr'" in message and "'lr'" in message
    assert captured.out == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "object"),
        (json.dumps({"optimizer": "sgd"}), "'muon'"),
        (json.dumps({"lr": None}), "lr"),  # null from a JSON file
        (json.dumps({"seq_len": [32]}), "seq_len"),
    ],
    ids=["syntax", "not-an-object", "bad-choice", "null-value", "list-value"],
)
def test_train_malformed_config_file_exits_2(tmp_path, capsys, text, expected):
    config_file = tmp_path / "config.json"
    config_file.write_text(text)
    rc = main(["train", "--config", str(config_file)])
    assert rc == 2
    assert expected in _one_line_error(capsys.readouterr().err, "train")


def test_train_missing_config_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["train", "--config", str(missing)]) == 2
    assert str(missing) in _one_line_error(capsys.readouterr().err, "train")


@pytest.mark.parametrize("argv", [["--lrr", "1"], ["--optimizer", "sgd"]], ids=["unknown-flag", "bad-choice"])
def test_train_bad_flag_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err or "sgd" in err


def test_train_bad_flag_value_exits_2(capsys):
    assert main(["train", "--lr", "fast"]) == 2
    assert "'fast'" in _one_line_error(capsys.readouterr().err, "train")


def test_train_missing_corpus_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    rc = main(["train", "--corpus", str(missing), "--tokenizer", "byte", "--run_dir", str(tmp_path / "run"),
               "--progress", "false", "--device", "cpu"])
    assert rc == 2
    assert str(missing) in _one_line_error(capsys.readouterr().err, "train")


def test_train_interrupted_exits_130(monkeypatch, tmp_path, capsys):
    def interrupted(config, command=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    assert main(["train", "--run_dir", str(tmp_path / "run")]) == 130
    assert "interrupted" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# muonlab report / presets


@pytest.fixture
def two_runs(tiny_corpus, tmp_path) -> list[Path]:
    runs = []
    for optimizer in ("adamw", "muon"):
        run_dir = tmp_path / "runs" / optimizer
        loop.train(TrainConfig(**_tiny_file_values(tiny_corpus, run_dir, optimizer=optimizer)))
        runs.append(run_dir)
    return runs


def test_report_writes_report_md(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, two_runs), "--out", str(out), "--title", "tiny check"]) == 0
    report = out / "report.md"
    assert str(report) in capsys.readouterr().out
    text = report.read_text()
    assert text.startswith("# tiny check")
    assert "## Headline" in text and "**adamw**" in text and "**muon**" in text
    assert "muon − adamw" in text


def test_report_defaults_to_a_report_folder_beside_the_first_run(two_runs):
    assert main(["report", *map(str, two_runs)]) == 0
    assert (two_runs[0].parent / "report" / "report.md").is_file()
    assert not (two_runs[0].parent / "report.md").exists()  # never into the folder that holds the runs


def test_report_of_a_folder_that_is_not_a_run_exits_2(two_runs, tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert main(["report", str(two_runs[0]), str(not_a_run), "--out", str(tmp_path / "r")]) == 2
    assert str(not_a_run) in _one_line_error(capsys.readouterr().err, "report")
    assert not (tmp_path / "r" / "report.md").exists()


def test_presets_lists_every_preset(capsys):
    assert main(["presets", "--vocab-size", "257", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        assert name in out


_SITECUSTOMIZE = textwrap.dedent("""
    import os, sys
    sys.stderr.write("allocator marker: %r\\n" % os.environ.get("MUONLAB_ALLOCATOR"))
    sys.stderr.flush()
""")


def _run_cli_subprocess(tmp_path: Path, env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    """``python -m muonlab.cli presets`` with a sitecustomize that reports MUONLAB_ALLOCATOR at startup."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "MUONLAB_ALLOCATOR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-m", "muonlab.cli", "presets"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_reexecs_once_under_the_fast_allocator(tmp_path):
    proc = _run_cli_subprocess(tmp_path, {"MUONLAB_ALLOCATOR": None})
    assert proc.returncode == 0, proc.stderr
    assert "tiny" in proc.stdout and "demo" in proc.stdout
    markers = [line for line in proc.stderr.splitlines() if line.startswith("allocator marker:")]
    # The first process starts without the marker, re-executes itself once, and the child has it.
    assert len(markers) == 2, proc.stderr
    assert markers[0] == "allocator marker: None"
    expected, _ = allocator_environment({})  # the allocator this machine offers (jemalloc, mimalloc, ...)
    assert markers[1] == f"allocator marker: {expected!r}"


def test_cli_allocator_default_keeps_the_process(tmp_path):
    proc = _run_cli_subprocess(tmp_path, {"MUONLAB_ALLOCATOR": "default"})
    assert proc.returncode == 0, proc.stderr
    markers = [line for line in proc.stderr.splitlines() if line.startswith("allocator marker:")]
    assert markers == ["allocator marker: 'default'"]
    assert "tiny" in proc.stdout


# ---------------------------------------------------------------------------------------------
# muonlab demo


def _demo_planned(out: Path, *sets: str):
    return [p.config for p in command.plan(demo.STUDY, "cpu", out, None, sets).runs]


def test_demo_configs_pair_runs_that_differ_only_in_optimizer_and_seed(tmp_path):
    params = demo.STUDY.presets["cpu"]
    configs = _demo_planned(tmp_path / "demo", "seeds=0,1,2")
    assert sorted((c.optimizer, c.seed) for c in configs) == sorted(
        (o, s) for o in ("adamw", "muon") for s in (0, 1, 2))
    assert len({c.run_dir for c in configs}) == len(configs)
    assert all(Path(c.run_dir).parent == tmp_path / "demo" for c in configs)
    base = configs[0].to_dict()
    for config in configs[1:]:
        differing = {k for k, v in config.to_dict().items() if v != base[k]}
        assert differing <= {"optimizer", "seed", "run_dir"}, differing
    assert all(c.lr == params["lr"] and c.weight_decay == params["weight_decay"] for c in configs)
    assert all(c.train_tokens == params["train_tokens"] and c.d_model == params["d_model"] for c in configs)


def test_demo_command_passes_its_flags_to_the_plan(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(command, "run_study", lambda *args, **kwargs: calls.append((args, kwargs)))
    out = str(tmp_path / "d")
    assert main(["demo", "--out", out, "--seeds", "3", "--tokens", "4096", "--no-progress"]) == 0
    ((study_plan, workers, cmd), kwargs), = calls
    study, preset, params, out_dir = study_plan.study, study_plan.preset, study_plan.params, study_plan.out
    planned = study_plan.runs
    assert study.name == "demo" and preset == "cpu" and out_dir == Path(out)
    assert params["seeds"] == (0, 1, 2) and params["train_tokens"] == 4096 and kwargs["show_progress"] is False
    assert [p.config.train_tokens for p in planned] == [4096] * 6
    assert cmd == shlex.join(["muonlab", "demo", "--out", out, "--seeds", "3", "--tokens", "4096", "--no-progress"])


@pytest.mark.parametrize("workers", [1, 2])
def test_run_demo_at_tiny_scale_writes_the_report(tiny_corpus, muonlab_cache, tmp_path, capsys, workers):
    """The demo on the tiny corpus, in-process (workers=1) and as parallel train processes (2)."""
    out = tmp_path / "demo"
    demo_argv = ["demo", "--out", str(out), "--seeds", "2", "--tokens", str(32 * 4 * 10), "--model", "tiny",
            "--workers", str(workers), "--no-compile", "--no-progress",
            "--set", f"corpus={tiny_corpus}", "--set", "tokenizer=byte", "--set", "d_model=64",
            "--set", "seq_len=32", "--set", "batch_size=4"]
    planned = _demo_planned(out, f"corpus={tiny_corpus}", "tokenizer=byte", "d_model=64", "seq_len=32",
                            "batch_size=4", "seeds=0,1", "model=tiny", f"train_tokens={32 * 4 * 10}", "compile=false")

    assert main(demo_argv) == 0

    report = out / "report.md"
    assert report.is_file()
    stdout = capsys.readouterr().out
    # The headline line gives both means and the paired difference with its interval and verdict.
    found = re.search(r"final validation loss: AdamW ([\d.]+), Muon ([\d.]+); Muon − AdamW paired ([+-][\d.]+) "
                      r"\[([+-][\d.]+), ([+-][\d.]+)\] \((separated|not separated)\)", stdout)
    assert found, stdout
    adamw_loss, muon_loss, gap, low, high = (float(found[i]) for i in range(1, 6))
    assert gap == pytest.approx(muon_loss - adamw_loss, abs=2e-4)  # complete pairs: mean of differences
    assert low < gap < high
    assert found[6] == ("separated" if low > 0 or high < 0 else "not separated")
    text = report.read_text()
    assert "## Headline" in text
    assert "**adamw**: mean final validation loss" in text and "**muon**: mean final validation loss" in text
    assert "over 2 seeds (unpaired)" in text and "muon − adamw, paired per seed:" in text

    # Each run folder records a command that reproduces its (planned) config through the CLI.
    assert len(planned) == 4
    parser = build_parser()
    for config in planned:
        record = json.loads((Path(config.run_dir) / "config.json").read_text())
        argv = shlex.split(record["command"])
        assert argv[:2] == ["muonlab", "train"]
        args = parser.parse_args(fold_bool_values(argv[1:]))  # as main() reads a recorded command
        values = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
        rebuilt = TrainConfig.from_dict(values)
        assert rebuilt.replace(progress=config.progress, threads=config.threads) == config  # speed-only knobs
        assert read_metrics(config.run_dir)[-1]["step"] == 10

    # Re-running the demo skips the finished runs.
    before = {c.run_dir: (Path(c.run_dir) / "metrics.jsonl").read_bytes() for c in planned}
    assert main(demo_argv) == 0
    assert {d: (Path(d) / "metrics.jsonl").read_bytes() for d in before} == before
