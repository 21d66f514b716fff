"""Fault injection, run folders: one writer at a time, only folders muonlab owns, an honest record,
unfinished runs named, and the command line's bad values and OS errors as one sentence each.

Each case asserts the sentence the user reads, the exit status, and that no file that existed
before changed (checksums of the folder before and after).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from fault_cases import checksums, cli, copy_run, train_cli, values

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def corpus(tiny_corpus, tmp_path_factory) -> Path:
    """This module's copy of the tiny corpus (one case edits it in place, and restores it)."""
    return Path(shutil.copytree(tiny_corpus, tmp_path_factory.mktemp("faults-corpus") / "corpus"))


@pytest.fixture(scope="module")
def finished(corpus, muonlab_cache_dir, tmp_path_factory) -> Path:
    """One finished 8-step run (checkpoints after steps 4 and 8)."""
    from muonlab.train.config import TrainConfig
    from muonlab.train.loop import train

    run_dir = tmp_path_factory.mktemp("faults") / "finished"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
        train(TrainConfig(**values(corpus, run_dir)))
    return run_dir


def _unfinished(finished: Path, target: Path) -> Path:
    """A copy of ``finished`` stopped after step 4: its step-8 checkpoint and finished record gone."""
    run_dir = copy_run(finished, target)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000008")
    (run_dir / "checkpoints" / "latest").unlink()
    (run_dir / "finished.json").unlink()
    return run_dir


# ------------------------------------------------------------------------------ one writer, one owner


def test_a_second_writer_stops_at_once_naming_the_first(finished, corpus, muonlab_cache, tmp_path, capsys):
    from muonlab.rundir.ownership import folder_lock

    run_dir = copy_run(finished, tmp_path / "run")
    with folder_lock(run_dir, "muonlab train --lr 0.003"):
        before = checksums(run_dir)
        code, err = train_cli(capsys, values(corpus, run_dir))
        assert checksums(run_dir) == before
    assert code == 2
    assert f"{run_dir} is being written by process " in err and "(muonlab train --lr 0.003)" in err
    assert "wait for it to finish or stop it" in err


def test_a_second_report_into_the_same_folder_stops_at_once_naming_the_first(finished, tmp_path, capsys):
    from muonlab.rundir.ownership import claim_folder, folder_lock

    run_dir = copy_run(finished, tmp_path / "run")
    out = claim_folder(tmp_path / "report", "report")
    with folder_lock(out, "muonlab report runs/a --out report"):
        before = checksums(tmp_path)
        code, err = cli(capsys, "report", str(run_dir), "--out", str(out))
        assert checksums(tmp_path) == before
    assert code == 2
    assert f"{out} is being written by process " in err and "(muonlab report runs/a --out report)" in err


def test_a_rank_that_checks_the_folder_while_rank_0_claims_it_goes_on(corpus, tmp_path, monkeypatch):
    """Under torchrun every rank checks the run folder while rank 0 claims it; a rank that looks in the
    instant rank 0's marker exists only under its temporary name must not take that file for a stranger's
    (it did: that rank stopped, and torchrun restarted or failed the whole launch)."""
    from muonlab.rundir.ownership import MARKER_FILE
    from muonlab.train.config import TrainConfig
    from muonlab.train.run_folder import check_run_folder, hold_run_folder

    monkeypatch.delenv("RANK", raising=False)  # this process is rank 0, the one that claims
    config = TrainConfig(**values(corpus, tmp_path / "run"))
    replace, seen = os.replace, []

    def another_rank_looks_first(src, dst):
        if Path(dst).name == MARKER_FILE:  # the marker is written but not yet renamed into place
            seen.append(sorted(os.listdir(Path(dst).parent)))
            check_run_folder(config)  # what rank 1 runs before it joins the process group
        replace(src, dst)

    monkeypatch.setattr(os, "replace", another_rank_looks_first)
    with hold_run_folder(config, "muonlab train") as run_dir:
        assert (run_dir / MARKER_FILE).is_file()
    assert seen == [[f".{MARKER_FILE}.tmp-{os.getpid()}"]]


def test_a_folder_muonlab_did_not_write_is_refused(corpus, muonlab_cache, tmp_path, capsys):
    run_dir = tmp_path / "theirs"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"learning_rate": 0.1}\n')
    (run_dir / "notes.txt").write_text("my notes\n")
    before = checksums(run_dir)

    code, err = train_cli(capsys, values(corpus, run_dir))

    assert code == 2
    assert (f"run_dir {run_dir} holds files muonlab did not write (config.json, notes.txt) and no muonlab marker "
            "(.muonlab); choose a new or empty folder (nothing was changed)") in err
    assert checksums(run_dir) == before


@pytest.mark.parametrize("run_dir", ["", "   "])
def test_an_empty_run_dir_is_refused(run_dir, corpus, muonlab_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = train_cli(capsys, {**values(corpus, Path("unused")), "run_dir": run_dir})
    assert code == 2
    assert f"run_dir={run_dir!r} names no folder" in err
    assert checksums(tmp_path) == {}


def test_a_run_dir_that_is_a_file_is_refused(corpus, muonlab_cache, tmp_path, capsys):
    path = tmp_path / "a-file"
    path.write_text("data\n")
    code, err = train_cli(capsys, values(corpus, path))
    assert code == 2
    assert f"run_dir {path} is a file, not a folder" in err
    assert path.read_text() == "data\n"


def test_an_unwritable_run_dir_is_one_sentence(corpus, muonlab_cache, tmp_path, capsys, monkeypatch):
    """A read-only file system (injected: the tests run as root, whom permissions do not stop)."""
    from muonlab.rundir import ownership

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "run"))

    monkeypatch.setattr(ownership, "_write_marker", read_only)
    code, err = train_cli(capsys, values(corpus, tmp_path / "run"))
    assert code == 2
    assert (f"cannot write run_dir {tmp_path / 'run'}: Read-only file system (the file system is read-only; choose "
            "a folder on a writable one)") in err
    assert "[Errno" not in err


def test_a_full_disk_while_logging_is_one_sentence_naming_the_file(finished, corpus, muonlab_cache, tmp_path, capsys,
                                                                    monkeypatch):
    """ENOSPC surfaces on a write's flush, whose error names no file (injected: a full disk is not made here)."""
    from muonlab.rundir import metrics

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            return self.handle.write(text)

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.handle.close()

    monkeypatch.setattr(metrics, "open", lambda *args, **kwargs: FullDisk(open(*args, **kwargs)), raising=False)
    run_dir = _unfinished(finished, tmp_path / "run")
    before = checksums(run_dir / "checkpoints")

    code, err = train_cli(capsys, values(corpus, run_dir))

    assert code == 2
    assert (f"cannot write {run_dir / 'metrics.jsonl'}: No space left on device (free some space or choose a "
            "folder on another disk)") in err
    assert "[Errno" not in err and "Traceback" not in err
    assert {k: v for k, v in checksums(run_dir / "checkpoints").items() if k in before} == before


def test_report_writes_a_folder_of_its_own_and_never_over_a_study_report(finished, tmp_path, capsys):
    study = tmp_path / "study"
    run_dir = copy_run(finished, study / "run")
    (study / "report.md").write_text("# the study's own report\n")
    before = checksums(study)

    code, err = cli(capsys, "report", str(run_dir))

    assert code == 0, err
    after = checksums(study)
    assert {k: v for k, v in after.items() if k in before} == before
    assert (study / "report" / "report.md").is_file() and (study / "report" / ".muonlab").is_file()

    code, err = cli(capsys, "report", str(run_dir), "--out", str(study))
    assert code == 2
    assert f"--out {study} holds files muonlab did not write" in err
    assert {k: v for k, v in checksums(study).items() if k in after} == after


# ------------------------------------------------------------------------------ an honest record


def _edit_config_lr(run_dir: Path, lr: float) -> None:
    record = json.loads((run_dir / "config.json").read_text())
    record["lr"] = lr
    (run_dir / "config.json").write_text(json.dumps(record))


@pytest.mark.parametrize("edit", ["hand-edited", "deleted"])
def test_a_config_json_edited_or_deleted_cannot_change_a_resumed_run(edit, finished, corpus, muonlab_cache,
                                                                      tmp_path, capsys):
    run_dir = _unfinished(finished, tmp_path / "run")
    if edit == "deleted":
        (run_dir / "config.json").unlink()
    else:
        _edit_config_lr(run_dir, 0.01)
    before = checksums(run_dir)

    code, err = train_cli(capsys, values(corpus, run_dir, lr=0.01))

    assert code == 2
    assert (f"checkpoint {run_dir / 'checkpoints' / 'step_00000004'} was saved with another config (lr is 0.003 "
            "there but 0.01 now)") in err
    assert {k: v for k, v in checksums(run_dir).items() if k in before} == before


def test_a_corpus_edited_in_place_is_noticed_on_resume(finished, corpus, muonlab_cache, tmp_path, capsys):
    run_dir = _unfinished(finished, tmp_path / "run")
    doc = sorted(corpus.iterdir())[0]
    text = doc.read_text()
    before = checksums(run_dir)
    doc.write_text(text.replace("the", "teh", 1))  # same length, other content
    try:
        code, err = train_cli(capsys, values(corpus, run_dir))
    finally:
        doc.write_text(text)

    assert code == 2
    assert f"the corpus {str(corpus)!r} changed since checkpoint" in err and "allow_new_data=true" in err
    assert {k: v for k, v in checksums(run_dir).items() if k in before} == before


# ------------------------------------------------------------------------------ unfinished runs


def test_report_and_analyze_refuse_an_unfinished_run_naming_its_step(finished, tmp_path, capsys):
    run_dir = _unfinished(finished, tmp_path / "run")
    before = checksums(tmp_path)
    for argv in (["report", str(run_dir)], ["analyze", "spectra", str(run_dir), str(finished)]):
        code, err = cli(capsys, *argv)
        assert code == 2
        assert f"run {run_dir} is unfinished: it stopped at step 4 of 8" in err and "--allow-unfinished" in err
        assert checksums(tmp_path) == before

    code, err = cli(capsys, "report", str(run_dir), "--allow-unfinished")
    assert code == 0, err
    assert f"warning: run {run_dir} is unfinished: it stopped at step 4 of 8" in err


def test_export_refuses_an_unfinished_run_naming_its_step_and_exports_it_when_allowed(finished, muonlab_cache,
                                                                                       tmp_path, capsys):
    run_dir = _unfinished(finished, tmp_path / "run")
    before = checksums(run_dir)

    code, err = cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "hf"))

    assert code == 2
    assert (f"run {run_dir} is unfinished: it stopped at step 4 of 8; finish it (muonlab train with its config "
            "resumes it), or pass --allow-unfinished to use it as it is (nothing was written)") in err
    assert not (tmp_path / "hf").exists() and checksums(run_dir) == before

    pytest.importorskip("transformers")
    code, err = cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "hf"), "--allow-unfinished")
    assert code == 0, err
    assert err.splitlines()[0] == (f"muonlab export: warning: run {run_dir} is unfinished: it stopped at step 4 of "
                                   "8; exporting that step's checkpoint as it is")
    assert err.count("unfinished") == 1  # said once, by export (not again as an init_from warning)
    assert (tmp_path / "hf" / "model.safetensors").is_file() and checksums(run_dir) == before


def test_export_stops_at_once_while_another_process_writes_the_run(finished, tmp_path, capsys):
    from muonlab.rundir.ownership import folder_lock

    run_dir = copy_run(finished, tmp_path / "run")
    with folder_lock(run_dir, "muonlab train --lr 0.003"):
        before = checksums(run_dir)
        code, err = cli(capsys, "export", str(run_dir), "--out", str(tmp_path / "hf"))
        assert checksums(run_dir) == before
    assert code == 2
    assert f"{run_dir} is being written by process " in err and "(muonlab train --lr 0.003)" in err
    assert not (tmp_path / "hf").exists()


def test_export_refuses_a_folder_that_is_not_a_run_folder(finished, tmp_path, capsys):
    report = copy_run(finished, tmp_path / "a-report")
    (report / ".muonlab").write_text('{"muonlab": "report", "format": 1}\n')
    before = checksums(report)

    code, err = cli(capsys, "export", str(report), "--out", str(tmp_path / "hf"))

    assert code == 2
    assert f"{report} is not a muonlab run folder (it has no .muonlab marker saying so)" in err
    assert not (tmp_path / "hf").exists() and checksums(report) == before


def test_init_from_an_unfinished_run_warns_naming_its_step(finished, muonlab_cache, tmp_path):
    from muonlab.train.init_source import read_init_source

    run_dir = _unfinished(finished, tmp_path / "run")
    before = checksums(run_dir)
    with pytest.warns(UserWarning, match=rf"init_from: run {run_dir} is unfinished: it stopped at step 4 of 8; "
                                         "starting from its checkpoint step_00000004"):
        read_init_source(run_dir)
    assert checksums(run_dir) == before


def test_a_study_can_tell_a_run_with_a_cut_metrics_log_is_unfinished(finished, tmp_path):
    from muonlab.rundir.finished import is_finished, unfinished_reason

    assert is_finished(finished)
    run_dir = _unfinished(finished, tmp_path / "run")
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[: metrics.stat().st_size // 2])
    assert not is_finished(run_dir)
    assert unfinished_reason(run_dir) == f"run {run_dir} is unfinished: it stopped at step 4 of 8"


# ------------------------------------------------------------------------------ the command line's values


BAD_VALUES = {
    "batch_size 1.5e0": (["train", "--batch_size", "1.5e0"], "batch_size='1.5e0' is not a valid int"),
    "threads 1000": (["train", "--threads", "1000"], "threads=1000 exceeds the "),
    "parallel ddp without torchrun": (["train", "--parallel", "ddp"],
                                      "parallel='ddp' needs several processes but this is one"),
    "workers -3": (["experiment", "demo", "--workers", "-3"], "--workers -3 is negative"),
    "demo seeds 0": (["demo", "--seeds", "0"], "--seeds 0 trains no run"),
    "set seeds= (empty)": (["experiment", "demo", "--set", "seeds="], "parameter seeds is empty; give at least one "
                                                                       "value, e.g. --set seeds=0,1,2"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_command_line_values_are_one_sentence(case, corpus, muonlab_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, phrase = BAD_VALUES[case]
    if argv[0] == "train":
        argv = [*argv, "--corpus", str(corpus), "--tokenizer", "byte", "--model", "tiny", "--run_dir",
                str(tmp_path / "run"), "--device", "cpu", "--progress", "false"]
    code, err = cli(capsys, *argv)
    assert code == 2
    assert phrase in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not list(tmp_path.rglob(".study.lock"))
