"""``muonlab train`` and ``muonlab sft``: every ``TrainConfig`` field as a flag, grouped as a reader looks for them.

Values come from ``TrainConfig``'s defaults (updated by the command's own, e.g. ``SFT_DEFAULTS``),
then ``--config FILE``, then flags. On/off fields are ``--flag`` / ``--no-flag`` (``--flag true|false`` still
works, :func:`fold_bool_values`, so commands recorded in older run folders reproduce), fields with a fixed
set of values list them, and the help of every size says whether it counts per process, per data
shard or over all of them. Before the first step the command prints its plan (:mod:`muonlab.train_plan`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

from .console import say_once

__all__ = ["FLAG_GROUPS", "add_train_parser", "cmd_train", "fold_bool_values"]

FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "run folder": ("run_dir", "resume", "allow_new_data"),
    "data": ("task", "corpus", "tokenizer", "vocab_size", "val_fraction"),
    "model": ("model", "d_model", "n_layers", "n_heads", "mlp", "tie_embeddings", "parametrization", "mup_base_width",
              "mup_base_head_dim", "init_from"),
    "batch and budget": ("seq_len", "batch_size", "grad_accum", "train_tokens"),
    "optimizer": ("optimizer", "lr", "weight_decay", "decay_norms", "momentum", "nesterov", "ns_steps",
                  "ns_coefficients", "ns_dtype", "orthogonalize", "normuon", "normuon_beta2", "scale", "update_rms",
                  "cautious_wd", "beta1", "beta2", "adam_eps", "grad_clip", "qk_clip_tau"),
    "schedule": ("schedule", "warmup_steps", "final_lr_ratio", "decay_fraction", "schedule_tokens"),
    "device and numerics": ("device", "dtype", "compile", "threads", "seed"),
    "parallelism (under torchrun)": ("parallel", "dp_shard", "tp", "ep"),
    "logging, evaluation and checkpoints": ("log_every", "telemetry_every", "eval_every", "eval_batches",
                                            "spectra_every", "checkpoint_every", "keep_checkpoints", "progress",
                                            "tensorboard"),
}
"""Every ``TrainConfig`` field in the help group it is listed under (tests/test_cli_usability.py checks that
each field is in exactly one); a field missing here still gets its flag, under "other options"."""

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def fold_bool_values(argv: list[str]) -> list[str]:
    """``argv`` with ``--FLAG VALUE`` / ``--FLAG=VALUE`` of a boolean field as ``--FLAG`` or ``--no-FLAG``, the
    form the parser takes; the older form stays valid so commands recorded in run folders reproduce."""
    from .train.config import TrainConfig

    flags = {f"--{f.name}" for f in dataclasses.fields(TrainConfig) if f.type == "bool"}
    out, i = [], 0
    while i < len(argv):
        name, _, value = argv[i].partition("=")
        if name in flags and not value and i + 1 < len(argv) and argv[i + 1].lower() in _TRUE + _FALSE:
            value, i = argv[i + 1], i + 1
        if name in flags and value and value.lower() in _TRUE + _FALSE:
            out.append(name if value.lower() in _TRUE else f"--no-{name[2:]}")
        else:
            out.append(argv[i])
        i += 1
    return out


def add_train_parser(sub, name: str, summary: str, base: dict) -> argparse.ArgumentParser:
    """``muonlab NAME``: one training run whose defaults are TrainConfig's updated by ``base``."""
    from .train.config import TrainConfig

    parser = sub.add_parser(name, help=summary, description=f"{summary}. Values come from the defaults, then "
                            "--config, then flags.")
    parser.add_argument("--config", help="a JSON or TOML file of config keys, or a run folder's config.json (that "
                        "run's settings, trained into --run_dir)")
    if base.get("task") == "sft":
        parser.add_argument("--epochs", type=float, default=None,
                            help="passes over the training conversations; sets train_tokens (default: 1 when "
                                 "train_tokens is not given; past 4 a warning: the model may memorise the set)")
    parser.set_defaults(func=cmd_train, base=base)
    defaults = {**TrainConfig().to_dict(), **base}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    grouped = {name for names in FLAG_GROUPS.values() for name in names}
    groups = {**FLAG_GROUPS, "other options": tuple(name for name in fields if name not in grouped)}
    for title, names in groups.items():
        group = parser.add_argument_group(title)
        for field_name in (name for name in names if name in fields):
            f = fields[field_name]
            help_text = f"{f.metadata['help']} (default: {defaults[f.name]!r})"
            if f.type == "bool":
                group.add_argument(f"--{f.name}", dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                   help=help_text)
                continue
            choices = f.metadata.get("choices")
            group.add_argument(f"--{f.name}", dest=f.name, default=None, help=help_text,
                               metavar=None if choices else f.type.upper(),
                               choices=[str(c) for c in choices] if choices else None)
    return parser


def _resolve_epochs(config, epochs: float | None, explicit_tokens: bool):
    """``muonlab sft``: ``config`` with the train_tokens of ``epochs`` passes over its training conversations
    (one when neither --epochs nor train_tokens is given), and the notices to print."""
    from .train_plan import EPOCHS_WARNING, sft_epochs_tokens

    if epochs is not None and explicit_tokens:
        raise ValueError("give --epochs or --train_tokens, not both: each sets the length of the run")
    if explicit_tokens:
        return config, []
    tokens, one_pass = sft_epochs_tokens(config, 1.0 if epochs is None else epochs)
    config = config.replace(train_tokens=tokens)
    passes = tokens / one_pass
    notes = [f"warning: {passes:.1f} passes over the {one_pass:,} tokens of training conversations; the model "
             "may memorise them (fewer --epochs, or more data)"] if passes > EPOCHS_WARNING else []
    return config, notes


def cmd_train(args: argparse.Namespace) -> int:
    from .train.config import TrainConfig, load_config_file, train_settings
    from .train.run_folder import check_run_folder
    from .train_plan import plan_line

    file_values = train_settings(load_config_file(args.config)) if args.config else {}
    values = {**args.base, **file_values}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values.update(flags)
    config, notes = TrainConfig.from_dict(values), []
    if "epochs" in args:  # muonlab sft: the length of the run is a number of passes over the data
        config, notes = _resolve_epochs(config, args.epochs, "train_tokens" in flags or "train_tokens" in file_values)
    check_run_folder(config)  # a folder holding another run stops here, before any training work
    for line in [plan_line(config), *notes]:
        say_once(f"muonlab {args.command}: {line}", file=sys.stdout)
    from .train.loop import train

    summary = train(config, command=shlex.join(["muonlab", *args.argv]))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line rather than one per process
        print(
            f"finished {summary.steps} steps, {summary.tokens:,} tokens; final val loss {summary.final_val_loss:.4f}; "
            f"{summary.tokens_per_s:,.0f} tokens/s; run folder {summary.run_dir}"
        )
    if config.parallel != "none":
        # Everything is written and the process group is destroyed; skip interpreter teardown,
        # where torch's gloo threads occasionally abort ("terminate called without an active
        # exception", seen in about 1 of 10 torchrun test runs on torch 2.13).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
