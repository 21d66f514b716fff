"""Fault injection, checkpoints: damaged ones are reported and skipped for the newest good one; saving
never publishes a partial or non-finite checkpoint, whatever fails.

The damaged-checkpoint cases copy one finished 8-step run (checkpoints after steps 4 and 8), damage
its step-8 checkpoint and run ``muonlab train`` again: it must name the damaged checkpoint, resume
from step 4 and finish equal, bit for bit, to the uninterrupted run (resuming is exact, so the path
4 → 8 retraced is the one the uninterrupted run took).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fault_cases import checksums, copy_run, train_cli, values
from torchrun_runs import metric_rows

pytestmark = pytest.mark.faults

STEP4, STEP8 = "checkpoints/step_00000004", "checkpoints/step_00000008"


@pytest.fixture(scope="module")
def finished(tiny_corpus, muonlab_cache_dir, tmp_path_factory) -> Path:
    """One uninterrupted run of 8 steps, checkpointed after steps 4 and 8."""
    from muonlab.train.config import TrainConfig
    from muonlab.train.loop import train

    run_dir = tmp_path_factory.mktemp("faults") / "finished"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONLAB_CACHE", str(muonlab_cache_dir))
        train(TrainConfig(**values(tiny_corpus, run_dir)))
    return run_dir


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run_dir / STEP8 / "model.safetensors"))


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256 + 1))


def _nan_with_a_matching_manifest(checkpoint: Path) -> None:
    """NaN in the weights, the manifest rewritten to match: only the finite check can catch it."""
    from muonlab.rundir.checkpoint.manifest import write_manifest

    weights = safetensors.torch.load_file(str(checkpoint / "model.safetensors"))
    weights["embed.weight"][0, 0] = float("nan")
    safetensors.torch.save_file(weights, str(checkpoint / "model.safetensors"))
    write_manifest(checkpoint)


DAMAGES = {
    "bit-flip": (lambda c: _flip_bit(c / "model.safetensors"), "model.safetensors does not match its checksum"),
    "truncated": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt has "),
    "garbage": (lambda c: _garbage(c / "trainer.json"), "trainer.json has "),
    "missing-file": (lambda c: (c / "manifest.json").unlink(), "it has no manifest.json"),
    "nan": (_nan_with_a_matching_manifest, "hold NaN/inf (embed.weight)"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_latest_checkpoint_is_skipped_and_the_run_ends_as_the_uninterrupted_one(
        damage, finished, tiny_corpus, muonlab_cache, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    damage_it, phrase = DAMAGES[damage]
    damage_it(run_dir / STEP8)
    kept = checksums(run_dir / STEP4)

    code, err = train_cli(capsys, values(tiny_corpus, run_dir))

    assert code == 0, err
    assert f"{run_dir / STEP8}" in err and phrase in err and "skipped it" in err
    assert f"resuming from {run_dir / STEP4} (step 4)" in err
    assert checksums(run_dir / STEP4) == kept  # the good checkpoint it resumed from is untouched
    assert metric_rows(run_dir) == metric_rows(finished)
    expected = _weights(finished)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in _weights(run_dir).items())
    resume = json.loads((run_dir / "config.json").read_text())["resumes"][-1]
    assert resume["step"] == 4 and len(resume["skipped"]) == 1 and phrase in resume["skipped"][0]
    assert json.loads((run_dir / "finished.json").read_text())["step"] == 8


def test_when_every_checkpoint_is_damaged_nothing_is_loaded_or_changed(finished, tiny_corpus, muonlab_cache,
                                                                       tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path / "run")
    _flip_bit(run_dir / STEP8 / "model.safetensors")
    _truncate(run_dir / STEP4 / "optimizer.pt")
    before = checksums(run_dir)

    code, err = train_cli(capsys, values(tiny_corpus, run_dir))

    assert code == 2
    assert f"every checkpoint of {run_dir} is damaged" in err and "move the damaged checkpoints aside" in err
    assert checksums(run_dir) == before


def test_latest_may_only_name_a_checkpoint_inside_the_folder(finished, tmp_path):
    from muonlab.rundir.checkpoint import latest_checkpoint

    outside = copy_run(finished, tmp_path / "elsewhere")
    run_dir = copy_run(finished, tmp_path / "run")
    (run_dir / "checkpoints" / "latest").write_text(f"../../elsewhere/{STEP4}\n")
    assert latest_checkpoint(run_dir) == run_dir / STEP8
    (run_dir / "checkpoints" / "latest").write_text(str(outside / STEP4) + "\n")
    assert latest_checkpoint(run_dir) == run_dir / STEP8


# ------------------------------------------------------------------------- saving and the sharded format


def _tiny_model_and_muon():
    from muonlab.models import Transformer, preset
    from muonlab.optim import Muon, param_groups

    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=64, max_seq_len=16))
    optimizer = Muon(param_groups(model), lr=1e-2)
    x = torch.randint(0, 64, (2, 16))
    model(x, x).backward()
    optimizer.step()
    return model, optimizer


def test_a_missing_shard_of_a_sharded_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    from muonlab.rundir.checkpoint import save_checkpoint
    from muonlab.rundir.checkpoint.fallback import load_newest_good

    model, optimizer = _tiny_model_and_muon()
    older = save_checkpoint(tmp_path, 1, model, optimizer, {"tokens": 1}, keep=3, sharded=True)
    newer = save_checkpoint(tmp_path, 2, model, optimizer, {"tokens": 2}, keep=3, sharded=True)
    shard = next((newer / "state").glob("*.distcp"))
    shard.unlink()
    before = checksums(tmp_path)

    found = load_newest_good(tmp_path, *_tiny_model_and_muon())

    assert found.checkpoint == older and found.state["tokens"] == 1
    assert found.skipped == [f"checkpoint {newer} is damaged: state/{shard.name} is missing; skipped it"]
    assert checksums(tmp_path) == before


def _full_disk_torch(obj, f):
    with open(f, "wb") as handle:
        handle.write(b"\0" * 1000)
    raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


def _full_disk_safetensors(model, filename, **kwargs):
    Path(filename).write_bytes(b"\0" * 100)
    raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")


def _full_disk_manifest(folder):
    (folder / "manifest.json").write_text("{")
    raise OSError(errno.ENOSPC, "No space left on device", str(folder / "manifest.json"))


FULL_DISKS = {
    "torch.save raises RuntimeError": ("torch.save", _full_disk_torch, "PytorchStreamWriter failed"),
    "safetensors raises SafetensorError": ("safetensors.torch.save_model", _full_disk_safetensors, "IoError"),
    "the manifest raises ENOSPC": ("muonlab.rundir.checkpoint.store.write_manifest", _full_disk_manifest,
                                   "No space left on device"),
}


@pytest.mark.parametrize("where", list(FULL_DISKS))
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_leaves_no_temp_folder(where, tmp_path,
                                                                                          monkeypatch):
    from muonlab.rundir.checkpoint import latest_checkpoint, save_checkpoint

    model, optimizer = _tiny_model_and_muon()
    first = save_checkpoint(tmp_path, 1, model, optimizer, {"tokens": 1})
    before = checksums(tmp_path)
    target, writer, phrase = FULL_DISKS[where]
    monkeypatch.setattr(target, writer)

    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path, 2, model, optimizer, {"tokens": 2})

    message = str(info.value)
    assert message.startswith("could not write checkpoint ") and phrase in message
    assert message.endswith(f"the previous checkpoint {first} is kept")
    assert checksums(tmp_path) == before  # no temp folder, no step_2, the pointer unchanged
    assert latest_checkpoint(tmp_path) == first


def test_weights_holding_nan_are_never_saved(tmp_path):
    from muonlab.rundir.checkpoint import NonFiniteWeightsError, save_checkpoint

    model, optimizer = _tiny_model_and_muon()
    first = save_checkpoint(tmp_path, 1, model, optimizer, {"tokens": 1})
    before = checksums(tmp_path)
    with torch.no_grad():
        model.embed.weight[3, 3] = float("inf")

    with pytest.raises(NonFiniteWeightsError) as info:
        save_checkpoint(tmp_path, 2, model, optimizer, {"tokens": 2})

    assert str(info.value) == (f"step 2: the weights hold NaN/inf (embed.weight), so they were not saved; the "
                               f"checkpoint {first} is kept")
    assert checksums(tmp_path) == before


def test_huge_but_finite_weights_are_saved(tmp_path):
    """The negative control of the finite check: a norm that overflows is not a NaN in the weights."""
    from muonlab.rundir.checkpoint import save_checkpoint

    model, optimizer = _tiny_model_and_muon()
    with torch.no_grad():
        model.embed.weight[3, 3] = 3e38
    saved = save_checkpoint(tmp_path, 1, model, optimizer, {"tokens": 1})
    assert safetensors.torch.load_file(str(saved / "model.safetensors"))["embed.weight"][3, 3] == 3e38


# ---------------------------------------------------------------------------------- the manifest's format


def _rewrite_manifest(checkpoint: Path, version: int, key: str, digest) -> None:
    files = {p.relative_to(checkpoint).as_posix(): {"bytes": p.stat().st_size, key: digest(p.read_bytes()).hexdigest()}
             for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    (checkpoint / "manifest.json").write_text(json.dumps({"format": version, "files": files}))


def test_the_manifest_holds_each_files_xxh3_128(tmp_path):
    import xxhash

    from muonlab.rundir.checkpoint import save_checkpoint

    saved = save_checkpoint(tmp_path, 1, *_tiny_model_and_muon(), {"tokens": 1})
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format"] == 2 and sorted(manifest["files"]) == ["model.safetensors", "optimizer.pt",
                                                                     "trainer.json"]
    for name, entry in manifest["files"].items():
        data = (saved / name).read_bytes()
        assert entry == {"bytes": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}


def test_a_checkpoint_sealed_with_a_sha256_manifest_still_verifies(tmp_path):
    import hashlib

    from muonlab.rundir.checkpoint import checkpoint_problem, save_checkpoint

    saved = save_checkpoint(tmp_path, 1, *_tiny_model_and_muon(), {"tokens": 1})
    _rewrite_manifest(saved, 1, "sha256", hashlib.sha256)
    assert checkpoint_problem(saved) is None
    _flip_bit(saved / "optimizer.pt")
    assert checkpoint_problem(saved) == ("optimizer.pt does not match its checksum (its content changed after it "
                                         "was saved)")


def test_a_manifest_of_a_newer_format_is_named_not_misread(tmp_path):
    import hashlib

    from muonlab.rundir.checkpoint import checkpoint_problem, save_checkpoint

    saved = save_checkpoint(tmp_path, 1, *_tiny_model_and_muon(), {"tokens": 1})
    _rewrite_manifest(saved, 3, "blake3", hashlib.sha256)
    assert checkpoint_problem(saved) == ("its manifest.json is of format 3, newer than this muonlab reads (1, 2); "
                                         "upgrade muonlab to load it")
