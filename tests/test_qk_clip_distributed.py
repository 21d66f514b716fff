"""QK-Clip on N processes gives the single-process numbers under ddp, zero1 and fsdp, and resumes exactly.

- Through the optimizer API on 2 gloo processes: a grouped-query model (5 query heads sharing one
  key head, so FSDP2's row blocks cut heads and the shared key head) and an MLA + MoE model (3 heads;
  row blocks cut heads of q^C, k^C and q^R), clipping on at every step: the losses, the logged max
  logits and clipping statistics, and every parameter's total update equal one process's within
  1e-5 (fp32 Newton–Schulz). The maxima are all-reduced (MAX) over ranks, and FSDP2 rescales the
  rows each rank holds.
- The same on 4 processes on device meshes, with 4 heads: ``dp_shard 2 × tp 2`` (each rank records
  the maxima of its 2 heads and rescales its rows of the head-split weights) for a grouped-query
  model (2 key/value heads) and the MLA + MoE model, and ``ep 2 × dp_shard 2`` for the latter.
- Through ``muonlab train --parallel {ddp,zero1,fsdp}`` under torchrun: the loss, validation loss
  and QK-Clip rows equal the single-process run's, and a rank killed mid-run (fsdp) resumes from the
  last sharded checkpoint to the uninterrupted trajectory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from distributed_harness import full_params, spawn
from torchrun_runs import metric_rows, run_values, torchrun_train, train_in_process

pytestmark = pytest.mark.distributed

MODES = ("ddp", "zero1", "fsdp")
STEPS, GLOBAL_BATCH, SEQ, VOCAB, TAU = 4, 4, 12, 37, 2.0
TOLERANCE = 1e-5
MODELS = {
    "gqa": dict(d_model=40, n_heads=5, n_kv_heads=1),
    "mla-moe": dict(d_model=42, n_heads=3, attention="mla", kv_lora_rank=10, qk_nope_head_dim=6, qk_rope_head_dim=4,
                    v_head_dim=6, n_routed_experts=4, top_k=2, n_shared_experts=1, first_k_dense=1),
}


MESH_MODELS = {
    "gqa4": dict(d_model=40, n_heads=4, n_kv_heads=2),
    "mla-moe4": {**MODELS["mla-moe"], "d_model": 48, "n_heads": 4},
}
MESHES = {"dp2xtp2": {"dp_shard": 2, "tp": 2}, "ep2xdp2": {"dp_shard": 2, "ep": 2}}


def _clip_case(rank: int, world: int, kind: str, mode: str | dict) -> dict:
    """Train ``MODELS[kind]`` (or ``MESH_MODELS[kind]``) for STEPS steps with QK-Clip at TAU under ``mode``
    (a name, or mesh sizes): losses, stats, parameters."""
    from muonlab.models import ModelConfig, Transformer
    from muonlab.optim import Muon, QKClip, param_groups
    from muonlab.parallel import (
        data_parallel_group,
        data_parallel_rank,
        data_parallel_size,
        init_mesh,
        parallelize,
        sum_step_statistics,
    )

    torch.manual_seed(0)
    shape = {**MODELS, **MESH_MODELS}[kind]
    model = Transformer(ModelConfig(vocab_size=VOCAB, n_layers=2, max_seq_len=SEQ, init_std=0.2, **shape))
    mesh = init_mesh("cpu", **mode) if isinstance(mode, dict) else None
    forward = parallelize(model, mesh if mesh is not None else mode)
    optimizer = Muon(param_groups(model), lr=0.02, weight_decay=0.1, ns_dtype=torch.float32, max_grad_norm=1.0,
                     qk_clip=QKClip(model, tau=TAU))
    initial, losses, stats = full_params(model), [], []
    shards, shard = (data_parallel_size(mesh), data_parallel_rank(mesh)) if mesh is not None else (world, rank)
    per_rank = GLOBAL_BATCH // shards
    for step in range(STEPS):
        tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(step))
        rows = tokens[shard * per_rank : (shard + 1) * per_rank]
        loss = forward(rows[:, :-1], rows[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            sum_step_statistics(model, group=data_parallel_group(mesh) if mesh is not None else None)
        model.after_optimizer_step()
        detached = loss.detach().double()
        if world > 1:
            dist.all_reduce(detached)
        losses.append(float(detached) / world)
        stats.append(optimizer.qk_clip.stats())
    return {"initial": initial, "params": full_params(model), "losses": losses, "stats": stats}


def _all_cases(rank: int, world: int) -> dict:
    return {(kind, mode): _clip_case(rank, world, kind, mode) for kind in MODELS for mode in MODES}


def _mesh_cases(rank: int, world: int) -> dict:
    cases = [("gqa4", "dp2xtp2"), ("mla-moe4", "dp2xtp2"), ("mla-moe4", "ep2xdp2")]
    return {case: _clip_case(rank, world, case[0], MESHES[case[1]]) for case in cases}


def _single_process(kinds) -> dict:
    """Each model kind clipped on one process, on one thread (as each spawned rank runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {kind: _clip_case(0, 1, kind, "none") for kind in kinds}
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def results():
    return _single_process(MODELS), spawn(_all_cases, 2)[0]


@pytest.fixture(scope="module")
def mesh_results():
    return _single_process(MESH_MODELS), spawn(_mesh_cases, 4)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(MODELS))
def test_clipping_on_two_processes_equals_one_process(results, kind, mode):
    single, distributed = results
    _assert_same_clipping(distributed[(kind, mode)], single[kind])


@pytest.mark.parametrize("kind, mesh", [("gqa4", "dp2xtp2"), ("mla-moe4", "dp2xtp2"), ("mla-moe4", "ep2xdp2")])
def test_clipping_on_tensor_and_expert_parallel_meshes_equals_one_process(mesh_results, kind, mesh):
    single, distributed = mesh_results
    for result in distributed:
        _assert_same_clipping(result[(kind, mesh)], single[kind])


def _assert_same_clipping(result: dict, reference: dict) -> None:
    assert sum(s["qk_clip/heads_clipped"] for s in reference["stats"]) >= STEPS  # clipping at work every step
    assert result["losses"] == pytest.approx(reference["losses"], rel=TOLERANCE)
    for got, want in zip(result["stats"], reference["stats"]):
        assert got.keys() == want.keys() and got["qk_clip/heads_clipped"] == want["qk_clip/heads_clipped"]
        assert got == pytest.approx(want, rel=TOLERANCE)
    errors = {name: _relative(result["params"][name] - result["initial"][name], final - reference["initial"][name])
              for name, final in reference["params"].items()}
    assert not {name: e for name, e in errors.items() if not e <= TOLERANCE}


# ---- the training command under torchrun --------------------------------------------------------------


def _clip_values(corpus: Path, run_dir: Path, **overrides) -> dict:
    return run_values(corpus, run_dir, qk_clip_tau=0.08, **overrides)


@pytest.fixture(scope="module")
def single_process_clip_run(tiny_corpus, muonlab_cache_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single-clip") / "run"
    return train_in_process(_clip_values(tiny_corpus, run_dir), muonlab_cache_dir)


def _assert_same_clipped_trajectory(rows: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    assert sum(r["qk_clip/heads_clipped"] for r in expected) > 0
    for row, ref in zip(rows, expected):
        keys = [k for k in ref if k in ("loss", "val_loss") or k.startswith(("max_logit/", "qk_clip/"))]
        assert {k: row.get(k) for k in keys} == pytest.approx({k: ref[k] for k in keys}, rel=1e-5), row["step"]


@pytest.mark.parametrize("mode", MODES)
def test_torchrun_training_with_qk_clip_matches_one_process(tiny_corpus, muonlab_cache, tmp_path,
                                                            single_process_clip_run, mode):
    run_dir = tmp_path / mode
    done = torchrun_train(["-m", "muonlab.cli"], _clip_values(tiny_corpus, run_dir, batch_size=2, parallel=mode), 2,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_clipped_trajectory(metric_rows(run_dir), single_process_clip_run)
    assert json.loads((run_dir / "config.json").read_text())["qk_clip_tau"] == 0.08


def test_a_killed_rank_resumes_with_qk_clip_exactly(tiny_corpus, muonlab_cache, tmp_path, single_process_clip_run,
                                                    monkeypatch):
    run_dir = tmp_path / "faulty"
    values = _clip_values(tiny_corpus, run_dir, batch_size=2, parallel="fsdp", checkpoint_every=4)
    monkeypatch.setenv("MUONLAB_TEST_KILL_AFTER_STEP", "6")  # rank 1 dies after step 6; the checkpoint is at 4
    monkeypatch.setenv("MUONLAB_TEST_DEATHS", str(tmp_path))
    done = torchrun_train([str(Path(__file__).parent / "distributed_fault_entry.py")], values, 2, "--max-restarts=1",
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 1 did die after step 6 (and the run still finished: torchrun restarted both ranks)
    deaths = sorted(p.name for p in tmp_path.glob("rank*-attempt*"))
    assert deaths == ["rank1-attempt0-step6"], done.stderr[-3000:]  # why attempt 0 ended otherwise
    rows = metric_rows(run_dir)
    assert len({r["step"] for r in rows}) == len(rows), "a step was logged twice"
    _assert_same_clipped_trajectory(rows, single_process_clip_run)
