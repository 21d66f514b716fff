"""What QK-Clip's per-head max-logit computation costs a training step, side by side in one process.

The demo model's training step (forward under autocast, backward, Muon step as the training loop
builds it) is timed in three variants, taking turns step by step on the same model, optimizer and
batches so that drift of a shared machine hits all of them alike:

- ``off``: no max logits (``optimizer.qk_clip`` None, attention modules not tracking);
- ``measure``: every attention module records its per-head max logit in every forward
  (``muonlab.models.causal_max_logits``: query chunks, fp32, under no_grad) and ``QKClip.apply``
  reads them after each step (``tau=None``: measuring only, as the loop's telemetry does);
- ``clip``: QK-Clip on at every step (``tau`` so large that no head is clipped, but the whole path
  runs: measuring, the reduction, the per-row factors and the rescale of every q/k weight).

Median seconds per step and the ratios to ``off`` are printed (target: ≤ 1.05).

    python benchmarks/max_logit_overhead.py                     # demo model, batch 16×256, bf16, 1 thread
    python benchmarks/max_logit_overhead.py --device cuda --model gpt2-small --seq_len 1024
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from muonlab.allocator import ensure_fast_allocator
from muonlab.models import Transformer
from muonlab.optim import QKClip
from muonlab.optim.qk_clip import attention_modules
from muonlab.train.config import TrainConfig
from muonlab.train.loop import build_model_config, build_optimizer, resolve_device

sys.path.insert(0, str(Path(__file__).parent))
from optim_step import sync  # noqa: E402

VARIANTS = ("off", "measure", "clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the demo trains on one per run)")
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per variant, taking turns")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    args = parser.parse_args()
    ensure_fast_allocator([str(Path(__file__).resolve()), *sys.argv[1:]])
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig(model=args.model, seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype,
                         device=args.device)
    device = resolve_device(config.device)
    torch.manual_seed(0)
    model = Transformer(build_model_config(config, args.vocab_size)).to(device)
    optimizer = build_optimizer(model, config)
    qk_clips = {"off": None, "measure": QKClip(model), "clip": QKClip(model, tau=1e30)}
    modules = [module for _, module in attention_modules(model)]
    tokens = torch.randint(0, args.vocab_size, (args.batches, args.batch_size, args.seq_len + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast:
            loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_index in range(args.rounds + 2):  # rounds 0 and 1 warm every variant up and are not counted
        batch = tokens[round_index % args.batches]
        for variant in VARIANTS:
            optimizer.qk_clip = qk_clips[variant]
            for module in modules:
                module.track_max_logits = variant != "off"
            if variant == "measure":
                optimizer.qk_clip.measure_next_step()  # measuring only: asked for before every step
            sync(device)
            started = time.perf_counter()
            step(batch[:, :-1], batch[:, 1:])
            sync(device)
            if round_index > 1:
                times[variant].append(time.perf_counter() - started)

    cfg = model.config
    print(f"device {device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; model {args.model} "
          f"({cfg.num_params() / 1e6:.2f}M params, {cfg.n_layers} layers, {cfg.n_heads} heads, {cfg.attention}), "
          f"batch {args.batch_size}×{args.seq_len}, {args.dtype}; {args.rounds} steps per variant, taking turns")
    measured, clipped = qk_clips["measure"].stats(), qk_clips["clip"].stats()
    assert measured and clipped["qk_clip/heads_clipped"] == 0, (measured, clipped)  # both paths ran, nothing clipped
    print("  last measured max logits: " + ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in measured.items()))
    base = statistics.median(times["off"])
    for variant in VARIANTS:
        median = statistics.median(times[variant])
        print(f"  {variant:8s} {median * 1e3:8.1f} ms/step   ratio {median / base:.3f}")


if __name__ == "__main__":
    main()
