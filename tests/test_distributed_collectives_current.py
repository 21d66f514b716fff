"""muonlab's own collectives use torch's current names: on torch 2.13, where ``all_gather_into_tensor``
and ``reduce_scatter_tensor`` are deprecated (a ``FutureWarning`` on every call), the expert-parallel
gather (forward all-gather, backward reduce-scatter) and distributed Muon's flat collectives run on 2 gloo
processes with warnings raised as errors. Negative control: the deprecated call itself warns there, so a
return to it would fail this test."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist

from distributed_harness import spawn

pytestmark = pytest.mark.distributed


def _collectives(rank: int, world: int) -> tuple[bool, list[str]]:
    from muonlab.optim.distributed.collectives import all_gather_flat, reduce_scatter_sum
    from muonlab.parallel.experts import gather_experts

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_experts(local, dist.group.WORLD, 0.5)
        gathered.sum().backward()
        out = torch.empty(world * 4)
        all_gather_flat(out, torch.full((4,), float(rank)), dist.group.WORLD)
        part = torch.empty(4)
        reduce_scatter_sum(part, torch.ones(world * 4), dist.group.WORLD)
        results_ok = (gathered.shape == (world * 2, 3) and torch.equal(local.grad, torch.full((2, 3), world * 0.5))
                      and torch.equal(out, torch.arange(world).repeat_interleave(4).float())
                      and torch.equal(part, torch.full((4,), float(world))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist.all_gather_into_tensor(torch.empty(world * 4), torch.zeros(4), group=dist.group.WORLD)
    return results_ok, [f"{w.category.__name__}: {w.message}" for w in caught]


def test_expert_and_muon_collectives_raise_no_deprecation_warning():
    """Any warning inside the first block raises on the rank, so spawn fails; the results are checked too."""
    (ok0, deprecated0), (ok1, _) = spawn(_collectives, 2)
    assert ok0 and ok1
    if not hasattr(dist, "all_gather_single"):
        pytest.skip(f"torch {torch.__version__} has no all_gather_single: the old names are the current ones")
    assert any("all_gather_into_tensor" in w and "deprecated" in w for w in deprecated0), deprecated0
