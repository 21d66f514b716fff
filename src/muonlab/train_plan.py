"""What a ``muonlab train`` / ``muonlab sft`` command is about to do, said before its first step.

:func:`plan_line` gives the model's size, the tokens and steps, and the wall time estimated from this
machine's calibration (``$MUONLAB_CACHE/calibration.json``, written by ``muonlab experiment NAME
--dry-run``; see :mod:`muonlab.experiments.calibration`): the cached probes of the same device,
dtype, compile setting and optimizer are interpolated in FLOPs per step as a study's ``--dry-run``
does, and the run is costed as :func:`muonlab.experiments.estimate.run_seconds` costs
one. Without such probes the line says so instead of guessing.

:func:`sft_epochs_tokens` turns ``muonlab sft --epochs N`` into a token budget: N passes over the
packed training conversations.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from .train.config import ConfigError, TrainConfig

__all__ = ["EPOCHS_WARNING", "data_parallel_size", "estimated_seconds", "plan_line", "sft_epochs_tokens"]

EPOCHS_WARNING = 4.0
"""More passes over the fine-tuning data than this draw a warning: the model may memorise the set."""

_SAME_SPEED_CLASS = ("device", "dtype", "compile", "optimizer", "ns_dtype", "parallel")
"""Probe fields that must match the run's for its step time to be interpolated from them."""


def data_parallel_size(config: TrainConfig) -> int:
    """The data shards of a run launched in this environment (``WORLD_SIZE`` processes, for torchrun)."""
    if config.parallel == "mesh":
        return config.dp_shard * config.ep
    return int(os.environ.get("WORLD_SIZE", "1")) if config.parallel != "none" else 1


def _model(config: TrainConfig):
    from .models import model_config_for

    if config.init_from:
        from .train.init_source import read_init_source

        return read_init_source(config.init_from, config.seq_len).model_config
    vocab = 257 if config.tokenizer == "byte" else config.vocab_size
    return model_config_for(config.model, vocab, config.seq_len, d_model=config.d_model, n_layers=config.n_layers,
                            n_heads=config.n_heads, mlp=config.mlp, tie_embeddings=config.tie_embeddings,
                            parametrization=config.parametrization, mup_base_width=config.mup_base_width,
                            mup_base_head_dim=config.mup_base_head_dim)


def _probes(config: TrainConfig) -> list[tuple[float, object]]:
    """(FLOPs per step, Measurement) of this machine's cached probes in the run's speed class."""
    from .data.dataset import default_cache_dir
    from .experiments.calibration import CACHE_FILE, Measurement
    from .experiments.estimate import run_flops_per_step
    from .experiments.provenance import machine_key

    try:
        cache = json.loads((default_cache_dir() / CACHE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    entries = cache.get(machine_key(config.device), {}) if isinstance(cache, dict) else {}
    names = {f.name for f in dataclasses.fields(Measurement)}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    points = []
    for key, measured in entries.items():
        try:
            probe = json.loads(key)
            probe_config = TrainConfig.from_dict({k: v for k, v in probe.items() if k in fields})
        except (json.JSONDecodeError, ConfigError, AttributeError):
            continue  # a cache written by another muonlab version
        if isinstance(measured, dict) and set(measured) == names and all(
                getattr(probe_config, k) == getattr(config, k) for k in _SAME_SPEED_CLASS):
            points.append((run_flops_per_step(probe_config), Measurement(**measured)))
    return points


def _interpolate(points: Sequence[tuple[float, object]], flops: float):
    """Between the probes, as a study's estimate interpolates (a power law in FLOPs per step between the
    two around the run); outside them all, the nearest probe alone (probes of other studies' models
    need not bracket this one, and a power law carried far past them is a guess)."""
    from .experiments.estimate import interpolate_measurement

    if all(f < flops for f, _ in points) or all(f > flops for f, _ in points):
        return min(points, key=lambda p: abs(p[0] - flops))[1]
    return interpolate_measurement(points, flops)


def estimated_seconds(config: TrainConfig) -> float | None:
    """The run's wall time on this machine from the calibration cache; None when nothing comparable is cached."""
    from .experiments.estimate import run_flops_per_step, run_seconds

    points = _probes(config)
    if not points:
        return None
    return run_seconds(config, _interpolate(points, run_flops_per_step(config)), 0, separate_process=False)


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s" if minutes else f"{s} s"


def plan_line(config: TrainConfig) -> str:
    """``plan: MODEL (N parameters), T tokens in S steps of B tokens; estimated wall time W on this machine``."""
    model = _model(config)
    dp = data_parallel_size(config)
    steps, per_step = config.total_steps(dp), config.tokens_per_step(dp)
    size = f"{model.num_params() / 1e6:.2f}M parameters"
    if model.num_active_params() != model.num_params():
        size += f", {model.num_active_params() / 1e6:.2f}M active"
    head = "tied" if model.tie_embeddings else "untied"
    seconds = estimated_seconds(config) if dp == 1 and not config.init_from else None
    when = (f"estimated wall time {_duration(seconds)} on this machine (from its calibration)" if seconds is not None
            else "no wall-time estimate yet: `muonlab experiment demo --dry-run` calibrates this machine once")
    return (f"plan: model {config.model!r} ({size}, {head} head), {steps * per_step:,} tokens in {steps:,} steps of "
            f"{per_step:,} tokens; {when}")


def sft_epochs_tokens(config: TrainConfig, epochs: float) -> tuple[int, int]:
    """``(train_tokens, tokens of one pass)`` for ``epochs`` passes over ``config``'s packed training
    conversations (built with the ``init_from`` model's tokenizer, and cached as the run will use them)."""
    from .data.sft import prepare_sft
    from .train.init_source import read_init_source

    if not epochs > 0:
        raise ConfigError(f"epochs={epochs} is not valid; give a positive number of passes over the data, e.g. 1")
    tokenizer = read_init_source(config.init_from, config.seq_len).tokenizer
    one_pass = len(prepare_sft(config.corpus, tokenizer, config.seq_len, config.val_fraction).train_tokens)
    return max(config.tokens_per_step(data_parallel_size(config)), round(epochs * one_pass)), one_pass
