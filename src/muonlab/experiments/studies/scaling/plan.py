"""The ``scaling`` study's runs: widths, compute-optimal budgets and batches, and the bracketed lr sweeps.

Each width trains ``tokens_per_param`` tokens per non-embedding parameter, at the batch size Moonlight's
own fit gives for that compute (App. B, Table 9: ``B(C) = 0.0065202 · C^0.4137915`` tokens, C in FLOPs),
rounded to whole sequences. Per width, AdamW and Muon each get a bracketed learning-rate sweep
(``muonlab.analysis.lr_sweep.bracket``: the first seed over the grid, extended past an edge until the best
is interior, then every seed at the best cell and its neighbours). Once AdamW's sweep at a width is done,
Muon also trains every seed at each lr AdamW's choice could take (its chosen cell and neighbours): the
paper's protocol, Muon at AdamW's learning rate, with the choice's uncertainty measurable.

Run names are ``<optimizer>-d<width>-lr<lr>-s<seed>``; a sweep's later runs appear in the plan as the
earlier ones finish (their names follow from those results), each listing the runs that decided it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ....analysis.lr_sweep import SweepSpec, grid_value
from ....analysis.runs import Run
from ....models import model_config_for
from ....train.config import TrainConfig
from ...study import PlannedRun, require_corpus
from ...sweeps import OPTIMIZERS, PairedSweeps

__all__ = ["PRESETS", "batch_size", "model_for", "non_embedding_params", "plan", "projected_plan", "run_name",
           "sweeps", "train_tokens"]

BATCH_FIT = (0.0065202, 0.4137915)
"""Moonlight's compute-optimal batch in tokens, ``B(C) = a · C^b`` (arXiv 2502.16982 App. B, Table 9)."""

PRESETS: dict[str, dict[str, Any]] = {
    # Byte tokens on the Python corpus (11.7M training bytes, no run repeats data). 4 layers, heads of 8; widths
    # 24–48 span 10.6× in training FLOPs (0.56M–2.2M tokens a run, 2,168–2,571 steps at 256–1,024-token batches).
    "cpu": dict(
        seeds=(0, 1, 2), widths=(24, 32, 40, 48), n_layers=4, head_dim=8, tokens_per_param=20.0, seq_len=256,
        adamw_lrs=(1.25e-3, 2.5e-3, 5e-3, 1e-2), muon_lrs=(2.5e-3, 5e-3, 1e-2, 2e-2), lr_step=2.0,
        lr_caps=(1e-4, 0.16), weight_decay=0.1, corpus="python", tokenizer="byte", vocab_size=4096,
        eval_tokens=65_536, compile=False, device="auto",
    ),
    # One GPU: 8 layers, heads of 64, BPE 4096; widths 192–384 (3.5M–14M non-embedding parameters against
    # 1.6M–3.1M in the embedding and head) span ≈ 16× in FLOPs and need 71M–283M tokens a run (≈ 15B over the 88
    # projected runs): more than the built-in corpora hold, so the preset asks for a corpus (``--set corpus=<file,
    # folder, glob or hf:NAME>``) of ≥ 300M tokens, read at most once per run. Sized by FLOPs only (no GPU here).
    "gpu": dict(
        seeds=(0, 1, 2), widths=(192, 256, 320, 384), n_layers=8, head_dim=64, tokens_per_param=20.0, seq_len=512,
        adamw_lrs=(7.5e-4, 1.5e-3, 3e-3, 6e-3), muon_lrs=(1.5e-3, 3e-3, 6e-3, 1.2e-2), lr_step=2.0,
        lr_caps=(1e-4, 0.1), weight_decay=0.1, corpus="", tokenizer="bpe", vocab_size=4096,
        eval_tokens=1_048_576, compile=True, device="cuda",
    ),
}


def model_for(p: Mapping[str, Any], width: int):
    """The ``ModelConfig`` of one width (``muonlab.models.model_config_for``)."""
    vocab = 257 if p["tokenizer"] == "byte" else p["vocab_size"]
    return model_config_for("demo", vocab, p["seq_len"], d_model=width, n_layers=p["n_layers"],
                            n_heads=width // p["head_dim"])


def non_embedding_params(p: Mapping[str, Any], width: int) -> int:
    return model_for(p, width).num_params(include_embedding=False)


def batch_size(p: Mapping[str, Any], width: int) -> int:
    """Sequences per batch: Moonlight's ``B(C)`` at this width's budget, in whole sequences (at least 1)."""
    tokens = p["tokens_per_param"] * non_embedding_params(p, width)
    compute = model_for(p, width).flops_per_token(p["seq_len"]) * tokens
    a, b = BATCH_FIT
    return max(1, round(a * compute**b / p["seq_len"]))


def train_tokens(p: Mapping[str, Any], width: int) -> int:
    """``tokens_per_param`` × non-embedding parameters, rounded to whole steps."""
    per_step = p["seq_len"] * batch_size(p, width)
    return max(1, round(p["tokens_per_param"] * non_embedding_params(p, width) / per_step)) * per_step


def eval_batches(p: Mapping[str, Any], batch: int) -> int:
    """Validation batches of ``batch`` sequences that hold ``eval_tokens`` tokens (the same slice for every width)."""
    return max(1, round(p["eval_tokens"] / (batch * p["seq_len"])))


def run_name(optimizer: str, width: int, lr: float, seed: int) -> str:
    return f"{optimizer}-d{width}-lr{grid_value(lr):g}-s{seed}"


def _config(p: Mapping[str, Any], width: int, optimizer: str, lr: float, seed: int) -> TrainConfig:
    require_corpus(p, "scaling")
    batch = batch_size(p, width)
    tokens = train_tokens(p, width)
    steps = tokens // (p["seq_len"] * batch)
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model="demo", d_model=width,
        n_layers=p["n_layers"], n_heads=width // p["head_dim"], seq_len=p["seq_len"], batch_size=batch,
        train_tokens=tokens, optimizer=optimizer, lr=grid_value(lr), weight_decay=p["weight_decay"],
        schedule="cosine", warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 4),
        eval_batches=eval_batches(p, batch), log_every=20, telemetry_every=max(1, steps // 16), spectra_every=steps,
        checkpoint_every=max(1, steps // 4),
        compile=p["compile"], device=p["device"], seed=seed,
    )


def sweeps(p: Mapping[str, Any]) -> PairedSweeps:
    """Both optimizers' bracketed sweeps at every width (``muonlab.experiments.sweeps``)."""
    low, high = p["lr_caps"]
    specs = {o: SweepSpec(tuple(p[f"{o}_lrs"]), tuple(p["seeds"]), p["lr_step"], low, high) for o in OPTIMIZERS}
    return PairedSweeps(
        groups=tuple(p["widths"]), specs=specs,
        name=lambda o, w, lr, s: run_name(o, w, lr, s),
        config=lambda o, w, lr, s: _config(p, w, o, lr, s),
        group_of=lambda run: run.config.get("d_model"),
    )


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """The runs decided by the results in ``done`` (see the module docstring)."""
    return sweeps(p).planned(done)


def projected_plan(p: Mapping[str, Any]) -> list[PlannedRun]:
    """The plan as it ends when no sweep extends (``PairedSweeps.projected``)."""
    return sweeps(p).projected()
