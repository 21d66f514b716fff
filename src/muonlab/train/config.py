"""``TrainConfig``: every knob of a training run, flat, typed and documented in one place.

A run's resolved config is written to ``<run_dir>/config.json``; ``muonlab train --help`` prints
each field's help text, and a config file (JSON, or TOML on Python ≥ 3.11) plus ``--key value``
overrides build one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import hyperparameters as hp

__all__ = ["SFT_DEFAULTS", "ConfigError", "TrainConfig", "load_config_file", "train_settings"]

TASKS = ("pretrain", "sft")
OPTIMIZERS = ("muon", "adamw")
SCHEDULES = ("cosine", "wsd", "linear", "constant")
DTYPES = ("bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
# muonlab.parallel.PARALLEL_MODES, without importing torch here
PARALLEL_MODES = ("none", "ddp", "zero1", "fsdp", "mesh")


SFT_DEFAULTS = {"task": "sft", "corpus": "python-functions", "schedule": "linear", "final_lr_ratio": 0.0,
                "warmup_steps": 0}
"""What ``muonlab sft`` changes in the defaults: Moonlight's SFT schedule (§3.5.1: linear decay to 0, no
warmup named) on the built-in set."""


class ConfigError(ValueError):
    """A config key or value that is not valid; the message lists what would be."""


def _f(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """The complete description of one training run."""

    # where
    run_dir: str = _f("runs/default", "run folder: config.json, metrics.jsonl, checkpoints/ go here")
    resume: bool = _f(True, "continue from the run folder's latest checkpoint when there is one")
    allow_new_data: bool = _f(False, "on resume, continue although the corpus's content changed since the checkpoint "
                              "(its fingerprint is checked; without this the run stops, naming the corpus)")
    # task and data
    task: str = _f("pretrain", "'pretrain' (next-token loss on every token of corpus) or 'sft' (fine-tune init_from "
                   "on corpus's conversations with the chat template, loss on the responses only)", TASKS)
    corpus: str = _f("english", "built-in corpus ('english', 'python'), file/dir/glob, or hf:NAME[:SPLIT]; with "
                     "task='sft': a built-in conversation set (muonlab.data.sft.SFT_BUILTIN) or a .jsonl of "
                     "prompt/response or messages rows")
    tokenizer: str = _f("bpe", "'bpe' (byte-level BPE trained on the corpus) or 'byte'", ("bpe", "byte"))
    vocab_size: int = _f(4096, "BPE vocabulary size (ignored for the byte tokenizer)")
    val_fraction: float = _f(0.03, "fraction of documents held out for validation")
    # model
    model: str = _f("demo", "model preset name or depth (see `muonlab presets`)")
    d_model: int = _f(0, "override the preset's width (0: keep)")
    n_layers: int = _f(0, "override the preset's depth (0: keep)")
    n_heads: int = _f(0, "override the preset's head count (0: keep)")
    mlp: str = _f("swiglu", "MLP type", ("swiglu", "gelu"))
    tie_embeddings: bool = _f(False, "share the token embedding and the LM head")
    parametrization: str = _f("sp", "'sp' (standard) or 'mup' (Tensor Programs V's muP under Muon: multipliers, init "
                              "and per-role lr factors relative to mup_base_width; see muonlab.models.mup)",
                              ("sp", "mup"))  # muonlab.models.PARAMETRIZATIONS without importing torch
    mup_base_width: int = _f(256, "muP base width d₀: muP equals SP at d_model = d₀ (lr and wd tuned there transfer)")
    mup_base_head_dim: int = _f(0, "muP: query/key head width at the base width when wider models widen their "
                                "heads (logits scaled by sqrt(h₀)/h); 0: heads keep their width (1/sqrt(h))")
    init_from: str = _f("", "start from a muonlab run folder (its latest checkpoint) or a Hugging Face model folder "
                        "(Llama or DeepSeek-V3, e.g. from `muonlab export`): its architecture, weights and tokenizer "
                        "replace model, mlp, tie_embeddings, the muP fields, tokenizer and vocab_size; the optimizer "
                        "starts fresh")
    # batch and length
    seq_len: int = _f(256, "tokens per sequence")
    batch_size: int = _f(16, "sequences per micro-batch per data shard: per process under ddp, zero1 and fsdp; the "
                         "tensor-parallel ranks of one shard (parallel='mesh', tp > 1) read the same batch; one step "
                         "trains seq_len × batch_size × grad_accum × data shards tokens")
    grad_accum: int = _f(1, "micro-batches per optimizer step, per data shard")
    train_tokens: int = _f(1_500_000, "training budget in tokens over all processes (global; sets the number of "
                           "steps)")
    # optimizer
    optimizer: str = _f(
        "muon", "'muon' (Muon on hidden matrices + AdamW elsewhere) or 'adamw' (AdamW everywhere)", OPTIMIZERS
    )
    lr: float = _f(3e-3, "peak learning rate, shared by Muon and AdamW groups (Moonlight reuses AdamW's)")
    weight_decay: float = _f(0.1, "decoupled weight decay λ (W ← W − lr·λ·W), every parameter")
    decay_norms: bool = _f(True, "apply weight decay to norm gains too (Moonlight App. D: crucial for stability)")
    momentum: float = _f(hp.MOMENTUM, "Muon momentum μ")
    nesterov: bool = _f(hp.NESTEROV, "Nesterov momentum for Muon")
    ns_steps: int = _f(hp.NS_STEPS, "Newton–Schulz iterations")
    ns_coefficients: str = _f(hp.NS_COEFFICIENTS, "Newton–Schulz coefficient set", ("jordan", "polar_express"))
    ns_dtype: str = _f(hp.NS_DTYPE, "Newton–Schulz compute dtype", hp.NS_DTYPES)
    scale: str = _f(hp.SCALE, "Muon update-scale rule (muonlab.hyperparameters): 'moonlight' "
                    "update_rms·sqrt(max(A,B)); 'min_side' update_rms·sqrt(min(A,B)) (Moonlight Table 1's "
                    "Baseline 0.2·√H for [H,H], [H,4H]); 'update_norm' update_rms·O/RMS(O); 'keller' "
                    "sqrt(max(1,A/B)); 'spectral' sqrt(A/B); 'none' 1", tuple(hp.SCALE_RULES))
    update_rms: float = _f(hp.DEFAULT_UPDATE_RMS, "Muon's target update RMS (Moonlight §2.2: 0.2 matches AdamW; "
                           "Table 8 sweeps it), used by scale 'moonlight', 'min_side' and 'update_norm'; the other "
                           "rules allow only 0.2")
    beta1: float = _f(hp.ADAMW_BETAS[0], "AdamW β1")
    beta2: float = _f(hp.ADAMW_BETAS[1], "AdamW β2")
    adam_eps: float = _f(hp.ADAMW_EPS, "AdamW ε")
    grad_clip: float = _f(1.0, "clip the global norm of the raw gradient to this (0: off)")
    qk_clip_tau: float = _f(0.0, "QK-Clip threshold τ (Kimi K2: 100): after each step, rescale the query/key weights "
                            "of every attention head whose max logit exceeded τ (0: off)")
    orthogonalize: str = _f("matrix", "Muon on whole matrices ('matrix', as the paper) or on each attention head's "
                            "block of the q/k/v (rows) and output (columns) projections ('per_head': Kimi K3 §2.5, "
                            "GLM-5's Muon Split)", ("matrix", "per_head"))
    normuon: bool = _f(False, "NorMuon (arXiv 2510.05491): divide each row of the orthogonalized update by its running "
                       "second moment, then rescale to the update RMS")
    normuon_beta2: float = _f(hp.NORMUON_BETA2, "NorMuon's second-moment decay β2, in [0, 1)")
    cautious_wd: bool = _f(False, "cautious weight decay (arXiv 2510.12402): decay only the coordinates where the "
                           "update and the weight have the same sign (Muon and AdamW groups)")
    # schedule
    schedule: str = _f("cosine", "learning-rate schedule after warmup ('linear': decay to final_lr_ratio)", SCHEDULES)
    warmup_steps: int = _f(50, "linear warmup steps")
    final_lr_ratio: float = _f(0.1, "final lr as a fraction of the peak (Essential AI: 0.1)")
    decay_fraction: float = _f(0.2, "WSD: fraction of steps spent in the final linear decay")
    schedule_tokens: int = _f(0, "length of the lr schedule in tokens (0: train_tokens): warmup and decay are those of "
                              "a run this long, and training stops after train_tokens (Moonlight Table 1: 4B tokens of "
                              "a 20B-token schedule); must be >= train_tokens")
    # numerics and speed
    dtype: str = _f("bf16", "autocast dtype for forward/backward (master weights stay fp32)", DTYPES)
    compile: bool = _f(False, "torch.compile the model, and with cautious_wd the optimizer's fused decay and update "
                              "(muonlab.optim.fused)")
    device: str = _f("auto", "'auto' (cuda if available), 'cpu' or 'cuda'", DEVICES)
    seed: int = _f(0, "seed for initialisation and data order")
    threads: int = _f(0, "CPU threads for torch (0: torch's default, all cores)")
    parallel: str = _f("none", "data parallelism when launched with torchrun: 'ddp', 'zero1' (Moonlight's "
                       "Distributed Muon), 'fsdp' (FSDP2), 'mesh' (FSDP2 over dp_shard × ep, tensor parallelism "
                       "over tp, expert parallelism over ep; set by dp_shard, tp or ep > 1); batch_size is per data "
                       "shard", PARALLEL_MODES)
    dp_shard: int = _f(1, "parallel='mesh': FSDP2 degree (data shards); dp_shard × ep × tp must be the process count")
    tp: int = _f(1, "parallel='mesh': tensor-parallel degree (attention heads and MLP width split across tp ranks, "
                 "which read the same batch)")
    ep: int = _f(1, "parallel='mesh': expert-parallel degree (each MoE layer's routed experts split across ep ranks, "
                 "which read different batches: dp_shard × ep data shards); dp_shard × ep must divide the experts")
    # logging, eval, checkpoints
    log_every: int = _f(10, "write a metrics row every this many steps")
    telemetry_every: int = _f(50, "measure optimizer telemetry (update RMS, …) every this many steps (0: never)")
    eval_every: int = _f(100, "validate every this many steps (and at the end)")
    eval_batches: int = _f(8, "validation batches per evaluation")
    spectra_every: int = _f(0, "log the SVD entropy of every weight matrix every this many steps (0: never)")
    checkpoint_every: int = _f(0, "checkpoint every this many steps (0: only at the end)")
    keep_checkpoints: int = _f(2, "how many checkpoints to keep")
    progress: bool = _f(True, "show a progress bar")
    tensorboard: bool = _f(False, "also log to TensorBoard (needs the tensorboard extra)")

    def __post_init__(self) -> None:
        if not isinstance(self.run_dir, str) or not self.run_dir.strip():
            raise ConfigError(f"run_dir={self.run_dir!r} names no folder; give a new folder, or one muonlab created")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{f.name}={value!r} is not valid; choose one of {list(choices)}")
        positive = ("vocab_size", "seq_len", "batch_size", "grad_accum", "train_tokens", "ns_steps", "mup_base_width",
                    "log_every", "eval_every", "eval_batches", "keep_checkpoints", "dp_shard", "tp", "ep")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "grad_clip", "qk_clip_tau", "warmup_steps", "checkpoint_every",
                     "schedule_tokens", "telemetry_every", "spectra_every", "threads", "mup_base_head_dim"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dp_shard > 1 or self.tp > 1 or self.ep > 1:
            if self.parallel not in ("none", "mesh"):
                raise ConfigError(f"dp_shard={self.dp_shard}, tp={self.tp} and ep={self.ep} describe parallel='mesh', "
                                  f"not parallel={self.parallel!r}; drop parallel or set it to 'mesh'")
            self.parallel = "mesh"
        if self.schedule_tokens and self.schedule_tokens < self.train_tokens:
            raise ConfigError(f"schedule_tokens={self.schedule_tokens} is shorter than train_tokens="
                              f"{self.train_tokens}; a run may stop early on a longer schedule, not outlast it "
                              "(0: the schedule is train_tokens long)")
        if not 0.0 <= self.normuon_beta2 < 1.0:
            raise ConfigError(f"normuon_beta2 must lie in [0, 1), got {self.normuon_beta2}")
        try:
            hp.check_update_rms(self.scale, self.update_rms)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.task == "sft" and not self.init_from:
            raise ConfigError("task='sft' fine-tunes a trained model; set init_from to a run folder or a Hugging Face "
                              "model folder")
        resized = [name for name in ("d_model", "n_layers", "n_heads") if getattr(self, name)]
        if self.init_from and resized:
            raise ConfigError(f"{resized[0]}={getattr(self, resized[0])} cannot change the model of init_from="
                              f"{self.init_from!r}, which comes whole from that folder; leave {resized[0]} at 0")

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.seq_len * self.batch_size * self.grad_accum * world_size

    def total_steps(self, world_size: int = 1) -> int:
        """The optimizer steps this run trains: ``train_tokens`` of them."""
        return max(1, self.train_tokens // self.tokens_per_step(world_size))

    def schedule_steps(self, world_size: int = 1) -> int:
        """The steps of the lr schedule: ``schedule_tokens`` (or ``train_tokens``) of them, ≥ ``total_steps``."""
        return max(1, (self.schedule_tokens or self.train_tokens) // self.tokens_per_step(world_size))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, converting strings (from a command line) to each field's type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(fields)}")
        return cls(**{k: _convert(k, v, fields[k].type) for k, v in values.items()})

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _convert(name: str, value: Any, type_name: str) -> Any:
    """``value`` as the field's type: strings (command line) are parsed, other values type-checked."""
    if not isinstance(value, str):
        return _check_type(name, value, type_name)
    if type_name == "str":
        return value
    try:
        if type_name == "bool":
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if type_name == "int":
            return _check_type(name, float(value), type_name) if "e" in value.lower() else int(value)
        if type_name == "float":
            return _check_type(name, float(value), type_name)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a valid {type_name}") from None
    return value


def _check_type(name: str, value: Any, type_name: str) -> Any:
    bad = ConfigError(f"{name}={value!r} is not a valid {type_name}")
    if type_name == "bool":
        if not isinstance(value, bool):
            raise bad
    elif type_name == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        if value != int(value):
            raise ConfigError(f"{name}={value!r} is not a whole number; give an integer such as {int(value)}")
        value = int(value)
    elif type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        value = float(value)
    elif type_name == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise bad
        value = str(value)  # e.g. an integer model depth written as a JSON number
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict (validated later by ``TrainConfig.from_dict``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err.strerror}") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold an object of key: value pairs")
    return values


def train_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The config keys of a ``--config`` file for ``muonlab train``. A run folder's ``config.json``
    (recognised by the ``model_config`` that muonlab records beside the config) gives that run's
    settings without what was recorded about it (counts, machine, resumes) and without its
    ``run_dir``, so that it trains a new run, never resumes the recorded one; any other file is
    returned whole, to be checked key by key."""
    if "model_config" not in values:
        return values
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"run_dir"}
    return {k: v for k, v in values.items() if k in names}
