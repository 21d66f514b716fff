"""The training loop: one function that reads top to bottom.

data → forward/backward (grad accumulation, autocast) → clip the *raw* gradient → optimizer step
→ lr schedule → log → evaluate → checkpoint. A run is a folder (README "Training runs"):
``config.json`` (the resolved config), ``metrics.jsonl`` and ``checkpoints/``.

Metrics rows carry ``step``, ``tokens``, ``loss`` (mean training loss since the previous row, on
fresh batches), ``lr`` (the learning rate used at that step), ``tokens_per_s``, ``wall_s``
(cumulative time inside the training steps, excluding evaluation and checkpointing, and with
``compile`` the first step, which is mostly compilation and is logged once as ``compile_s``),
``optim_step_ms`` (the optimizer step alone, on this row's step) and, every ``telemetry_every``
steps, the optimizer's telemetry (``update_rms/muon``, ``update_rms/adamw``, per-parameter RMS,
Newton–Schulz orthogonality residual) plus the model's own (``model.telemetry()`` when the model
has it, e.g. MoE expert load); evaluation rows add ``val_loss``, and every ``spectra_every``
steps the SVD entropy of every weight matrix is logged (``svd_entropy/<name>``).

Models may define two hooks: ``telemetry() -> dict[str, float]`` (read and reset on telemetry
steps) and ``after_optimizer_step()`` (non-gradient updates such as an MoE router's
load-balancing bias), called after every optimizer step.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analysis.spectra import svd_entropies
from ..data import Dataset, TokenLoader, prepare_dataset, val_batches
from ..models import ModelConfig, Transformer, preset
from ..optim import Muon, NonFiniteGradientError, param_groups
from ..parallel import Runtime, init_runtime, parallelize, sum_step_statistics
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .metrics import MetricsLogger
from .schedules import make_lr_lambda
from .sharded_checkpoint import save_sharded_checkpoint

__all__ = ["NonFiniteLossError", "RunSummary", "build_model_config", "build_optimizer", "evaluate", "train"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; the weights were not updated with it."""


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    tokens: int
    final_val_loss: float
    tokens_per_s: float
    wall_s: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available; use device='cpu' or 'auto'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model_config(config: TrainConfig, vocab_size: int) -> ModelConfig:
    """The model of a run: the named preset, with the config's overrides applied."""
    overrides: dict[str, Any] = {"mlp": config.mlp, "tie_embeddings": config.tie_embeddings}
    for name in ("d_model", "n_layers", "n_heads"):
        if getattr(config, name):
            overrides[name] = getattr(config, name)
    if "d_model" in overrides and "n_heads" not in overrides:
        overrides["n_heads"] = max(1, config.d_model // 64)  # keep the presets' head_dim of 64
    if "d_model" in overrides or config.mlp != "swiglu":
        overrides["ffn_hidden"] = None  # re-derive the MLP width from the final d_model and MLP type
    model_name: str | int = int(config.model) if config.model.isdigit() else config.model
    return preset(model_name, vocab_size=vocab_size, max_seq_len=config.seq_len, **overrides)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> Muon:
    """Muon on hidden matrices + AdamW elsewhere, or AdamW everywhere (``optimizer='adamw'``).

    Both use the same class, so the AdamW arithmetic and telemetry are identical between them.
    """
    overrides = {} if config.decay_norms else {"norm": {"weight_decay": 0.0}}
    groups = param_groups(model, role_overrides=overrides)
    if config.optimizer == "adamw":
        for group in groups:
            group["algorithm"] = "adamw"
    return Muon(
        groups,
        lr=config.lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        nesterov=config.nesterov,
        ns_steps=config.ns_steps,
        ns_coefficients=config.ns_coefficients,
        ns_dtype=config.ns_dtype,
        scale=config.scale,
        adamw_betas=(config.beta1, config.beta2),
        adamw_eps=config.adam_eps,
        max_grad_norm=config.grad_clip,  # clipped inside the step, where ZeRO-1/FSDP hold the reduced gradient
    )


def _lr_lambda(config: TrainConfig, total_steps: int):
    warmup = min(config.warmup_steps, max(0, total_steps - 1))
    if config.schedule == "cosine":
        return make_lr_lambda("warmup_cosine", warmup_steps=warmup, total_steps=total_steps,
                              final_ratio=config.final_lr_ratio)
    if config.schedule == "wsd":
        return make_lr_lambda("warmup_stable_decay", warmup_steps=warmup, total_steps=total_steps,
                              decay_fraction=config.decay_fraction, final_ratio=config.final_lr_ratio)
    return make_lr_lambda("constant", warmup_steps=warmup)


def _autocast(config: TrainConfig, device: torch.device):
    if config.dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, config: TrainConfig, device: torch.device,
             runtime: Runtime | None = None) -> float:
    """Mean loss over the fixed validation batches (the same batches at every evaluation).

    With several processes the batches are the single-process ones (``batch_size · world_size``
    windows); each rank evaluates its slice of rows and the row-weighted means are summed across
    ranks, so the result equals the single-process value.
    """
    world, rank = (runtime.world_size, runtime.rank) if runtime is not None else (1, 0)
    was_training = model.training
    model.eval()
    total, batches = 0.0, 0
    for x, y in val_batches(data.val_tokens, config.batch_size * world, config.seq_len, config.eval_batches):
        lo, hi = rank * len(x) // world, (rank + 1) * len(x) // world
        rows = slice(lo, hi) if hi > lo else slice(0, 1)  # a rank with no rows still joins FSDP's collectives
        with _autocast(config, device):
            loss = float(model(x[rows].to(device), y[rows].to(device)))
        total += loss * (hi - lo) / len(x)
        batches += 1
    model.train(was_training)
    return world * (runtime.mean(total) if runtime is not None else total) / batches


def _write_config(run_dir: Path, record: dict[str, Any]) -> None:
    tmp = run_dir / f".config.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, run_dir / "config.json")


def train(config: TrainConfig, command: str | None = None) -> RunSummary:
    """Train one model as ``config`` says, in ``config.run_dir``; resume if a checkpoint exists.

    Under ``torchrun`` with ``config.parallel`` set, every process runs this function: rank r
    takes the r-th ``batch_size`` slice of each global batch, the model is wrapped by
    ``muonlab.parallel.parallelize``, rank 0 alone writes the config, metrics and progress
    (losses averaged over ranks), and checkpoints are sharded (any world size can resume them).
    """
    runtime = init_runtime(config.parallel, config.device)
    runtime.require_same(config.to_dict(), "config")  # ranks launched with different settings stop here
    device = runtime.device
    if runtime.distributed and runtime.mode == "fsdp" and config.spectra_every:
        raise ValueError("spectra_every needs whole weight matrices, which FSDP2 shards across ranks; use "
                         "parallel='ddp' or 'zero1' for SVD-entropy logging, or spectra_every=0")
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    # ---- data (rank 0 builds the cached shards and tokenizer first; the others then read them)
    if not runtime.is_main:
        runtime.barrier()
    data = prepare_dataset(config.corpus, tokenizer=config.tokenizer, vocab_size=config.vocab_size,
                           val_fraction=config.val_fraction)
    if runtime.is_main:
        runtime.barrier()
    loader = TokenLoader(data.train_tokens, config.batch_size, config.seq_len, seed=config.seed,
                         rank=runtime.rank, world_size=runtime.world_size)

    # ---- model and optimizer
    model_config = build_model_config(config, data.vocab_size)
    model = Transformer(model_config).to(device)
    forward = parallelize(model, runtime.mode)
    forward = torch.compile(forward) if config.compile else forward
    optimizer = build_optimizer(model, config)
    total_steps = config.total_steps(runtime.world_size)
    tokens_per_step = config.tokens_per_step(runtime.world_size)

    # ---- resume
    start_step, tokens, wall_s = 0, 0, 0.0
    checkpoint = latest_checkpoint(run_dir) if config.resume else None
    if not config.resume and (latest_checkpoint(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise ValueError(f"run folder {run_dir} already holds a run; pass resume=True to continue it, "
                         "or choose a new run_dir (nothing was changed)")
    if command is None and (run_dir / "config.json").exists():
        command = json.loads((run_dir / "config.json").read_text()).get("command")
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer)
        start_step, tokens, wall_s = state["step"], state["tokens"], state["wall_s"]
        loader.load_state_dict(state["loader"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps),
                                                  last_epoch=start_step - 1)
    if runtime.is_main:
        _write_config(run_dir, {
            **config.to_dict(),
            "model_config": model_config.to_dict(),
            "num_params": model_config.num_params(),
            "num_non_embedding_params": model_config.num_non_embedding_params(),
            "num_active_params": model_config.num_active_params(),  # = num_params unless MoE
            "flops_per_token": model_config.flops_per_token(config.seq_len),
            "tokens_per_step": tokens_per_step,
            "total_steps": total_steps,
            "dataset": data.describe(),
            "device": str(device),
            "torch": torch.__version__,
            "world_size": runtime.world_size,
            "command": command,
        })

    def checkpoint_now(step: int) -> None:
        save = save_sharded_checkpoint if runtime.distributed else save_checkpoint
        save(run_dir, step, model, optimizer, {"tokens": tokens, "wall_s": wall_s, "loader": loader.state_dict()},
             keep=config.keep_checkpoints)

    # ---- train
    logger = (MetricsLogger(run_dir, resume_step=start_step if checkpoint else None, tensorboard=config.tensorboard)
              if runtime.is_main else None)
    bar = tqdm(total=total_steps, initial=start_step, disable=not (config.progress and runtime.is_main),
               desc=run_dir.name, unit="step", dynamic_ncols=True)
    loss_sum, loss_count, interval_tokens, interval_time = torch.zeros((), device=device), 0, 0, 0.0
    val_loss = math.nan
    compile_s: float | None = None
    model.train()
    try:
        for step in range(start_step + 1, total_steps + 1):
            started = time.perf_counter()
            for _ in range(config.grad_accum):
                x, y = loader.next_batch()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(config, device):
                    loss = forward(x, y)
                (loss / config.grad_accum).backward()
                loss_sum += loss.detach()
                loss_count += 1
            measure = config.telemetry_every > 0 and (step % config.telemetry_every == 0 or step == 1)
            if measure:
                optimizer.measure_next_step()
            lr = optimizer.param_groups[0]["lr"]
            log_now = step % config.log_every == 0 or step == total_steps
            if log_now and device.type == "cuda":
                torch.cuda.synchronize()
            opt_started = time.perf_counter()
            try:
                optimizer.step()
            except NonFiniteGradientError:
                raise NonFiniteLossError(
                    f"step {step}: the loss or gradient became NaN/inf (loss {loss.item():.4g}); the weights "
                    f"were not updated, and the last good checkpoint in {run_dir / 'checkpoints'} is kept — "
                    "lower lr or raise warmup_steps"
                ) from None
            if log_now and device.type == "cuda":
                torch.cuda.synchronize()
            optim_ms = (time.perf_counter() - opt_started) * 1e3
            if hasattr(model, "after_optimizer_step"):
                if runtime.distributed:
                    sum_step_statistics(model)  # e.g. MoE expert loads: every rank sees the global count
                model.after_optimizer_step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += tokens_per_step
            elapsed = time.perf_counter() - started
            if config.compile and step == start_step + 1:
                compile_s = elapsed  # the first compiled step is mostly compilation: logged, not timed
            else:
                interval_tokens += tokens_per_step
                wall_s += elapsed
                interval_time += elapsed
            bar.update(1)

            row: dict[str, Any] = {}
            if log_now:
                mean_loss = runtime.mean(loss_sum) / loss_count
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(
                        f"step {step}: the training loss is {mean_loss}; the last good checkpoint in "
                        f"{run_dir / 'checkpoints'} is kept — lower lr or raise warmup_steps"
                    )
                row.update(tokens=tokens, loss=mean_loss, lr=lr, wall_s=wall_s, optim_step_ms=optim_ms)
                if interval_time > 0:
                    row["tokens_per_s"] = interval_tokens / interval_time
                    bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{interval_tokens / interval_time:,.0f}")
                if compile_s is not None:
                    row["compile_s"], compile_s = compile_s, None
                loss_sum.zero_()
                loss_count, interval_tokens, interval_time = 0, 0, 0.0
            if measure:
                row.update(optimizer.last_telemetry)
                if hasattr(model, "telemetry"):
                    row.update(model.telemetry())
            if config.spectra_every and (step % config.spectra_every == 0 or step == total_steps) and runtime.is_main:
                row.update(svd_entropies(model))
            if step % config.eval_every == 0 or step == total_steps:
                val_loss = evaluate(model, data, config, device, runtime)  # eager: no second compiled graph
                row.update(val_loss=val_loss, tokens=tokens, wall_s=wall_s)
            if row and logger is not None:
                logger.log(step, row)
            if step == total_steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
                checkpoint_now(step)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if start_step >= total_steps and math.isnan(val_loss):
        val_loss = evaluate(model, data, config, device, runtime)  # eager: no second compiled graph
    # Release the wrappers that hold the process group (DDP's reducer, the optimizer's async
    # collectives) before leaving it, so no communication thread outlives the group.
    del forward, optimizer
    runtime.shutdown()
    return RunSummary(run_dir, total_steps, tokens, val_loss, tokens / wall_s if wall_s else 0.0, wall_s)
