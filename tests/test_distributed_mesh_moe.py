"""Muon on the MoE/MLA model on device meshes with expert and tensor parallelism gives one process's numbers.

One set of 4 gloo processes trains ``mesh_harness.mesh_model(kind="moe")`` — MLA attention, an MoE
layer with 4 routed experts and a shared expert, uneven vocabulary, MLP and latent widths — on

- ``ep 2 × dp_shard 2``: each rank holds one whole expert, tokens reach it by all-to-all, FSDP2
  shards everything else over the 4 data-parallel ranks;
- ``dp_shard 2 × tp 2``: MLA heads and the shared expert split across TP ranks, routed experts whole;
- ``ep 2 × tp 2``: both.

Checks, against the single-process run (fp32 Newton–Schulz, 3 steps): every parameter's total
update, the balance biases and every optimizer state tensor within 1e-5 relative, the losses,
the update-RMS telemetry and the routing statistics too; Newton–Schulz on each rank's own block
(the deliberately local orthogonalization) fails that check; a DCP checkpoint saved on
``ep 2 × dp_shard 2`` continues on ``dp_shard 2 × tp 2`` and on one process with the uninterrupted
run's numbers; an expert-parallel degree that does not divide the experts, or a model without
experts, fails on every rank with one sentence.
"""

from __future__ import annotations

import pytest
import torch

from distributed_harness import spawn
from mesh_harness import TOLERANCE, mesh_case, misfit_error, mismatches, run_mesh_plan

pytestmark = pytest.mark.distributed

STEPS, SAVE_AT, WORLD = 3, 2, 4
MESHES = {"ep2xdp2": {"dp_shard": 2, "ep": 2}, "dp2xtp2": {"dp_shard": 2, "tp": 2}, "ep2xtp2": {"ep": 2, "tp": 2}}
SAVED = f"ep2xdp2/checkpoints/step_{SAVE_AT:08d}"


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    return mesh_case(0, 1, {}, STEPS, kind="moe")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tmp_path_factory.mktemp("moe-mesh-checkpoints")


@pytest.fixture(scope="module")
def runs(checkpoints):
    plan = [(name, dict(sizes=sizes, steps=STEPS, kind="moe")) for name, sizes in MESHES.items()]
    plan[0][1].update(save_dir=str(checkpoints / "ep2xdp2"), save_at=SAVE_AT)
    plan.append(("resumed", dict(sizes=MESHES["dp2xtp2"], steps=STEPS - SAVE_AT, kind="moe",
                                 load_dir=str(checkpoints / SAVED))))
    plan.append(("wrong", dict(sizes=MESHES["ep2xdp2"], steps=STEPS, kind="moe", wrong=True)))  # last: patches
    return spawn(run_mesh_plan, WORLD, plan)


@pytest.mark.parametrize("mesh", MESHES)
def test_updates_state_and_losses_equal_the_single_process_run(runs, reference, mesh):
    assert any(name.endswith("balance_bias") for name in reference["params"])
    for rank, result in enumerate(runs):
        assert mismatches(result[mesh], reference) == {}, rank
        assert result[mesh]["losses"] == pytest.approx(reference["losses"], rel=TOLERANCE, abs=0)


@pytest.mark.parametrize("mesh", MESHES)
def test_update_rms_and_routing_telemetry_equal_the_single_process_run(runs, reference, mesh):
    expected = reference["telemetry"]
    keys = [k for k in expected if k.startswith(("update_rms/", "moe/"))]
    assert {"update_rms/layers.1.mlp.w_gate", "moe/load_max_over_mean/1", "moe/bias_abs_mean"} <= set(keys)
    for result in runs:
        measured = result[mesh]["telemetry"]
        for key in keys:
            assert measured[key] == pytest.approx(expected[key], rel=TOLERANCE), key


def test_local_orthogonalization_of_sharded_blocks_fails_the_same_check(runs, reference):
    errors = mismatches(runs[0]["wrong"], reference)
    assert max(errors.values()) > 0.1, errors  # off by tens of percent, not by rounding


def test_a_checkpoint_saved_on_ep2xdp2_continues_on_dp2xtp2(runs, reference):
    for result in runs:
        assert mismatches({**result["resumed"], "initial": reference["initial"]}, reference) == {}


def test_a_checkpoint_saved_on_ep2xdp2_continues_on_one_process(runs, reference, checkpoints):
    resumed = mesh_case(0, 1, {}, STEPS - SAVE_AT, kind="moe", load_dir=str(checkpoints / SAVED))
    assert mismatches({**resumed, "initial": reference["initial"]}, reference) == {}


def test_an_expert_parallel_degree_that_does_not_divide_the_experts_fails_on_every_rank_with_one_sentence():
    messages = spawn(misfit_error, 2, "moe", {"ep": 2}, 5)
    assert messages[0] == messages[1] and "\n" not in messages[0]
    assert "ep=2" in messages[0] and "layers.1.mlp has 5" in messages[0], messages[0]
    messages = spawn(misfit_error, 2, "dense", {"ep": 2})
    assert messages[0] == messages[1] and "needs MoE layers" in messages[0], messages[0]
