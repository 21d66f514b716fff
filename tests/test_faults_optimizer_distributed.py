"""Fault injection, the optimizer on several processes: a finite gradient too large to update with, on one
rank's piece only (ZeRO-1's reduce-scatter chunk, an FSDP2 shard), stops the step on every rank, each naming
the same parameter as one process does, with every rank's parameters and optimizer state unchanged.

(DDP is left out: every rank holds the same averaged gradient there, so a value put into one rank's copy
after the reduction is not a case DDP can produce.)
"""

from __future__ import annotations

import pytest
import torch

from distributed_harness import HarnessModel, batch, full_params, full_state, spawn

pytestmark = [pytest.mark.faults, pytest.mark.distributed]

POISONED = "layers.1.w_up.weight"  # a Muon matrix [35, 20]: rows 18 + 17 on 2 ranks
GLOBAL_BATCH = 12


def _huge_second_step(rank: int, world: int, mode: str, value: float) -> dict:
    """One good step, then a step whose gradient of ``POISONED`` gets ``value`` in the last rank's piece."""
    from muonlab.optim import Muon, NonFiniteGradientError, param_groups
    from muonlab.parallel import parallelize

    model = HarnessModel(seed=0)
    forward = parallelize(model, mode) if mode != "none" else model
    optimizer = Muon(param_groups(model), lr=0.02, ns_dtype=torch.float32)
    per_rank = GLOBAL_BATCH // world
    error = None
    for t in range(2):
        x, y = batch(t, GLOBAL_BATCH)
        forward(x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank]).backward()
        if t == 1:
            if rank == world - 1:
                grad = dict(model.named_parameters())[POISONED].grad
                (grad._local_tensor if hasattr(grad, "_local_tensor") else grad)[-1, -1] = value
            before = full_params(model), full_state(optimizer)
        try:
            optimizer.step()
        except NonFiniteGradientError as err:
            error = str(err)
        optimizer.zero_grad(set_to_none=True)
    params, state = before
    unchanged = (all(torch.equal(v, params[k]) for k, v in full_params(model).items())
                 and all(torch.equal(v, state[k]) for k, v in full_state(optimizer).items()))
    return {"error": error, "unchanged": unchanged}


@pytest.mark.parametrize("value", [1e19, 3e19], ids=["norm 1e19", "norm past float32"])
@pytest.mark.parametrize("mode", ["zero1", "fsdp"])
def test_a_huge_gradient_on_one_rank_stops_every_rank_naming_the_same_parameter(mode, value):
    one = _huge_second_step(0, 1, "none", value)
    assert one["error"] is not None and one["unchanged"]
    assert f"gradient of parameter '{POISONED}' is finite but too large to update with" in one["error"]
    ranks = spawn(_huge_second_step, 2, mode, value)
    errors = [r["error"] for r in ranks]
    assert errors[0] is not None and errors[0] == errors[1]  # every rank stops, naming the same parameter
    # the same parameter as one process (ZeRO-1 averages the poisoned unreduced gradient over the ranks, so the
    # norm in the sentence may differ by that factor)
    assert errors[0].split(": its norm")[0] == one["error"].split(": its norm")[0]
    assert all(r["unchanged"] for r in ranks)
