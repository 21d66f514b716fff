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

import sys
from dataclasses import dataclass
from pathlib import Path

from ..analysis.report import summarize_by_optimizer, write_report
from ..rundir import read_config
from ..train.config import TrainConfig
from .runner import run_configs

__all__ = ["DemoPlan", "demo_configs", "run_demo"]


@dataclass
class DemoPlan:
    """What the demo trains. The defaults fit in about five minutes on a 2-core CPU.

    4 layers, d_model 160, untied head, BPE vocab 4096: 2.6M parameters. Two runs train side by
    side (one thread each) and the model is compiled: measured on the 2-core machine, one thread
    trains this model at ≈ 18k tokens per CPU-second compiled (≈ 10.7k eager), so the four runs'
    6M tokens take ≈ 3 minutes of wall time plus compilation.
    """

    out: str = "runs/demo"
    corpus: str = "english"
    tokenizer: str = "bpe"
    vocab_size: int = 4096
    seeds: tuple[int, ...] = (0, 1)
    train_tokens: int = 1_503_232  # 367 steps of 16 × 256 tokens: just over 1.5M
    lr: float = 3e-3  # AdamW's best of {2e-3, 3e-3, 4.5e-3} on this setup (val 3.887, 3.783, 3.829)
    weight_decay: float = 0.1
    model: str = "demo"
    d_model: int = 160
    seq_len: int = 256
    batch_size: int = 16
    compile: bool = True
    progress: bool = True
    workers: int = 2


def demo_configs(plan: DemoPlan) -> list[TrainConfig]:
    """One ``TrainConfig`` per (optimizer, seed); the optimizer is the only difference in a pair."""
    steps = plan.train_tokens // (plan.seq_len * plan.batch_size)
    base = TrainConfig(
        corpus=plan.corpus,
        tokenizer=plan.tokenizer,
        vocab_size=plan.vocab_size,
        model=plan.model,
        d_model=plan.d_model,
        seq_len=plan.seq_len,
        batch_size=plan.batch_size,
        train_tokens=plan.train_tokens,
        lr=plan.lr,
        weight_decay=plan.weight_decay,
        schedule="cosine",
        warmup_steps=max(1, steps // 20),
        eval_every=max(1, steps // 12),
        eval_batches=8,
        log_every=10,
        telemetry_every=25,
        compile=plan.compile,
        progress=plan.progress,
    )
    return [
        base.replace(optimizer=optimizer, seed=seed, run_dir=str(Path(plan.out) / f"{optimizer}-s{seed}"))
        for seed in plan.seeds
        for optimizer in ("adamw", "muon")
    ]


def run_demo(plan: DemoPlan) -> Path:
    """Train every demo run (skipping finished ones), write the report, print the headline."""
    configs = demo_configs(plan)
    run_configs(configs, workers=plan.workers)
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
    record = read_config(config.run_dir)
    model = record["model_config"]
    return (
        f"Moonlight (arXiv 2502.16982) scales Muon's update by 0.2·sqrt(max(A, B)) so that its RMS matches "
        f"AdamW's (≈ 0.2) and AdamW's learning rate and weight decay can be reused unchanged. This demo "
        f"trains the same model with AdamW and with Muon at the *same* lr ({config.lr:g}, warmup + cosine "
        f"to {config.final_lr_ratio:g}×) and weight decay ({config.weight_decay:g}); only the optimizer "
        f"differs within a seed.\n\n"
        f"- Model: {_describe_model(model)}, untied head: {record['num_params']:,} "
        f"parameters ({record['num_non_embedding_params']:,} outside the embedding and head).\n"
        f"- Data: {record['dataset']}; {record['total_steps']} steps of {record['tokens_per_step']:,} tokens "
        f"= {record['total_steps'] * record['tokens_per_step']:,} training tokens per run.\n"
        f"- Muon on the {_muon_matrix_count(model)} hidden matrices; "
        f"AdamW (β = ({config.beta1:g}, {config.beta2:g})) on embedding, head and norms in "
        f"both runs. Validation loss is measured on {config.eval_batches} fixed held-out batches.\n"
        f"- Device: {record['device']}, torch {record['torch']}, {config.dtype} autocast."
    )


def _describe_model(model: dict) -> str:
    text = f"{model['n_layers']} layers, d_model {model['d_model']}, {model['n_heads']} heads"
    if model.get("n_routed_experts"):
        return (f"Moonlight-style MoE decoder, {text}, {model['attention'].upper()} attention; blocks from "
                f"{model['first_k_dense']} on have {model['n_routed_experts']} routed (top-{model['top_k']}) + "
                f"{model['n_shared_experts']} shared SwiGLU experts of width {model['expert_ffn_hidden']}")
    return f"Llama-style decoder, {text}, SwiGLU {model['ffn_hidden']}"


def _muon_matrix_count(model: dict) -> int:
    """Matrices Muon orthogonalizes (each expert of a stack counts once), from the routing of the model."""
    import torch

    from ..models import ModelConfig, Transformer
    from ..optim import route_parameters

    with torch.device("meta"):
        routed = route_parameters(Transformer(ModelConfig.from_dict(model)))
    return sum(rp.param.shape[0] if rp.role == "expert" else 1 for rp in routed if rp.algorithm == "muon")


def _load(configs):
    from ..analysis.runs import load_runs

    return load_runs([c.run_dir for c in configs])
