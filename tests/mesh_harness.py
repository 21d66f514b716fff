"""One training case on a named device mesh (FSDP2 × tensor parallelism), the same code on one process.

The model is muonlab's own dense ``Transformer``, tiny and with awkward shapes: 4 attention heads
of width 4 (or grouped-query: 2 key/value heads), a SwiGLU width of 34 (17 per TP rank, split
9 + 8 by FSDP2 over two ranks) and a vocabulary of 67. Ranks that differ only in their ``tp``
coordinate read the same rows of the global batch (``distributed_harness.batch``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distributed_harness import VOCAB, batch, full_params, full_state

GLOBAL_BATCH = 8
POISONED = "layers.1.mlp.w_gate.weight"  # TP column-wise and FSDP2-sharded: a 2-D placement


def mesh_model(n_kv_heads: int):
    from muonlab.models import ModelConfig, Transformer

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, ffn_hidden=34,
                         max_seq_len=16)
    return Transformer(config)


def misfit_error(rank: int, world: int) -> str:
    """The error ``parallelize`` raises on this rank for a model with one key/value head on ``tp = world``."""
    from muonlab.parallel import init_mesh, parallelize

    try:
        parallelize(mesh_model(1), init_mesh("cpu", tp=world))
    except ValueError as err:
        return str(err)
    return "no error"


def mesh_case(rank: int, world: int, sizes: dict, steps: int, tp_mode: str = "exact", nonfinite: str = "raise",
              nan_at: int | None = None, measure_at: int = 1, n_kv_heads: int = 4, save_dir: str | None = None,
              save_at: int | None = None, load_dir: str | None = None) -> dict:
    """Train ``mesh_model()`` for ``steps`` steps on the mesh ``sizes`` (e.g. ``{"dp_shard": 2, "tp": 2}``;
    empty on one process) with fp32 Newton–Schulz. ``nan_at``: at that step the last rank's local
    gradient of ``POISONED`` gets a NaN. ``save_dir``/``save_at``: write a DCP checkpoint after step
    ``save_at``; ``load_dir``: start from one. Returns initial and final parameters, this rank's
    optimizer state, the losses, the telemetry of step ``measure_at`` and the skipped-step count."""
    from muonlab.optim import Muon, param_groups
    from muonlab.parallel import data_parallel_rank, data_parallel_size, init_mesh, parallelize
    from muonlab.rundir.checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

    model = mesh_model(n_kv_heads)
    dp_rank, dp = 0, 1
    if world > 1:
        mesh = init_mesh("cpu", **sizes)
        parallelize(model, mesh)
        dp_rank, dp = data_parallel_rank(mesh), data_parallel_size(mesh)
    optimizer = Muon(param_groups(model), lr=0.02, weight_decay=0.1, ns_dtype=torch.float32, max_grad_norm=1.0,
                     tp_mode=tp_mode, nonfinite=nonfinite)
    start = load_sharded_checkpoint(load_dir, model, optimizer, restore_rng=False)["step"] if load_dir else 0
    initial = full_params(model)
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
        detached = loss.detach().double()
        if world > 1:
            dist.all_reduce(detached)  # tensor-parallel peers hold the same loss: the mean over ranks is the mean
        losses.append(float(detached) / world)
        if save_dir is not None and t + 1 == save_at:
            save_sharded_checkpoint(save_dir, t + 1, model, optimizer, {})
    return {"initial": initial, "params": full_params(model), "state": full_state(optimizer), "losses": losses,
            "telemetry": telemetry, "skipped": optimizer.skipped_steps}


def run_mesh_plan(rank: int, world: int, plan: list[tuple[str, dict]]) -> dict[str, dict]:
    """Several ``mesh_case`` s in one set of processes: ``{label: result}``."""
    return {label: mesh_case(rank, world, **kwargs) for label, kwargs in plan}
