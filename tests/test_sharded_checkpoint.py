"""The sharded (torch.distributed.checkpoint) checkpoint format on one process.

Multi-process saves and loads at other world sizes are in test_distributed_muon.py; here: a
round trip on one process restores weights and optimizer state exactly, ``latest_checkpoint`` and
``load_checkpoint`` recognise the layout, and a checkpoint of other parameters is refused by name.
"""

import pytest
import torch

from muonlab.models import Transformer, preset
from muonlab.optim import Muon, param_groups
from muonlab.rundir.checkpoint import (
    CheckpointError,
    is_sharded_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_sharded_checkpoint,
)


def _trained(steps: int = 2):
    torch.manual_seed(0)
    model = Transformer(preset("tiny", vocab_size=64, max_seq_len=16))
    opt = Muon(param_groups(model), lr=1e-2)
    for step in range(steps):
        x = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(step))
        model(x[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_restores_weights_state_and_hyperparameters(tmp_path):
    model, opt = _trained()
    opt.param_groups[0]["lr"] = 0.123
    path = save_sharded_checkpoint(tmp_path, 2, model, opt, {"tokens": 7})
    assert is_sharded_checkpoint(path) and latest_checkpoint(tmp_path) == path

    torch.manual_seed(1)
    fresh = Transformer(preset("tiny", vocab_size=64, max_seq_len=16))
    fresh_opt = Muon(param_groups(fresh), lr=1e-2)
    state = load_checkpoint(path, fresh, fresh_opt)  # dispatches on the layout
    assert state["step"] == 2 and state["tokens"] == 7
    assert fresh_opt.param_groups[0]["lr"] == 0.123
    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(model.parameters(), fresh.parameters()):
        for key, value in opt.state[a].items():
            assert torch.equal(value, fresh_opt.state[b][key]), key


def test_a_checkpoint_of_other_parameters_is_refused(tmp_path):
    model, opt = _trained(1)
    path = save_sharded_checkpoint(tmp_path, 1, model, opt, {})
    torch.manual_seed(0)
    other = Transformer(preset("tiny", vocab_size=64, max_seq_len=16))
    groups = param_groups(other)
    groups[0]["names"] = ["renamed." + n for n in groups[0]["names"]]
    with pytest.raises(CheckpointError, match="parameter group 0 holds"):
        load_checkpoint(path, other, Muon(groups, lr=1e-2))
