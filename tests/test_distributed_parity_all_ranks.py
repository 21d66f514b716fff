"""Distributed Muon against one process, on *every* rank, with telemetry, clipping, non-finite
gradients, resharded checkpoints and the ZeRO-1 state size.

``test_distributed_muon.py`` compares rank 0's parameters; here every rank's parameters and
optimizer state are compared with the single-process run (DDP and ZeRO-1 replicas each, FSDP2
shards gathered on each rank). On 2 gloo processes, in each mode (``ddp``, ``zero1``, ``fsdp``),
with fp32 Newton–Schulz and the harness model of ``distributed_harness`` (uneven shards, a 3-D
expert stack):

- the update RMS telemetry (``measure_next_step`` → ``last_telemetry``) of every step equals the
  single-process values within 1e-5 relative, on every rank. (``ns_orthogonality_residual`` and
  ``update_spectral_norm/max`` are sampled on the first matrix of each batched Newton–Schulz call;
  the engines make one call per owner and shape, so they sample other matrices than one process
  does and are only checked to be there.)
- with ``max_grad_norm`` at a tenth of the measured gradient norm (so it clips at every step), the
  run matches the clipped single-process run within 1e-5 and is far from the unclipped one;
- a NaN in one rank's gradient makes every rank raise (naming the same parameter) with nothing
  changed, or, with ``nonfinite="skip"``, every rank skip the step with ``skipped_steps == 1``,
  after which the run matches the single-process run that skipped the same step;
- checkpoints written by 3 processes under FSDP2 and ZeRO-1 continue on 2 under ZeRO-1, DDP and
  FSDP2 with the uninterrupted single-process trajectory;
- ``scale="update_norm"`` (each logical matrix's Newton–Schulz output divided by its RMS, on its
  owner), with the fused ``w_up`` split into its 5 blocks: parameters and state equal the
  single-process run, and every rank's telemetry reports the target update RMS;
- ``Muon.state_bytes()`` under ZeRO-1: each rank holds about half, and together they hold the
  single-process bytes.
"""

from __future__ import annotations

import math

import pytest
import torch

from distributed_harness import HarnessModel, batch, full_params, full_state, spawn

pytestmark = pytest.mark.distributed

MODES = ("ddp", "zero1", "fsdp")
WORLD = 2
GLOBAL_BATCH = 12
STEPS, SAVE_AT, NAN_AT = 4, 2, 1
TOLERANCE = 1e-5
UPDATE_NORM = dict(scale="update_norm", update_rms=0.3, split_fused=True)
POISONED = "layers.1.w_up.weight"  # a [35, 20] matrix: rows 18 + 17 on 2 ranks, 12 + 12 + 11 on 3


def _poison_local_gradient(model, mode: str) -> None:
    """Put a NaN in this rank's gradient of ``POISONED`` (its FSDP2 shard; under ZeRO-1 the
    unreduced gradient, which the reduce-scatter carries to one rank's chunk only)."""
    grad = dict(model.named_parameters())[POISONED].grad
    local = grad._local_tensor if hasattr(grad, "_local_tensor") else grad
    local[-1, -1] = float("nan")


def _global_grad_norm(model) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def train_case(rank: int, world: int, mode: str, steps: int, clip: float = 0.0, nonfinite: str = "raise",
               nan_at: int | None = None, start: int = 0, load_dir: str | None = None,
               save_dir: str | None = None, scale: str = "moonlight", update_rms: float = 0.2,
               split_fused: bool = False) -> dict:
    """Train ``HarnessModel`` under ``mode`` from step ``start`` (or a checkpoint) and return what
    every comparison needs, from this rank. ``nan_at``: at that step the last rank's gradient gets
    a NaN (under DDP through its local loss, since DDP averages gradients inside backward)."""
    from muonlab.optim import Muon, NonFiniteGradientError, param_groups
    from muonlab.parallel import parallelize
    from muonlab.rundir.checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

    model = HarnessModel(seed=0)
    forward = parallelize(model, mode)
    optimizer = Muon(param_groups(model, split_fused=split_fused), lr=0.02, weight_decay=0.1, ns_dtype=torch.float32,
                     max_grad_norm=clip, nonfinite=nonfinite, scale=scale, update_rms=update_rms)
    if load_dir is not None:
        start = load_sharded_checkpoint(load_dir, model, optimizer, restore_rng=False)["step"]
    initial = full_params(model)
    per_rank = GLOBAL_BATCH // world
    poisoned_rank = rank == world - 1
    telemetry, grad_norms, errors = [], [], []
    for t in range(start, start + steps):
        x, y = batch(t, GLOBAL_BATCH)
        loss = forward(x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank])
        if t == nan_at and poisoned_rank and mode == "ddp":
            loss = loss * float("nan")
        loss.backward()
        if t == nan_at and poisoned_rank and mode != "ddp":
            _poison_local_gradient(model, mode)
        if world == 1:
            grad_norms.append(_global_grad_norm(model))
        optimizer.measure_next_step()
        try:
            optimizer.step()
        except NonFiniteGradientError as err:
            errors.append((t, str(err)))
            break
        telemetry.append(dict(optimizer.last_telemetry))
        optimizer.zero_grad(set_to_none=True)
        if save_dir is not None and t + 1 == SAVE_AT:
            save_sharded_checkpoint(save_dir, t + 1, model, optimizer, {})
    return {"mode": mode, "initial": initial, "params": full_params(model), "state": full_state(optimizer),
            "telemetry": telemetry, "grad_norms": grad_norms, "errors": errors, "skipped": optimizer.skipped_steps,
            "state_bytes": optimizer.state_bytes()}


def run_plan(rank: int, world: int, plan: list[tuple[str, dict]]) -> dict[str, dict]:
    return {label: train_case(rank, world, **kwargs) for label, kwargs in plan}


# ---- comparisons


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _param_errors(result: dict, reference: dict) -> dict[str, float]:
    """Relative error of each parameter's total update since the reference's initial weights."""
    return {name: _relative(result["params"][name] - reference["initial"][name], final - reference["initial"][name])
            for name, final in reference["params"].items()}


def _state_errors(state: dict, reference: dict) -> dict[str, float]:
    assert set(state) == set(reference["state"]), set(state) ^ set(reference["state"])
    return {key: _relative(state[key], value) if value.ndim else abs(float(state[key] - value))
            for key, value in reference["state"].items()}


def _all_ranks_state(per_rank: list[dict], label: str) -> list[dict]:
    """Each rank's optimizer state; under ZeRO-1 the ranks hold disjoint parameters, merged here."""
    states = [r[label]["state"] for r in per_rank]
    if per_rank[0][label]["mode"] != "zero1":
        return states
    keys = [set(s) for s in states]
    assert not set.intersection(*keys), "two ZeRO-1 ranks saved the same parameter's state"
    merged = {k: v for s in states for k, v in s.items()}
    return [merged]


def _mismatches(per_rank: list[dict], label: str, reference: dict) -> dict[str, float]:
    """Everything (on any rank) that differs from ``reference`` by more than TOLERANCE."""
    errors = {}
    for rank, result in enumerate(per_rank):
        errors.update({f"rank {rank} {k}": e for k, e in _param_errors(result[label], reference).items()})
    for i, state in enumerate(_all_ranks_state(per_rank, label)):
        errors.update({f"state {i} {k}": e for k, e in _state_errors(state, reference).items()})
    return {k: e for k, e in errors.items() if not e <= TOLERANCE}


# ---- the runs


@pytest.fixture(scope="module")
def reference():
    """Single-process runs in this process; the clip threshold is a tenth of the first gradient norm."""
    torch.set_num_threads(1)
    plain = train_case(0, 1, "none", STEPS)
    clip = 0.1 * plain["grad_norms"][0]
    return {
        "plain": plain,
        "clip": clip,
        "clipped": train_case(0, 1, "none", STEPS, clip=clip),
        "raise": train_case(0, 1, "none", STEPS, nan_at=NAN_AT),
        "skip": train_case(0, 1, "none", STEPS, nonfinite="skip", nan_at=NAN_AT),
        "update_norm": train_case(0, 1, "none", STEPS, **UPDATE_NORM),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tmp_path_factory.mktemp("parity-checkpoints")


@pytest.fixture(scope="module")
def runs(reference, checkpoints):
    """Every rank's results: {"saved at 3": [...3 ranks], "2": [...2 ranks]}; 3 first, 2 loads its checkpoints."""
    saved = spawn(run_plan, 3, [(mode, dict(mode=mode, steps=SAVE_AT, save_dir=str(checkpoints / mode)))
                                for mode in ("fsdp", "zero1")])
    plan = []
    for mode in MODES:
        plan += [
            (mode, dict(mode=mode, steps=STEPS)),
            (f"{mode}/clipped", dict(mode=mode, steps=STEPS, clip=reference["clip"])),
            (f"{mode}/raise", dict(mode=mode, steps=STEPS, nan_at=NAN_AT)),
            (f"{mode}/skip", dict(mode=mode, steps=STEPS, nonfinite="skip", nan_at=NAN_AT)),
            (f"{mode}/update_norm", dict(mode=mode, steps=STEPS, **UPDATE_NORM)),
        ]
    for source, target in (("fsdp", "zero1"), ("fsdp", "ddp"), ("zero1", "zero1"), ("zero1", "fsdp")):
        load_dir = checkpoints / source / "checkpoints" / f"step_{SAVE_AT:08d}"
        plan.append((f"{source}@3->{target}@2", dict(mode=target, steps=STEPS - SAVE_AT, load_dir=str(load_dir))))
    return {"saved at 3": saved, "2": spawn(run_plan, WORLD, plan)}


# ---- the checks


@pytest.mark.parametrize("mode", MODES)
def test_every_ranks_parameters_and_state_equal_the_single_process_run(runs, reference, mode):
    assert _mismatches(runs["2"], mode, reference["plain"]) == {}


@pytest.mark.parametrize("mode", MODES)
def test_update_rms_telemetry_equals_the_single_process_run_on_every_rank(runs, reference, mode):
    expected = reference["plain"]["telemetry"]
    assert len(expected) == STEPS and all("update_rms/muon" in t and "update_rms/adamw" in t for t in expected)
    for rank, result in enumerate(runs["2"]):
        telemetry = result[mode]["telemetry"]
        assert len(telemetry) == STEPS
        for step, (got, want) in enumerate(zip(telemetry, expected)):
            rms = {k: v for k, v in want.items() if k.startswith("update_rms/")}
            assert len(rms) == 2 + len(reference["plain"]["params"])  # muon, adamw, one per parameter
            assert {k for k in got if k.startswith("update_rms/")} == set(rms), (rank, step)
            bad = {k: (got[k], v) for k, v in rms.items() if not abs(got[k] - v) <= TOLERANCE * abs(v)}
            assert bad == {}, f"rank {rank}, step {step}: {bad}"
            assert got["ns_orthogonality_residual"] > 0 and got["update_spectral_norm/max"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_update_norm_under_each_engine_equals_the_single_process_run(runs, reference, mode):
    assert _mismatches(runs["2"], f"{mode}/update_norm", reference["update_norm"]) == {}
    assert _mismatches(runs["2"], f"{mode}/update_norm", reference["plain"]) != {}  # another rule, another run
    from muonlab.optim import param_groups

    names = [n for g in param_groups(HarnessModel(), split_fused=True) if g["algorithm"] == "muon" for n in g["names"]]
    assert {"layers.0.mix.w", "layers.1.w_up.weight", "layers.1.wq.weight"} <= set(names)  # experts, fused blocks
    target = UPDATE_NORM["update_rms"]
    for rank, result in enumerate(runs["2"]):
        telemetry = result[f"{mode}/update_norm"]["telemetry"]
        assert len(telemetry) == STEPS
        for step, got in enumerate(telemetry):
            rms = {"muon": got["update_rms/muon"], **{n: got[f"update_rms/{n}"] for n in names}}
            bad = {k: v for k, v in rms.items() if not abs(v - target) <= TOLERANCE * target}
            assert bad == {}, f"rank {rank}, step {step}: {bad}"


def test_the_clip_threshold_engages_at_every_step(reference):
    norms = reference["clipped"]["grad_norms"]
    assert len(norms) == STEPS and all(norm > 2 * reference["clip"] for norm in norms), (norms, reference["clip"])


@pytest.mark.parametrize("mode", MODES)
def test_clipping_under_each_engine_equals_single_process_clipping(runs, reference, mode):
    assert _mismatches(runs["2"], f"{mode}/clipped", reference["clipped"]) == {}
    # ... and is not the unclipped run: the momentum alone is off by the clip factor (about 10×).
    unclipped = _mismatches(runs["2"], f"{mode}/clipped", reference["plain"])
    assert max(unclipped.values(), default=0.0) > 1000 * TOLERANCE, unclipped


@pytest.mark.parametrize("mode", MODES)
def test_a_nan_on_one_rank_makes_every_rank_raise_with_nothing_changed(runs, reference, mode):
    expected_error = reference["raise"]["errors"]
    assert len(expected_error) == 1 and expected_error[0][0] == NAN_AT and POISONED in expected_error[0][1]
    for rank, result in enumerate(runs["2"]):
        errors = result[f"{mode}/raise"]["errors"]
        assert [t for t, _ in errors] == [NAN_AT], f"rank {rank}: {errors}"
        assert "contains NaN or inf" in errors[0][1]
    messages = {result[f"{mode}/raise"]["errors"][0][1] for result in runs["2"]}
    assert len(messages) == 1, f"ranks name different parameters: {messages}"
    assert _mismatches(runs["2"], f"{mode}/raise", reference["raise"]) == {}


@pytest.mark.parametrize("mode", MODES)
def test_a_nan_on_one_rank_makes_every_rank_skip_the_same_step(runs, reference, mode):
    assert reference["skip"]["skipped"] == 1
    assert [result[f"{mode}/skip"]["skipped"] for result in runs["2"]] == [1] * WORLD
    assert all(result[f"{mode}/skip"]["errors"] == [] for result in runs["2"])
    assert _mismatches(runs["2"], f"{mode}/skip", reference["skip"]) == {}
    assert _mismatches(runs["2"], f"{mode}/skip", reference["plain"]) != {}  # the skipped step mattered


@pytest.mark.parametrize("source, target", [("fsdp", "zero1"), ("fsdp", "ddp"), ("zero1", "zero1"), ("zero1", "fsdp")])
def test_checkpoint_written_by_3_processes_continues_on_2(runs, reference, source, target):
    label = f"{source}@3->{target}@2"
    resumed = [{label: {**r[label], "initial": reference["plain"]["initial"]}} for r in runs["2"]]
    assert _mismatches(resumed, label, reference["plain"]) == {}


def test_zero1_state_bytes_are_split_across_ranks(runs, reference):
    one = reference["plain"]["state_bytes"]
    per_rank = [result["zero1"]["state_bytes"] for result in runs["2"]]
    print(f"state bytes: one process {one}, ZeRO-1 ranks {per_rank}")
    # Each rank also keeps the AdamW step count (a 4-byte scalar) of every AdamW parameter it holds
    # a piece of; a parameter cut by the chunk boundary has one on both ranks.
    adamw_params = 2 + 7  # embedding, head, 7 norm gains
    assert one <= sum(per_rank) <= one + 4 * adamw_params
    for bytes_ in per_rank:
        assert abs(bytes_ - one / WORLD) <= 0.1 * one / WORLD, per_rank
    replicated = [result["ddp"]["state_bytes"] for result in runs["2"]]
    assert replicated == [one] * WORLD  # DDP keeps the full state on every rank
