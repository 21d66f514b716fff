"""One training case on a named device mesh (FSDP2 × TP × EP), the same code on one process.

The dense model is muonlab's own ``Transformer``, tiny and with awkward shapes: 4 attention heads
of width 4 (or grouped-query: 2 key/value heads), a SwiGLU width of 34 (17 per TP rank, split
9 + 8 by FSDP2 over two ranks) and a vocabulary of 67. The MoE model (``model="moe"``) has
Moonlight's layout at that size: MLA attention (2 heads, a KV latent of 9), block 0 dense, block
1 an MoE layer with 4 routed experts (top-2, sigmoid router, a fast balance-bias update so that
routing changes within the run) of width 6 and one shared expert; each expert sees ~48 tokens per
step, so its gradient is well conditioned. Ranks that differ only in their ``tp`` coordinate read
the same rows of the global batch (``distributed_harness.batch``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distributed_harness import VOCAB, _use_local_shard_newton_schulz, batch, full_params, full_state

GLOBAL_BATCH = 8
TOLERANCE = 1e-5
POISONED = "layers.1.mlp.w_gate.weight"  # TP column-wise and FSDP2-sharded: a 2-D placement


def mesh_model(n_kv_heads: int, kind: str = "dense", experts: int = 4):
    from muonlab.models import ModelConfig, Transformer

    torch.manual_seed(0)
    if kind == "moe":
        config = ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2, ffn_hidden=34, max_seq_len=16,
                             attention="mla", kv_lora_rank=9, v_head_dim=4, n_routed_experts=experts,
                             n_shared_experts=1, top_k=2, expert_ffn_hidden=6, moe_bias_update_rate=0.05)
    else:
        config = ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                             ffn_hidden=34, max_seq_len=16)
    return Transformer(config)


def misfit_error(rank: int, world: int, kind: str = "dense", sizes: dict | None = None, experts: int = 4) -> str:
    """The error ``parallelize`` raises on this rank for ``mesh_model(1, kind, experts)`` (one key/value head in
    the dense model) on the mesh ``sizes`` (default: ``tp = world``)."""
    from muonlab.parallel import init_mesh, parallelize

    try:
        parallelize(mesh_model(1, kind, experts), init_mesh("cpu", **(sizes or {"tp": world})))
    except ValueError as err:
        return str(err)
    return "no error"


def mesh_case(rank: int, world: int, sizes: dict, steps: int, tp_mode: str = "exact", nonfinite: str = "raise",
              nan_at: int | None = None, measure_at: int = 1, n_kv_heads: int = 4, save_dir: str | None = None,
              save_at: int | None = None, load_dir: str | None = None, kind: str = "dense", wrong: bool = False,
              options: dict | None = None, orthogonalize: str = "matrix") -> dict:
    """Train ``mesh_model(n_kv_heads, kind)`` for ``steps`` steps on the mesh ``sizes`` (e.g. ``{"dp_shard": 2,
    "tp": 2}``; empty on one process) with fp32 Newton–Schulz; after each step the MoE balance bias moves
    by the load summed over the data-parallel ranks. ``nan_at``: at that step the last rank's local
    gradient of ``POISONED`` gets a NaN. ``save_dir``/``save_at``: write a DCP checkpoint after step
    ``save_at``; ``load_dir``: start from one. ``wrong``: Newton–Schulz on each rank's own block of
    every sharded matrix (deliberately wrong; patches the engine for the rest of the process).
    ``options``: more ``Muon`` keywords (e.g. ``normuon=True``); ``orthogonalize``: ``param_groups``'.
    Returns initial and final parameters (and balance biases), this rank's optimizer state, the
    losses, the telemetry of step ``measure_at`` (the optimizer's, and the model's routing
    statistics over all steps) and the skipped-step count."""
    from muonlab.optim import Muon, param_groups
    from muonlab.parallel import (
        TELEMETRY_STATISTICS_ATTR,
        data_parallel_group,
        data_parallel_rank,
        data_parallel_size,
        init_mesh,
        parallelize,
        sum_step_statistics,
    )
    from muonlab.rundir.checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

    if wrong:
        _use_local_shard_newton_schulz()
    model = mesh_model(n_kv_heads, kind)
    dp_rank, dp, dp_group = 0, 1, None
    if world > 1:
        mesh = init_mesh("cpu", **sizes)
        parallelize(model, mesh)
        dp_rank, dp, dp_group = data_parallel_rank(mesh), data_parallel_size(mesh), data_parallel_group(mesh)
    optimizer = Muon(param_groups(model, orthogonalize=orthogonalize), lr=0.02, weight_decay=0.1,
                     ns_dtype=torch.float32, max_grad_norm=1.0, tp_mode=tp_mode, nonfinite=nonfinite,
                     **(options or {}))
    start = load_sharded_checkpoint(load_dir, model, optimizer, restore_rng=False)["step"] if load_dir else 0
    initial = {**full_params(model), **_balance_biases(model)}
    per_rank = GLOBAL_BATCH // dp
    losses, telemetry = [], {}
    for t in range(start, start + steps):
        x, y = batch(t, GLOBAL_BATCH)
        rows = slice(dp_rank * per_rank, (dp_rank + 1) * per_rank)
        loss = model(x[rows], y[rows])
        loss.backward()
        if t == nan_at and rank == world - 1:
            grad = dict(model.named_parameters())[POISONED].grad
            (grad._local_tensor if hasattr(grad, "_local_tensor") else grad)[-1, -1] = float("nan")
        if t == measure_at:
            optimizer.measure_next_step()
        optimizer.step()
        if t == measure_at:
            telemetry = dict(optimizer.last_telemetry)
        optimizer.zero_grad(set_to_none=True)
        if dp_group is not None:
            sum_step_statistics(model, group=dp_group)
        model.after_optimizer_step()
        detached = loss.detach().double()
        if world > 1:
            dist.all_reduce(detached)  # tensor-parallel peers hold the same loss: the mean over ranks is the mean
        losses.append(float(detached) / world)
        if save_dir is not None and t + 1 == save_at:
            save_sharded_checkpoint(save_dir, t + 1, model, optimizer, {})
    if dp_group is not None:
        sum_step_statistics(model, TELEMETRY_STATISTICS_ATTR, dp_group)
    telemetry.update(model.telemetry())
    return {"initial": initial, "params": {**full_params(model), **_balance_biases(model)},
            "state": full_state(optimizer), "losses": losses, "telemetry": telemetry,
            "skipped": optimizer.skipped_steps}


def _balance_biases(model) -> dict:
    """Every MoE layer's balance bias (a buffer, equal on every rank), as ``{name: tensor}``."""
    return {name: b.detach().clone() for name, b in model.named_buffers() if name.endswith("balance_bias")}


def run_mesh_plan(rank: int, world: int, plan: list[tuple[str, dict]]) -> dict[str, dict]:
    """Several ``mesh_case`` s in one set of processes: ``{label: result}``."""
    return {label: mesh_case(rank, world, **kwargs) for label, kwargs in plan}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def mismatches(result: dict, reference: dict) -> dict[str, float]:
    """Relative error of each parameter's total update and each optimizer state tensor, worse than TOLERANCE."""
    errors = {}
    for name, final in reference["params"].items():
        errors[name] = _relative(result["params"][name] - result["initial"][name], final - reference["initial"][name])
    assert set(result["state"]) == set(reference["state"]), set(result["state"]) ^ set(reference["state"])
    for key, value in reference["state"].items():
        errors[key] = _relative(result["state"][key], value) if value.ndim else abs(float(result["state"][key] - value))
    return {k: e for k, e in errors.items() if not e <= TOLERANCE}
