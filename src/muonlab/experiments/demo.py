"""``muonlab demo``: Moonlight's central claim on a laptop CPU.

The same small Llama-style model is trained on the built-in English corpus (the King James
Bible) with AdamW, and with Muon reusing AdamW's learning rate and weight decay unchanged — the
0.2·sqrt(max(A, B)) update scale (Moonlight, arXiv 2502.16982 §2.2) is what makes that
possible. Each optimizer is trained with several seeds (initialisation and data order), so the
report can say whether the gap between the optimizers exceeds the seed-to-seed spread.

The runs are ordinary run folders under ``<out>/<optimizer>-s<seed>`` (resumable: re-running the
demo skips finished runs), and ``<out>/report.md`` is rebuilt from them.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ..analysis.report import summarize_by_optimizer, write_report
from ..train.config import TrainConfig
from ..train.loop import train

__all__ = ["DemoPlan", "demo_configs", "run_demo"]


@dataclass
class DemoPlan:
    """What the demo trains. The defaults fit in about five minutes on a 2-core CPU."""

    out: str = "runs/demo"
    seeds: tuple[int, ...] = (0, 1)
    train_tokens: int = 1_572_864
    lr: float = 3e-3
    weight_decay: float = 0.1
    model: str = "demo"
    d_model: int = 192
    seq_len: int = 256
    batch_size: int = 16
    compile: bool = False
    progress: bool = True


def demo_configs(plan: DemoPlan) -> list[TrainConfig]:
    """One ``TrainConfig`` per (optimizer, seed); the optimizer is the only difference in a pair."""
    steps = plan.train_tokens // (plan.seq_len * plan.batch_size)
    base = TrainConfig(
        corpus="english", tokenizer="bpe", vocab_size=4096, model=plan.model, d_model=plan.d_model,
        seq_len=plan.seq_len, batch_size=plan.batch_size, train_tokens=plan.train_tokens,
        lr=plan.lr, weight_decay=plan.weight_decay, schedule="cosine", warmup_steps=max(1, steps // 20),
        eval_every=max(1, steps // 12), eval_batches=8, log_every=10, telemetry_every=25,
        compile=plan.compile, progress=plan.progress,
    )
    return [
        base.replace(optimizer=optimizer, seed=seed, run_dir=str(Path(plan.out) / f"{optimizer}-s{seed}"))
        for seed in plan.seeds
        for optimizer in ("adamw", "muon")
    ]


def run_demo(plan: DemoPlan) -> Path:
    """Train every demo run (skipping finished ones), write the report, print the headline."""
    configs = demo_configs(plan)
    for i, config in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {config.optimizer} seed {config.seed} -> {config.run_dir}", flush=True)
        command = shlex.join(["muonlab", "train", *_as_flags(config)])
        train(config, command=command)
    report = write_report([c.run_dir for c in configs], plan.out,
                          title="muonlab demo: Muon vs AdamW at AdamW's lr and weight decay",
                          intro=_intro(configs[0]))
    summaries = summarize_by_optimizer(_load(configs))
    muon, adamw = summaries.get("muon"), summaries.get("adamw")
    print(f"\nreport: {report}")
    if muon and adamw:
        gap = adamw.mean - muon.mean
        spread = max(muon.std or 0.0, adamw.std or 0.0)
        print(f"final validation loss: AdamW {adamw.mean:.4f}, Muon {muon.mean:.4f} "
              f"(Muon lower by {gap:.4f} nats; seed-to-seed std {spread:.4f})")
    sys.stdout.flush()
    return report


def _intro(config: TrainConfig) -> str:
    record = json.loads((Path(config.run_dir) / "config.json").read_text())
    model = record["model_config"]
    return (
        f"Moonlight (arXiv 2502.16982) scales Muon's update by 0.2·sqrt(max(A, B)) so that its RMS matches "
        f"AdamW's (≈ 0.2) and AdamW's learning rate and weight decay can be reused unchanged. This demo "
        f"trains the same model with AdamW and with Muon at the *same* lr ({config.lr:g}, warmup + cosine "
        f"to {config.final_lr_ratio:g}×) and weight decay ({config.weight_decay:g}); only the optimizer "
        f"differs within a seed.\n\n"
        f"- Model: Llama-style decoder, {model['n_layers']} layers, d_model {model['d_model']}, "
        f"{model['n_heads']} heads, SwiGLU {model['ffn_hidden']}, untied head: {record['num_params']:,} "
        f"parameters ({record['num_non_embedding_params']:,} outside the embedding and head).\n"
        f"- Data: {record['dataset']}; {record['total_steps']} steps of {record['tokens_per_step']:,} tokens "
        f"= {record['total_steps'] * record['tokens_per_step']:,} training tokens per run.\n"
        f"- Muon on the {4 * model['n_layers'] + (3 if model['mlp'] == 'swiglu' else 2) * model['n_layers']} "
        f"hidden matrices; AdamW (β = ({config.beta1:g}, {config.beta2:g})) on embedding, head and norms in "
        f"both runs. Validation loss is measured on {config.eval_batches} fixed held-out batches.\n"
        f"- Device: {record['device']}, torch {record['torch']}, {config.dtype} autocast."
    )


def _load(configs):
    from ..analysis.runs import load_runs

    return load_runs([c.run_dir for c in configs])


def _as_flags(config: TrainConfig) -> list[str]:
    defaults = TrainConfig().to_dict()
    flags = []
    for key, value in config.to_dict().items():
        if value != defaults[key] and key != "progress":
            flags += [f"--{key}", str(value)]
    return flags
