"""The refinements — NorMuon, cautious weight decay, per-head blocks, all three — give one process's
numbers on every engine and mesh, resume exactly, and continue on another layout.

Layouts: ddp, zero1 and fsdp on 2 gloo processes (``distributed_harness.HarnessModel``: heads of 10
rows, FSDP2 row shards of uneven size, a transposed fused matrix, a 3-D expert stack), and the
meshes ``dp_shard 2 × tp 2`` (the dense ``Transformer``: each rank holds one whole query head of 4
rows, so per-head blocks are orthogonalized where they lie) and ``ep 2 × dp_shard 2`` (the MLA/MoE
model) on 4 (``mesh_harness``). Checks, fp32 Newton–Schulz, against the single-process run of the
same options: every parameter's total update and every optimizer state tensor (NorMuon's row state
included) within 1e-5 relative. Negative controls, which must fail that check: NorMuon computed on
each rank's row shard only (its row statistics and norm from a shard), and a run whose head count
differs from the reference's (whole matrices against per-head blocks). A checkpoint saved on 2
processes (all three refinements) continues on 1 equal to the uninterrupted run; one saved on
``ep 2 × dp_shard 2`` continues on ``dp_shard 2 × tp 2``.
"""

from __future__ import annotations

import pytest
import torch

from distributed_harness import run_plan, spawn, train_case
from mesh_harness import mesh_case, mismatches, run_mesh_plan

pytestmark = pytest.mark.distributed

MODES = ("ddp", "zero1", "fsdp")
GLOBAL_BATCH, STEPS, SAVE_AT = 12, 4, 2
MESH_STEPS = 3
VARIANTS = {
    "normuon": {"options": {"normuon": True}},
    "cautious": {"options": {"cautious_wd": True}},
    "per_head": {"orthogonalize": "per_head"},
    "all": {"options": {"normuon": True, "cautious_wd": True}, "orthogonalize": "per_head"},
}
SAVED = f"checkpoints/step_{SAVE_AT:08d}"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tmp_path_factory.mktemp("variant-checkpoints")


class Lazy(dict):
    """Results computed on first use, so that ``-k`` selecting a few cases runs only their processes."""

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = self.make(key)
        return self[key]


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    return Lazy(lambda name: train_case(0, 1, "none", STEPS, GLOBAL_BATCH, **VARIANTS.get(name, {})))


@pytest.fixture(scope="module")
def runs(checkpoints):
    """Per mode, one set of 2 processes running every variant (and, under fsdp, the negative control)."""

    def run(mode: str):
        plan = []
        for name, kw in VARIANTS.items():
            case = dict(mode=mode, steps=STEPS, per_rank=GLOBAL_BATCH // 2, **kw)
            if name == "all":
                case.update(save_dir=str(checkpoints / mode), save_at=SAVE_AT)
            plan.append((f"{mode}/{name}", case))
        if mode == "fsdp":
            plan.append(("fsdp/normuon-on-shards", dict(mode="fsdp", steps=STEPS, per_rank=GLOBAL_BATCH // 2,
                                                        wrong=True, **VARIANTS["normuon"])))
        per_rank = spawn(run_plan, 2, plan)
        return {label: _merged(per_rank, label) for label, _ in plan}

    return Lazy(run)


def _merged(per_rank: list[dict], label: str) -> dict:
    state = {}
    for result in per_rank:
        state.update(result[label]["state"])
    return {**per_rank[0][label], "state": state}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_two_processes_equal_one(runs, reference, mode, variant):
    result = runs[mode][f"{mode}/{variant}"]
    if "normuon" in VARIANTS[variant].get("options", {}):
        assert any(k.endswith("/normuon_v") for k in result["state"])
    assert mismatches(result, reference[variant]) == {}


def test_normuon_on_row_shards_fails(runs, reference):
    errors = mismatches(runs["fsdp"]["fsdp/normuon-on-shards"], reference["normuon"])
    assert errors and max(errors.values()) > 1e-2, errors


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_head_count_fails(runs, reference, mode):
    # Per-head blocks on 2 processes against whole matrices (one "head") on one.
    errors = mismatches(runs[mode][f"{mode}/per_head"], reference["whole"])
    assert errors and max(errors.values()) > 1e-2, errors


@pytest.mark.parametrize("mode", MODES)
def test_saved_on_two_continues_on_one(runs, reference, checkpoints, mode):
    assert runs[mode]  # the run that saved the checkpoint
    resumed = train_case(0, 1, "none", STEPS - SAVE_AT, GLOBAL_BATCH, load_dir=str(checkpoints / mode / SAVED),
                         **VARIANTS["all"])
    assert mismatches({**resumed, "initial": reference["all"]["initial"]}, reference["all"]) == {}


MESHES = {"dp2xtp2": ("dense", {"dp_shard": 2, "tp": 2}), "ep2xdp2": ("moe", {"ep": 2, "dp_shard": 2})}


@pytest.fixture(scope="module")
def mesh_reference():
    torch.set_num_threads(1)
    return Lazy(lambda key: mesh_case(0, 1, {}, MESH_STEPS, kind=key[0], **VARIANTS.get(key[1], {})))


@pytest.fixture(scope="module")
def mesh_runs(checkpoints):
    """Per mesh, one set of 4 processes running every variant; dp2xtp2 also continues ep2xdp2's checkpoint
    (so it runs ep2xdp2 first) and runs the negative control."""

    def run(mesh: str):
        kind, sizes = MESHES[mesh]
        plan = [(name, dict(sizes=sizes, steps=MESH_STEPS, kind=kind, **kw)) for name, kw in VARIANTS.items()]
        if mesh == "ep2xdp2":
            plan[-1][1].update(save_dir=str(checkpoints / mesh), save_at=SAVE_AT)
        else:
            assert mesh_runs_cache["ep2xdp2"]
            plan.append(("resumed", dict(sizes=sizes, steps=MESH_STEPS - SAVE_AT, kind="moe",
                                         load_dir=str(checkpoints / "ep2xdp2" / SAVED), **VARIANTS["all"])))
            plan.append(("normuon-on-shards", dict(sizes=sizes, steps=MESH_STEPS, kind=kind, wrong=True,
                                                   **VARIANTS["normuon"])))
        return spawn(run_mesh_plan, 4, plan)

    mesh_runs_cache = Lazy(run)
    return mesh_runs_cache


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mesh", MESHES)
def test_four_processes_on_a_mesh_equal_one(mesh_runs, mesh_reference, mesh, variant):
    kind = MESHES[mesh][0]
    for rank, result in enumerate(mesh_runs[mesh]):
        assert mismatches(result[variant], mesh_reference[(kind, variant)]) == {}, rank


def test_mesh_normuon_on_shards_fails(mesh_runs, mesh_reference):
    errors = mismatches(mesh_runs["dp2xtp2"][0]["normuon-on-shards"], mesh_reference[("dense", "normuon")])
    assert errors and max(errors.values()) > 1e-2, errors


def test_mesh_wrong_head_count_fails(mesh_runs, mesh_reference):
    errors = mismatches(mesh_runs["dp2xtp2"][0]["per_head"], mesh_reference[("dense", "whole")])
    assert errors and max(errors.values()) > 1e-2, errors


def test_saved_on_ep2xdp2_continues_on_dp2xtp2(mesh_runs, mesh_reference):
    for rank, result in enumerate(mesh_runs["dp2xtp2"]):
        resumed = {**result["resumed"], "initial": mesh_reference[("moe", "all")]["initial"]}
        assert mismatches(resumed, mesh_reference[("moe", "all")]) == {}, rank
