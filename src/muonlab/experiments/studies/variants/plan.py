"""The ``variants`` study's runs: six arms, each at its own bracketed learning rate, on a dense and an MoE/MLA model.

Arms (``ARMS``): Moonlight Muon, Muon with per-head blocks, with NorMuon, with cautious weight decay, with all
three, and AdamW. In every model each arm runs its own bracketed sweep (``muonlab.analysis.lr_sweep.bracket``:
the first seed over the arm's grid, one ×``lr_step`` step past an edge while the best is there, then every
seed at the best lr and its neighbours), so every arm is compared at its own optimum with every seed there.
Within a seed every arm starts from the same weights and sees the same batches (the seed sets both), so the
verdicts pair the arms over seeds. Run names: ``<model>-<arm>-lr<lr>-s<seed>``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from ....analysis.lr_sweep import Bracket, SweepSpec, bracket, grid_value
from ....analysis.runs import Run
from ....train.config import TrainConfig
from ...study import PlannedRun, require_corpus
from ...sweeps import lattice

__all__ = ["ARMS", "PRESETS", "ArmSweeps", "arm_of", "cells_from", "plan", "projected_plan", "run_name", "sweeps"]

ARMS: dict[str, dict[str, Any]] = {
    "muon": {"optimizer": "muon"},
    "perhead": {"optimizer": "muon", "orthogonalize": "per_head"},
    "normuon": {"optimizer": "muon", "normuon": True},
    "cautious": {"optimizer": "muon", "cautious_wd": True},
    "all3": {"optimizer": "muon", "orthogonalize": "per_head", "normuon": True, "cautious_wd": True},
    "adamw": {"optimizer": "adamw"},
}
"""Each arm's ``TrainConfig`` fields; every other field is the same in every arm."""

_PLAIN = {"optimizer": "muon", "orthogonalize": "matrix", "normuon": False, "cautious_wd": False}

PRESETS: dict[str, dict[str, Any]] = {
    # Byte tokens of the Python corpus (11.7M training bytes; no run repeats data). Both models 2 layers of width
    # 32 with 4 heads of 8 (per-head blocks of 8 rows / columns): the dense SwiGLU model (the "tiny" preset's
    # layout) and Moonlight's MLA + MoE layout at that size ("moe-tiny": 64 routed experts, top-6, 2 shared,
    # layer 0 dense). 1,024 steps of 16 × 64 tokens (1,048,576 tokens a run). Grids: the middle of lr-transfer's CPU
    # grids (Muon's optimum at 0.5-4× AdamW's in 0.5-2k-step runs); an extension past an edge adds one lr per seed.
    # 108 runs (6 arms × 2 models × 9) if no sweep extends. --dry-run with another study on the cores (load ≈ 3)
    # said 2 h 31 min with 4-lr grids (120 runs), its probes 1.5-2× slower than unloaded ones (start-up 7.7 s
    # against 4.5 s); unloaded, with 3-lr grids, that is about 1-1.5 hours on 2 cores.
    "cpu": dict(
        seeds=(0, 1, 2), models=("tiny", "moe-tiny"), d_model=32, n_layers=2, n_heads=4, seq_len=64, batch_size=16,
        steps=1024, muon_lrs=(5e-3, 1e-2, 2e-2), adamw_lrs=(2.5e-3, 5e-3, 1e-2), lr_step=2.0,
        lr_caps=(1e-4, 0.16), weight_decay=0.1, corpus="python", tokenizer="byte", vocab_size=4096,
        eval_tokens=32_768, compile=False, device="auto",
    ),
    # One GPU: 8 layers of width 512 with 8 heads of 64, the dense preset layout and the Moonlight MoE/MLA layout
    # at that width, BPE 8192, 4,000 steps of 32 × 1,024 tokens (131M tokens a run): more than the built-in corpora
    # hold, so the preset asks for a corpus (``--set corpus=...``). Sized by FLOPs only (no GPU measured it yet).
    "gpu": dict(
        seeds=(0, 1, 2), models=("demo", "moe-demo"), d_model=512, n_layers=8, n_heads=8, seq_len=1024,
        batch_size=32, steps=4000, muon_lrs=(1e-3, 2e-3, 4e-3, 8e-3), adamw_lrs=(5e-4, 1e-3, 2e-3, 4e-3),
        lr_step=2.0, lr_caps=(1e-5, 0.1), weight_decay=0.1, corpus="", tokenizer="bpe", vocab_size=8192,
        eval_tokens=1_048_576, compile=True, device="cuda",
    ),
}


def arm_of(config: Mapping[str, Any]) -> str | None:
    """The arm a run's config belongs to (None for a run of no arm)."""
    if config.get("optimizer") == "adamw":
        return "adamw"
    fields = {k: config.get(k, v) for k, v in _PLAIN.items()}
    for arm, own in ARMS.items():
        if fields == {**_PLAIN, **own}:
            return arm
    return None


def run_name(arm: str, model: str, lr: float, seed: int) -> str:
    return f"{model}-{arm}-lr{grid_value(lr):g}-s{seed}"


def _config(p: Mapping[str, Any], arm: str, model: str, lr: float, seed: int) -> TrainConfig:
    require_corpus(p, "variants")
    n, tokens = p["steps"], p["seq_len"] * p["batch_size"]
    return TrainConfig(
        corpus=p["corpus"], tokenizer=p["tokenizer"], vocab_size=p["vocab_size"], model=model, d_model=p["d_model"],
        n_layers=p["n_layers"], n_heads=p["n_heads"], seq_len=p["seq_len"], batch_size=p["batch_size"],
        train_tokens=n * tokens, lr=grid_value(lr), weight_decay=p["weight_decay"], schedule="cosine",
        warmup_steps=max(1, n // 20), eval_every=max(1, n // 4), eval_batches=max(1, round(p["eval_tokens"] / tokens)),
        log_every=max(1, min(20, n // 50)), telemetry_every=0, checkpoint_every=max(1, n // 4), compile=p["compile"],
        device=p["device"], seed=seed, **{**_PLAIN, **ARMS[arm]},
    )


Losses = Mapping[tuple[float, int], float]
Cells = dict[tuple[str, Hashable], dict[float, dict[int, float]]]
"""``{(arm, model): {lr: {seed: final validation loss}}}``."""


def cells_from(runs) -> Cells:
    """The cells of finished runs (runs of no arm left out)."""
    out: Cells = {}
    for run in runs:
        arm = arm_of(run.config)
        if arm is not None:
            c = run.config
            out.setdefault((arm, c["model"]), {}).setdefault(grid_value(c["lr"]), {})[int(c["seed"])] = (
                run.final("val_loss"))
    return out


@dataclass(frozen=True)
class ArmSweeps:
    """Every arm's bracketed sweep in every model: ``specs[arm]``, ``name(arm, model, lr, seed)`` and
    ``config(arm, model, lr, seed)``."""

    models: tuple[str, ...]
    specs: Mapping[str, SweepSpec]
    name: Callable[[str, str, float, int], str]
    config: Callable[[str, str, float, int], TrainConfig]

    def brackets(self, cells: Mapping[tuple[str, str], Losses]) -> dict[tuple[str, str], Bracket]:
        """Each sweep's state from the finished runs' losses."""
        return {(a, m): bracket(self.specs[a], cells.get((a, m), {})) for m in self.models for a in self.specs}

    def runs(self, losses: Mapping[tuple[str, str], Losses]) -> list[PlannedRun]:
        """The runs of the cells decided so far; a sweep's later runs need its first round."""
        planned = []
        for (arm, model), state in self.brackets(losses).items():
            spec = self.specs[arm]
            first_round = tuple(self.name(arm, model, lr, spec.seeds[0]) for lr in spec.initial)
            for lr, seed in state.cells:
                name = self.name(arm, model, lr, seed)
                planned.append(PlannedRun(name, self.config(arm, model, lr, seed),
                                          () if name in first_round else first_round))
        return planned

    def planned(self, done: Mapping[str, Run]) -> list[PlannedRun]:
        return self.runs({k: {(lr, s): v for lr, by_seed in c.items() for s, v in by_seed.items()}
                          for k, c in cells_from(done.values()).items()})

    def projected(self) -> list[PlannedRun]:
        """The plan as it ends when every sweep's best first-seed cell is its grid's second-highest lr and no
        sweep extends (what ``--dry-run`` costs)."""
        lrs = lattice(self.specs.values())

        def bowl(arm: str) -> dict[tuple[float, int], float]:
            centre = sorted(self.specs[arm].initial)[-2]
            return {(lr, s): abs(lr / centre - 1.0) for lr in lrs for s in self.specs[arm].seeds}

        return self.runs({(a, m): bowl(a) for m in self.models for a in self.specs})


def sweeps(p: Mapping[str, Any]) -> ArmSweeps:
    """Every arm's bracketed sweep in every model."""
    low, high = p["lr_caps"]
    specs = {arm: SweepSpec(tuple(p["adamw_lrs" if arm == "adamw" else "muon_lrs"]), tuple(p["seeds"]), p["lr_step"],
                            low, high) for arm in ARMS}
    return ArmSweeps(models=tuple(p["models"]), specs=specs, name=run_name,
                     config=lambda a, m, lr, s: _config(p, a, m, lr, s))


def plan(p: Mapping[str, Any], done: Mapping[str, Run]) -> list[PlannedRun]:
    """The runs decided by the results in ``done``."""
    return sweeps(p).planned(done)


def projected_plan(p: Mapping[str, Any]) -> list[PlannedRun]:
    """The plan as it ends when no sweep extends."""
    return sweeps(p).projected()
