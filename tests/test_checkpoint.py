import copy
import dataclasses
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors
import torch
from torch import nn

from muonlab.rundir import checkpoint
from muonlab.rundir.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint


@dataclasses.dataclass
class TinyConfig:
    vocab: int = 11
    d: int = 8
    tie: bool = True


class Tiny(nn.Module):
    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab, config.d)
        self.hidden = nn.Linear(config.d, config.d)
        self.head = nn.Linear(config.d, config.vocab, bias=False)
        if config.tie:
            self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(torch.tanh(self.hidden(self.emb(idx))))


def train_steps(model, opt, n):
    for _ in range(n):
        idx = torch.randint(0, model.config.vocab, (4, 5))
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def make(seed, config=None):
    torch.manual_seed(seed)
    model = Tiny(config or TinyConfig())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def draw_random():
    return random.random(), np.random.rand(), torch.rand(3).tolist()


def test_round_trip_is_bit_exact_and_resume_continues_the_same_trajectory(tmp_path):
    model, opt = make(0)
    train_steps(model, opt, 3)
    path = save_checkpoint(tmp_path, 3, model, opt, {"tokens": 60, "data": {"epoch": 0, "position": 12}})
    weights_at_3 = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer_at_3 = copy.deepcopy(opt.state_dict())
    train_steps(model, opt, 2)  # the uninterrupted run
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    fresh, fresh_opt = make(1)
    assert latest_checkpoint(tmp_path) == path == tmp_path / "checkpoints" / "step_00000003"
    state = load_checkpoint(path, fresh, fresh_opt)
    assert state["step"] == 3 and state["tokens"] == 60 and state["data"] == {"epoch": 0, "position": 12}
    assert state["model_config"] == dataclasses.asdict(TinyConfig())
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, weights_at_3[k]), k
    loaded = fresh_opt.state_dict()
    assert loaded["param_groups"] == optimizer_at_3["param_groups"]
    for i, param_state in optimizer_at_3["state"].items():
        for k, v in param_state.items():
            assert torch.equal(loaded["state"][i][k], v), (i, k)

    # Resuming replays the same data (restored RNG) with the same moments: bit-identical weights.
    train_steps(fresh, fresh_opt, 2)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, reference[k]), k

    load_checkpoint(path, fresh, fresh_opt)
    first = draw_random()
    load_checkpoint(path, fresh, fresh_opt)
    assert draw_random() == first


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    model, opt = make(0)
    path = save_checkpoint(tmp_path, 0, model, opt, {})
    with safetensors.safe_open(str(path / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert len(stored & {"emb.weight", "head.weight"}) == 1
    fresh, fresh_opt = make(1)
    load_checkpoint(path, fresh, fresh_opt)
    assert fresh.head.weight is fresh.emb.weight
    assert torch.equal(fresh.emb.weight, model.emb.weight)


def test_keep_last_k_and_latest_pointer(tmp_path):
    model, opt = make(0)
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, model, opt, {"tokens": step}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert (root / "latest").read_text().strip() == "step_00000004"
    # A stale pointer (its target deleted by hand) falls back to the newest complete checkpoint.
    (root / "latest").write_text("step_00000009\n")
    assert latest_checkpoint(tmp_path) == root / "step_00000004"
    # Re-saving a step replaces it.
    save_checkpoint(tmp_path, 4, model, opt, {"tokens": 44}, keep=2)
    assert load_checkpoint(root / "step_00000004", model, opt)["tokens"] == 44
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_bad_arguments(tmp_path):
    model, opt = make(0)
    with pytest.raises(ValueError, match="keep must be >= 1"):
        save_checkpoint(tmp_path, 1, model, opt, {}, keep=0)
    with pytest.raises(ValueError, match="trainer_state may not set rng"):
        save_checkpoint(tmp_path, 1, model, opt, {"rng": 1})
    with pytest.raises(ValueError, match="only JSON values"):
        save_checkpoint(tmp_path, 1, model, opt, {"loader": object()})
    assert latest_checkpoint(tmp_path) is None


def test_config_mismatch_names_the_fields(tmp_path):
    model, opt = make(0)
    path = save_checkpoint(tmp_path, 5, model, opt, {})
    other, other_opt = make(0, TinyConfig(d=16, tie=False))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, other, other_opt)
    assert str(info.value) == (
        f"checkpoint {path} was saved for a different model: d (8 in the checkpoint, 16 now); "
        "tie (True in the checkpoint, False now)"
    )


def test_corrupt_or_partial_checkpoints(tmp_path):
    """The formats' own checks (what a checkpoint from before manifests meets: ``verify=False``)."""
    model, opt = make(0)
    good = save_checkpoint(tmp_path, 1, model, opt, {}, keep=5)
    bad = save_checkpoint(tmp_path, 2, model, opt, {}, keep=5)

    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model.safetensors are corrupt or truncated"):
        load_checkpoint(bad, model, opt, verify=False)

    weights.write_bytes((good / "model.safetensors").read_bytes())
    (bad / "optimizer.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=r"optimizer.pt is corrupt or unsafe"):
        load_checkpoint(bad, model, opt, verify=False)

    (bad / "trainer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"trainer.json is corrupt"):
        load_checkpoint(bad, model, opt, verify=False)

    (bad / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete or not a checkpoint: missing optimizer.pt"):
        load_checkpoint(bad, model, opt, verify=False)
    assert latest_checkpoint(tmp_path) == good  # the pointer names step 2, which is incomplete now


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = make(0)
    first = save_checkpoint(tmp_path, 1, model, opt, {"tokens": 1})

    def full_disk(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    train_steps(model, opt, 1)
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path, 2, model, opt, {"tokens": 2})
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert "optimizer.pt" in message and "No space left on device" in message
    assert f"the previous checkpoint {first} is kept" in message

    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001"]  # temp dir cleaned up
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(first, *make(1))["tokens"] == 1


CHILD = r"""
import sys, time, torch
from muonlab.rundir.checkpoint import save_checkpoint

run_dir = sys.argv[1]
torch.manual_seed(0)
model = torch.nn.Linear(64, 64)
opt = torch.optim.AdamW(model.parameters())
model(torch.randn(2, 64)).sum().backward()
opt.step()
save_checkpoint(run_dir, 1, model, opt, {"tokens": 128})

def slow_save(obj, f):  # a large optimizer file that takes a long time to write
    with open(f, "wb") as fh:
        for _ in range(100_000):
            fh.write(b"\0" * 4096)
            fh.flush()
            time.sleep(0.01)

torch.save = slow_save
opt.step()
save_checkpoint(run_dir, 2, model, opt, {"tokens": 256})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)])
    partial = tmp_path / "checkpoints" / f".tmp-step_00000002-{child.pid}" / "optimizer.pt"
    deadline = time.monotonic() + 120
    try:
        while not (partial.is_file() and partial.stat().st_size > 0):
            assert child.poll() is None, "the child exited before the second save started"
            assert time.monotonic() < deadline, "the second save never started"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    first = tmp_path / "checkpoints" / "step_00000001"
    assert latest_checkpoint(tmp_path) == first
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(model.parameters())
    assert load_checkpoint(first, model, opt)["tokens"] == 128
    assert opt.state_dict()["state"][0]["step"].item() == 1

    # The next save removes the dead process's partial temp dir.
    save_checkpoint(tmp_path, 3, model, opt, {"tokens": 384})
    assert not partial.parent.exists()
    assert latest_checkpoint(tmp_path).name == "step_00000003"


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(checkpoint.capture_rng_state()))
    expected = draw_random()
    checkpoint.restore_rng_state(state)
    assert draw_random() == expected
