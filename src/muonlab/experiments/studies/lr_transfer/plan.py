"""The ``lr-transfer`` study's runs: a grid of widths × batch sizes at a fixed token budget, both optimizers'
learning rates bracketed in every cell of it.

All runs train the same number of tokens, so the batch size sets the number of steps (``train_tokens`` /
batch). In every (width, batch) group AdamW and Muon each get a bracketed sweep, and Muon also trains every
seed at AdamW's fully seeded cells (``muonlab.experiments.sweeps.PairedSweeps``). Run names are
``<optimizer>-d<width>-b<sequences per batch>-lr<lr>-s<seed>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ....analysis.lr_sweep import SweepSpec, grid_value
from ....analysis.runs import Run
from ....train.config import TrainConfig
from ...study import PlannedRun, require_corpus
from ...sweeps import OPTIMIZERS, PairedSweeps

__all__ = ["PRESETS", "groups", "plan", "projected_plan", "run_name", "steps", "sweeps"]

PRESETS: dict[str, dict[str, Any]] = {
    # Byte tokens on the Python corpus (11.7M training bytes; no run repeats data). 4 layers, heads of 8, widths
    # 24 and 48 (28k and 111k non-embedding parameters); 2^19 tokens a run (19 and 4.7 tokens per parameter) at
    # 1, 4 and 16 sequences of 256 tokens: 2,048, 512 and 128 steps. Not yet measured end to end.
    "cpu": dict(
        seeds=(0, 1, 2), widths=(24, 48), batch_sizes=(1, 4, 16), train_tokens=524_288, n_layers=4, head_dim=8,
        seq_len=256, adamw_lrs=(1.25e-3, 2.5e-3, 5e-3, 1e-2), muon_lrs=(2.5e-3, 5e-3, 1e-2, 2e-2), lr_step=2.0,
        lr_caps=(1e-4, 0.16), weight_decay=0.1, corpus="python", tokenizer="byte", vocab_size=4096,
        eval_tokens=65_536, compile=False, device="auto",
    ),
    # One GPU: 8 layers, heads of 64, BPE 4096, widths 256 and 512 (6.3M and 25M non-embedding parameters against
    # 2.1M and 4.2M in the embedding and head), 2^28 tokens (268M) a run at 16, 64 and 256 sequences of 1,024
    # tokens (16,384, 4,096 and 1,024 steps). The built-in corpora hold a few million tokens: the preset asks for a
    # corpus (``--set corpus=<file, folder, glob or hf:NAME>``) of ≥ 270M tokens, so no run repeats data. Sized by
    # FLOPs only (no GPU measured it yet).
    "gpu": dict(
        seeds=(0, 1, 2), widths=(256, 512), batch_sizes=(16, 64, 256), train_tokens=268_435_456, n_layers=8,
        head_dim=64, seq_len=1024, adamw_lrs=(7.5e-4, 1.5e-3, 3e-3, 6e-3), muon_lrs=(1.5e-3, 3e-3, 6e-3, 1.2e-2),
        lr_step=2.0, lr_caps=(1e-4, 0.1), weight_decay=0.1, corpus="", tokenizer="bpe",
        vocab_size=4096, eval_tokens=1_048_576, compile=True, device="cuda",
    ),
}

Group = tuple[int, int]
"""``(width, sequences per batch)``."""


def groups(p: Mapping[str, Any]) -> list[Group]:
    return [(w, b) for w in p["widths"] for b in p["batch_sizes"]]


def steps(p: Mapping[str, Any], batch: int) -> int:
    """Optimizer steps of a run at ``batch`` sequences: the fixed token budget in whole steps."""
    return max(1, p["train_tokens"] // (p["seq_len"] * batch))


def run_name(optimizer: str, group: Group, lr: float, seed: int) -> str:
    width, batch = group
    return f"{optimizer}-d{width}-b{batch}-lr{grid_value(lr):g}-s{seed}"


def _config(p: Mapping[str, Any], optimizer: str, group: Group, lr: float, seed: int) -> TrainConfig:
    require_corpus(p, "lr-transfer")
    width, batch = group
    n = steps(p, batch)
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model="demo", d_model=width,
        n_layers=p["n_layers"], n_heads=width // p["head_dim"], seq_len=p["seq_len"], batch_size=batch,
        train_tokens=n * p["seq_len"] * batch, optimizer=optimizer, lr=grid_value(lr), weight_decay=p["weight_decay"],
        schedule="cosine", warmup_steps=max(1, n // 20), eval_every=max(1, n // 4),
        eval_batches=max(1, round(p["eval_tokens"] / (batch * p["seq_len"]))),
        log_every=max(1, min(20, n // 50)), telemetry_every=0, checkpoint_every=max(1, n // 4), compile=p["compile"],
        device=p["device"], seed=seed,
    )


def _group_of(run: Run) -> Group | None:
    c = run.config
    return (c.get("d_model"), c.get("batch_size"))


def sweeps(p: Mapping[str, Any]) -> PairedSweeps:
    """Both optimizers' bracketed sweeps in every (width, batch) group."""
    low, high = p["lr_caps"]
    specs = {o: SweepSpec(tuple(p[f"{o}_lrs"]), tuple(p["seeds"]), p["lr_step"], low, high) for o in OPTIMIZERS}
    return PairedSweeps(groups=tuple(groups(p)), specs=specs, name=run_name,
                        config=lambda o, g, lr, s: _config(p, o, g, lr, s), group_of=_group_of)


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """The runs decided by the results in ``done``."""
    return sweeps(p).planned(done)


def projected_plan(p: Mapping[str, Any]) -> list[PlannedRun]:
    """The plan as it ends when no sweep extends."""
    return sweeps(p).projected()
