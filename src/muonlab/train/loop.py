"""The training loop: one function that reads top to bottom.

run-folder decision (before any work) → runtime → data → model and optimizer → resume → then each
step: data → forward/backward (grad accumulation, autocast) → clip the *raw* gradient → optimizer
step → lr schedule → log → evaluate → checkpoint. A run is a folder (README "Training runs"):
``config.json`` (the resolved config), ``metrics.jsonl`` and ``checkpoints/``.

Metrics rows carry ``step``, ``tokens``, ``loss`` (mean training loss since the previous row, on
fresh batches), ``lr`` (the learning rate used at that step), ``tokens_per_s``, ``wall_s``
(cumulative time inside the training steps, excluding evaluation and checkpointing, and with
``compile`` the first step, which is mostly compilation and is logged once as ``compile_s``),
``optim_step_ms`` (the optimizer step alone, on this row's step) and, every ``telemetry_every``
steps, the optimizer's telemetry (``update_rms/muon``, ``update_rms/adamw``, per-parameter RMS,
Newton–Schulz orthogonality residual, the max attention logit per layer ``max_logit/layer{i}``
on that step's batch), the weight RMS per parameter type ``weight_rms/<type>`` and each block's
output RMS on that step's batch ``output_rms/layer{i}`` (``weight_telemetry``), plus the model's
own (``model.telemetry()`` when the model has it, e.g. MoE expert load); with QK-Clip on
(``qk_clip_tau``), every logged row has the step's ``max_logit/layer{i}`` (before clipping),
``qk_clip/heads_clipped`` and ``qk_clip/min_gamma``; evaluation rows add ``val_loss``, and every
``spectra_every`` steps the SVD entropy of every weight matrix is logged (``svd_entropy/<name>``).

Models may define two hooks: ``telemetry() -> dict[str, float]`` (read and reset on telemetry
steps) and ``after_optimizer_step()`` (non-gradient updates such as an MoE router's
load-balancing bias), called after every optimizer step.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Dataset, TokenLoader
from ..data.sft import SFTData
from ..models import IGNORE_INDEX, ModelConfig, Transformer, model_config_for, mup
from ..optim import Muon, NonFiniteGradientError, QKClip, param_groups
from ..parallel import TELEMETRY_STATISTICS_ATTR, Runtime, parallelize, sum_step_statistics
from ..rundir import MetricsLogger, write_config
from ..rundir.checkpoint import checkpoint_dir_name, save_checkpoint
from ..rundir.finished import clear_finished, write_finished
from ..spectra import svd_entropies
from .bookkeeping import Interval, Progress
from .config import TrainConfig
from .init_source import read_init_source
from .inputs import build_data
from .resume import checkpoint_trainer_state, resume_run
from .run_folder import check_run_folder, hold_run_folder
from .schedules import make_lr_lambda, shortened_warmup, warmup_notice
from .start import start_runtime
from .weight_telemetry import take_output_rms, track_output_rms, weight_rms

__all__ = [
    "NonFiniteLossError",
    "RunSummary",
    "Training",
    "build_model_config",
    "build_optimizer",
    "build_training",
    "evaluate",
    "train",
]


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


@dataclass
class Training:
    """What a run trains with, built by ``build_training``."""

    data: Dataset | SFTData
    loader: TokenLoader
    model_config: ModelConfig
    model: torch.nn.Module
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """The model as the training steps call it: parallelized, and compiled with ``config.compile``."""
    optimizer: Muon
    total_steps: int
    tokens_per_step: int
    """Tokens of one optimizer step, over all processes."""


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
    """The model of a run: its preset with its overrides (``muonlab.models.model_config_for``)."""
    return model_config_for(config.model, vocab_size, config.seq_len, d_model=config.d_model,
                            n_layers=config.n_layers, n_heads=config.n_heads, mlp=config.mlp,
                            tie_embeddings=config.tie_embeddings, parametrization=config.parametrization,
                            mup_base_width=config.mup_base_width, mup_base_head_dim=config.mup_base_head_dim)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> Muon:
    """Muon on hidden matrices + AdamW elsewhere, or AdamW everywhere (``optimizer='adamw'``).

    Both use the same class, so the AdamW arithmetic and telemetry are identical between them; both
    carry a ``QKClip`` (clipping with ``qk_clip_tau`` > 0, else measuring max logits on request).
    A muP model's groups start at lr × their role's factor (``muonlab.models.mup.lr_overrides``).
    """
    overrides = mup.lr_overrides(model.config, config.lr) if isinstance(model, Transformer) else {}
    if not config.decay_norms:
        overrides.setdefault("norm", {})["weight_decay"] = 0.0
    groups = param_groups(model, role_overrides=overrides, orthogonalize=config.orthogonalize)
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
        update_rms=config.update_rms,
        adamw_betas=(config.beta1, config.beta2),
        adamw_eps=config.adam_eps,
        max_grad_norm=config.grad_clip,  # clipped inside the step, where ZeRO-1/FSDP hold the reduced gradient
        normuon=config.normuon,
        normuon_beta2=config.normuon_beta2,
        cautious_wd=config.cautious_wd, compile=config.compile,  # compile: also cautious decay's and NorMuon's passes
        qk_clip=QKClip(model, tau=config.qk_clip_tau or None),
    )


def _lr_lambda(config: TrainConfig, schedule_steps: int):
    """The lr multiplier per step of a ``schedule_steps``-step schedule (``TrainConfig.schedule_steps``);
    a warmup as long as the schedule is shortened to end one step before it, with a warning."""
    warmup = shortened_warmup(config.warmup_steps, schedule_steps)
    if warmup != config.warmup_steps:
        warnings.warn(warmup_notice(config.warmup_steps, schedule_steps), stacklevel=2)
    if config.schedule == "cosine":
        return make_lr_lambda("warmup_cosine", warmup_steps=warmup, total_steps=schedule_steps,
                              final_ratio=config.final_lr_ratio)
    if config.schedule in ("wsd", "linear"):  # linear: WSD whose decay is the whole run after warmup
        decay_fraction = 1.0 if config.schedule == "linear" else config.decay_fraction
        return make_lr_lambda("warmup_stable_decay", warmup_steps=warmup, total_steps=schedule_steps,
                              decay_fraction=decay_fraction, final_ratio=config.final_lr_ratio)
    return make_lr_lambda("constant", warmup_steps=warmup)


def _schedule_lr(optimizer: Muon) -> float:
    """The schedule's lr at this step: group 0's lr without its muP factor (``mup.lr_overrides``)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_factor", 1.0)


def _autocast(config: TrainConfig, device: torch.device):
    if config.dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset | SFTData, config: TrainConfig, device: torch.device,
             runtime: Runtime | None = None) -> float:
    """Mean over the fixed validation batches (the same at every evaluation) of each batch's mean loss
    per counted target: every target in pretraining, the response targets with ``task='sft'``.

    With several processes the batches are the single-process ones (``batch_size · dp_size``
    windows); each data shard evaluates its slice of rows and the slice means, weighted by the
    slice's share of the batch's counted targets, are summed across shards, so the result equals
    the single-process value (tensor-parallel peers evaluate the same slice; the mean over ranks
    counts each slice equally often).
    """
    world, rank = (runtime.dp_size, runtime.dp_rank) if runtime is not None else (1, 0)
    was_training = model.training
    model.eval()
    total, batches = 0.0, 0
    for x, y in data.val_batches(config.batch_size * world, config.seq_len, config.eval_batches):
        lo, hi = rank * len(x) // world, (rank + 1) * len(x) // world
        rows = slice(lo, hi) if hi > lo else slice(0, 1)  # a rank with no rows still joins FSDP's collectives
        with _autocast(config, device):
            loss = float(model(x[rows].to(device), y[rows].to(device)))
        counted = y != IGNORE_INDEX
        share = int(counted[lo:hi].sum())  # 0: no rows here, or (fine-tuning) no response among them
        total += loss * share / int(counted.sum()) if share else 0.0
        batches += 1
    model.train(was_training)
    return world * (runtime.mean(total) if runtime is not None else total) / batches


def _run_record(config: TrainConfig, training: Training, runtime: Runtime, command: str | None,
                resumes: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``config.json`` holds: the config, the resolved model and its counts, the data, the machine,
    and one entry per resume (its step and checkpoint, the process count then and at the save, the
    damaged checkpoints it skipped)."""
    model_config = training.model_config
    return {
        **config.to_dict(),
        "model_config": model_config.to_dict(),
        "num_params": model_config.num_params(),
        "num_non_embedding_params": model_config.num_non_embedding_params(),
        "num_active_params": model_config.num_active_params(),  # = num_params unless MoE
        "flops_per_token": model_config.flops_per_token(config.seq_len),
        "tokens_per_step": training.tokens_per_step,
        "total_steps": training.total_steps,
        "schedule_steps": config.schedule_steps(runtime.dp_size),
        "dataset": training.data.describe(),
        "train_split_tokens": len(training.data.train_tokens),  # one epoch: reports count the epochs trained
        "device": str(runtime.device),
        "torch": torch.__version__,
        "world_size": runtime.world_size,
        "command": command,
        "resumes": resumes,
    }


def build_training(config: TrainConfig, runtime: Runtime) -> Training:
    """The data, model and optimizer of a run, the model on ``runtime.device``, parallelized and
    (with ``config.compile``) compiled.

    Rank 0 builds the cached tokenizer and token shards first; the other ranks then read them.
    """
    if not runtime.is_main:
        runtime.barrier()
    # init_from: a run folder or a Hugging Face model folder gives the tokenizer, model config and weights
    source = read_init_source(config.init_from, config.seq_len) if config.init_from else None
    data, loader = build_data(config, runtime, source.tokenizer if source else None)
    if runtime.is_main:
        runtime.barrier()
    model_config = source.model_config if source else build_model_config(config, data.vocab_size)
    model = Transformer(model_config)
    if source is not None:
        source.load_into(model)
    model = model.to(runtime.device)
    forward = parallelize(model, runtime.parallelism)
    forward = torch.compile(forward) if config.compile else forward
    return Training(data, loader, model_config, model, forward, build_optimizer(model, config),
                    config.total_steps(runtime.dp_size), config.tokens_per_step(runtime.dp_size))


def _train_step(step: int, config: TrainConfig, training: Training, runtime: Runtime, interval: Interval,
                measure: bool, synchronize: bool) -> float:
    """One optimizer step: forward/backward over ``grad_accum`` fresh micro-batches, then the
    optimizer step (which clips the raw gradient) and the model's ``after_optimizer_step`` hook.

    Returns the optimizer step's milliseconds (with ``synchronize``, CUDA work included).
    """
    device = runtime.device
    if measure:
        training.optimizer.qk_clip.measure_next_step()  # max logits of this step's forwards
        track_output_rms(training.model)  # and every block's output RMS
    for _ in range(config.grad_accum):
        x, y = training.loader.next_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(config, device):
            loss = training.forward(x, y)
        (loss / config.grad_accum).backward()
        interval.add_loss(loss)
    if measure:
        training.optimizer.measure_next_step()
    if synchronize and device.type == "cuda":
        torch.cuda.synchronize()
    opt_started = time.perf_counter()
    try:
        training.optimizer.step()
    except NonFiniteGradientError:
        raise NonFiniteLossError(
            f"step {step}: the loss or gradient became NaN/inf (loss {loss.item():.4g}); the weights "
            f"were not updated, and the last good checkpoint in {Path(config.run_dir) / 'checkpoints'} is kept — "
            "lower lr or raise warmup_steps"
        ) from None
    if synchronize and device.type == "cuda":
        torch.cuda.synchronize()
    optim_ms = (time.perf_counter() - opt_started) * 1e3
    model = training.model
    if hasattr(model, "after_optimizer_step"):
        if runtime.distributed:
            sum_step_statistics(model, group=runtime.dp_group)  # e.g. MoE expert loads: the global batch's
        model.after_optimizer_step()
    return optim_ms


def _log_keys(step: int, lr: float, optim_ms: float, progress: Progress, interval: Interval, runtime: Runtime,
              run_dir: Path) -> dict[str, Any]:
    """The keys of a logging step's metrics row; the interval they summarise ends here."""
    mean_loss, timing = interval.take(runtime)
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(
            f"step {step}: the training loss is {mean_loss}; the last good checkpoint in "
            f"{run_dir / 'checkpoints'} is kept — lower lr or raise warmup_steps"
        )
    return dict(tokens=progress.tokens, loss=mean_loss, lr=lr, wall_s=progress.wall_s, optim_step_ms=optim_ms,
                **timing)


def _save(run_dir: Path, config: TrainConfig, training: Training, progress: Progress, interval: Interval,
          runtime: Runtime) -> None:
    """Checkpoint the run at ``progress.step`` (sharded, every rank writing, when several processes train),
    with the logging interval's summed losses so far (averaged over ranks: every rank resumes with it) and
    what a resume is checked against (``resume.checkpoint_trainer_state``)."""
    save_checkpoint(run_dir, progress.step, training.model, training.optimizer,
                    {"tokens": progress.tokens, "wall_s": progress.wall_s, "loader": training.loader.state_dict(),
                     **interval.state_dict(runtime),
                     **checkpoint_trainer_state(config, training.data, runtime.dp_size)},
                    keep=config.keep_checkpoints, sharded=runtime.distributed)


def _telemetry_keys(step: int, config: TrainConfig, training: Training, runtime: Runtime, measure: bool,
                    log_now: bool) -> dict[str, Any]:
    """Optimizer, attention and model telemetry for this step's metrics row (empty on most steps)."""
    keys: dict[str, Any] = {}
    if log_now or measure:
        keys.update(training.optimizer.qk_clip.stats())  # every step with QK-Clip on, else telemetry steps
    if measure:
        keys.update(training.optimizer.last_telemetry)
        keys.update(take_output_rms(training.model))
        keys.update(weight_rms(training.model))  # after the step's update
        if hasattr(training.model, "telemetry"):
            if runtime.distributed:  # e.g. MoE routing statistics: the global batch's, as on one process
                sum_step_statistics(training.model, TELEMETRY_STATISTICS_ATTR, runtime.dp_group)
            keys.update(training.model.telemetry())
    last = step == training.total_steps
    if config.spectra_every and (step % config.spectra_every == 0 or last) and runtime.is_main:
        keys.update(svd_entropies(training.model))
    return keys


def _train_steps(config: TrainConfig, training: Training, runtime: Runtime, progress: Progress, interval: Interval,
                 run_dir: Path) -> float:
    """Train from ``progress.step`` to the last step: log, evaluate and checkpoint as ``config`` says.

    Returns the last validation loss (NaN when no step was left to train)."""
    total_steps, start_step = training.total_steps, progress.step
    schedule = _lr_lambda(config, config.schedule_steps(runtime.dp_size))  # may outlast total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(training.optimizer, schedule, last_epoch=start_step - 1)
    # From step 0 too: rows of an attempt killed before its first checkpoint are dropped, not repeated.
    logger = (MetricsLogger(run_dir, resume_step=start_step, tensorboard=config.tensorboard)
              if runtime.is_main else None)
    bar = tqdm(total=total_steps, initial=start_step, disable=not (config.progress and runtime.is_main),
               desc=run_dir.name, unit="step", dynamic_ncols=True)
    val_loss = math.nan
    training.model.train()
    try:
        for step in range(start_step + 1, total_steps + 1):
            started = time.perf_counter()
            measure = config.telemetry_every > 0 and (step % config.telemetry_every == 0 or step == 1)
            log_now = step % config.log_every == 0 or step == total_steps
            lr = _schedule_lr(training.optimizer)
            optim_ms = _train_step(step, config, training, runtime, interval, measure, synchronize=log_now)
            scheduler.step()
            training.optimizer.zero_grad(set_to_none=True)
            progress.step, progress.tokens = step, progress.tokens + training.tokens_per_step
            progress.wall_s += interval.end_step(training.tokens_per_step, time.perf_counter() - started,
                                                 compiling=config.compile and step == start_step + 1)
            bar.update(1)

            row: dict[str, Any] = {}
            if log_now:
                row.update(_log_keys(step, lr, optim_ms, progress, interval, runtime, run_dir))
                if "tokens_per_s" in row:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}")
            row.update(_telemetry_keys(step, config, training, runtime, measure, log_now))
            if step % config.eval_every == 0 or step == total_steps:
                val_loss = evaluate(training.model, training.data, config, runtime.device, runtime)  # eager
                row.update(val_loss=val_loss, tokens=progress.tokens, wall_s=progress.wall_s)
            if row and logger is not None:
                logger.log(step, row)
            if step == total_steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
                _save(run_dir, config, training, progress, interval, runtime)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    return val_loss


def _train_in(run_dir: Path, config: TrainConfig, previous: dict[str, Any] | None, command: str | None
              ) -> RunSummary:
    """``train`` once the run folder is claimed and locked: build, resume, train, record that it finished."""
    runtime = start_runtime(config)
    seed_everything(config.seed)
    training = build_training(config, runtime)  # data, model, optimizer
    total_steps = training.total_steps
    interval = Interval(torch.zeros((), device=runtime.device))
    progress, resumed = (resume_run(run_dir, config, training, runtime, interval, previous) if config.resume
                         else (Progress(), None))
    if runtime.is_main:
        resumes = [*(previous or {}).get("resumes", []), *([resumed] if resumed else [])]
        write_config(run_dir, _run_record(config, training, runtime, command, resumes))
        if progress.step < total_steps:
            clear_finished(run_dir)  # it trains again (e.g. from an older checkpoint): not finished until the end
    val_loss = _train_steps(config, training, runtime, progress, interval, run_dir)
    if math.isnan(val_loss):
        val_loss = evaluate(training.model, training.data, config, runtime.device, runtime)  # eager: no second graph
    if runtime.is_main:
        write_finished(run_dir, progress.step, total_steps, progress.tokens, checkpoint_dir_name(progress.step),
                       val_loss)
    # Release the wrappers that hold the process group (DDP's reducer, the optimizer's async
    # collectives) before leaving it, so no communication thread outlives the group.
    del training
    runtime.shutdown()
    tokens, wall_s = progress.tokens, progress.wall_s
    return RunSummary(run_dir, total_steps, tokens, val_loss, tokens / wall_s if wall_s else 0.0, wall_s)


def train(config: TrainConfig, command: str | None = None) -> RunSummary:
    """Train one model as ``config`` says, in ``config.run_dir``; resume if a checkpoint exists.

    A folder that is not muonlab's to write, or that holds another run (``run_folder.check_run_folder``),
    stops the run before any work; so does another process writing it (the folder's writer lock,
    held for the whole run). Resuming starts from the newest intact checkpoint, only with the
    config and data it was saved with (``resume.resume_run``); a run that reaches its last step
    records so in ``finished.json`` (:mod:`muonlab.rundir.finished`). Under ``torchrun`` with
    ``config.parallel`` set, every process runs this function: rank r takes the r-th
    ``batch_size`` slice of each global batch, the model is wrapped by
    ``muonlab.parallel.parallelize``, rank 0 alone writes the config, metrics and progress
    (losses averaged over ranks), and checkpoints are sharded (any world size can resume them).
    """
    previous = check_run_folder(config)  # before any work: a folder holding another run stops here
    if command is None and previous is not None:
        command = previous.get("command")
    with hold_run_folder(config, command or "muonlab.train.train") as run_dir:
        return _train_in(run_dir, config, previous, command)
