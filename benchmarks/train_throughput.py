"""muonlab's training loop against a minimal plain-PyTorch loop: same model, batch, dtype, optimizer.

The plain loop is the floor of what any loop can do: batches of the same corpus loaded into
memory beforehand (real text: its skewed token counts cost more in the embedding backward than
uniform random ids), forward under autocast, backward, optimizer step (which clips the raw gradient, as in
muonlab's loop), zero_grad — no data
loading, logging, evaluation or schedule.
muonlab's loop (``muonlab.train.train``) runs with evaluation only at the end (excluded from its
timing, as its ``tokens_per_s`` metric does). Both run in this process, under the fastest
allocator available (the script re-executes itself under it, exactly as the ``muonlab`` command
does), alternating plain/muonlab for each optimizer, ``--rounds`` times; medians are reported.

Also printed: model FLOPs utilisation (``flops_per_token × tokens/s``) against the bf16 matmul
peak measured here.

    python benchmarks/train_throughput.py                      # demo model, 4-layer d=256
    python benchmarks/train_throughput.py --d_model 128 --n_layers 2
    python benchmarks/train_throughput.py --device cuda --model gpt2-small --seq_len 1024 --compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from muonlab.allocator import ensure_fast_allocator
from muonlab.data import TokenLoader, prepare_dataset
from muonlab.models import Transformer
from muonlab.rundir import read_metrics
from muonlab.train.config import TrainConfig
from muonlab.train.loop import build_model_config, build_optimizer, resolve_device, train

sys.path.insert(0, str(Path(__file__).parent))
from optim_step import matmul_peak_gflops, sync  # noqa: E402


def plain_loop_tokens_per_s(config: TrainConfig, steps: int, device: torch.device) -> float:
    """Median tokens/s of the minimal loop (after 3 warm-up steps)."""
    torch.manual_seed(config.seed)
    model = Transformer(build_model_config(config, config.vocab_size)).to(device)
    forward = torch.compile(model) if config.compile else model
    optimizer = build_optimizer(model, config)
    data = prepare_dataset(config.corpus, tokenizer=config.tokenizer, vocab_size=config.vocab_size,
                           val_fraction=config.val_fraction)
    loader = TokenLoader(data.train_tokens, config.batch_size, config.seq_len, seed=config.seed)
    batches = [tuple(t.to(device) for t in loader.next_batch()) for _ in range(steps + 3)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.dtype == "bf16")
    times = []
    for i, (x, y) in enumerate(batches):
        sync(device)
        start = time.perf_counter()
        with autocast:
            loss = forward(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return config.batch_size * config.seq_len / statistics.median(times)


def muonlab_loop_tokens_per_s(config: TrainConfig, steps: int) -> float:
    """Median of the loop's own tokens_per_s metric rows, the first (warm-up) row left out."""
    with tempfile.TemporaryDirectory() as tmp:
        run = config.replace(run_dir=str(Path(tmp) / "run"), train_tokens=config.tokens_per_step() * steps,
                             log_every=max(1, steps // 8), eval_every=10**9, telemetry_every=0,
                             progress=False, resume=False)
        train(run)
        rows = [r["tokens_per_s"] for r in read_metrics(run.run_dir) if "tokens_per_s" in r]
    return statistics.median(rows[1:] or rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--d_model", type=int, default=0)
    parser.add_argument("--n_layers", type=int, default=0)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ensure_fast_allocator([str(Path(__file__).resolve()), *sys.argv[1:]])

    base = TrainConfig(model=args.model, d_model=args.d_model, n_layers=args.n_layers, seq_len=args.seq_len,
                       batch_size=args.batch_size, dtype=args.dtype, compile=args.compile, device=args.device)
    device = resolve_device(base.device)
    model_config = build_model_config(base, base.vocab_size)
    peak = matmul_peak_gflops(device)
    print(f"device {device}, allocator {os.environ.get('MUONLAB_ALLOCATOR', 'default')}, torch {torch.__version__}, "
          f"bf16 matmul peak {peak:.0f} GFLOP/s")
    print(f"model {args.model}: {model_config.num_params() / 1e6:.2f}M params, d={model_config.d_model}, "
          f"L={model_config.n_layers}, vocab {model_config.vocab_size}; batch {args.batch_size}×{args.seq_len}, "
          f"{args.dtype}{', compiled' if args.compile else ''}; {args.steps} steps × {args.rounds} rounds")
    flops_per_token = model_config.flops_per_token(args.seq_len)
    for optimizer in ("adamw", "muon"):
        config = base.replace(optimizer=optimizer)
        plain, ours = [], []
        for _ in range(args.rounds):
            plain.append(plain_loop_tokens_per_s(config, args.steps, device))
            ours.append(muonlab_loop_tokens_per_s(config, args.steps))
        p, o = statistics.median(plain), statistics.median(ours)
        print(f"  {optimizer:5s}  plain loop {p:9,.0f} tok/s (MFU {p * flops_per_token / 1e9 / peak:.2f})   "
              f"muonlab loop {o:9,.0f} tok/s (MFU {o * flops_per_token / 1e9 / peak:.2f})   ratio {o / p:.3f}")


if __name__ == "__main__":
    main()
