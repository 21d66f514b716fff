"""Time one optimizer step of muonlab's Muon against torch.optim.Muon, side by side.

Both run the same Newton–Schulz polynomial (Jordan's (3.4445, −4.7750, 2.0315), 5 steps) in the
same dtype (bf16) on the same matrices with the same gradients; the steps are interleaved so
machine noise hits both alike, and the median of each is reported with their ratio.

Matrix sets:
  gpt2   12 × [2304×768 (fused QKV), 768×768, 3072×768, 768×3072]   (GPT-2 small's hidden matrices)
  d256   4 × [256×256 ×4, 704×256 ×2, 256×704]                     (muonlab's 4-layer d=256 "demo" model)

Also printed: the bf16 matmul peak measured on this machine, the Newton–Schulz GFLOP/s achieved
(FLOPs actually executed, from ``ns_flops``), and the optimizer-state bytes per algorithm.

Like the ``muonlab`` command, the script re-executes itself once under the fastest allocator
available (``muonlab.allocator``), so both optimizers' large temporaries are recycled instead of
page-faulted in afresh every step (without it, muonlab's batched 100 MB buffers pay that cost and
torch.optim.Muon's per-matrix ones mostly do not).

    python benchmarks/optim_step.py                 # both sets, CPU
    python benchmarks/optim_step.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from muonlab.allocator import ensure_fast_allocator
from muonlab.optim import Muon, ns_flops
from muonlab.optim.newton_schulz import choose_method, get_coefficient_set

SETS = {
    "gpt2": [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12,
    "d256": [(256, 256)] * 16 + [(704, 256), (704, 256), (256, 704)] * 4,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Median bf16 GFLOP/s of an n×n×n matmul: the machine's practical matmul peak."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for _ in range(repeats + 2):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times[2:]) / 1e9


def make_params(shapes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(device))
        p.grad = torch.randn(shape, generator=g).to(device)
        params.append(p)
    return params


def executed_ns_flops(shapes, steps=5) -> int:
    cset = get_coefficient_set("jordan")
    total = 0
    for rows, cols in shapes:
        m, n = min(rows, cols), max(rows, cols)
        method = choose_method("auto", m, n, steps, torch.bfloat16, cset)
        total += ns_flops(m, n, steps, method, cset)
    return total


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


def bench_set(name: str, device: torch.device, repeats: int, peak: float) -> float:
    shapes = SETS[name]
    ours_params, torch_params = make_params(shapes, device), make_params(shapes, device)
    ours = Muon(ours_params, algorithm="muon", lr=1e-3, weight_decay=0.1, scale="moonlight")
    theirs = torch.optim.Muon(torch_params, lr=1e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    times = {"muonlab": [], "torch": []}
    for i in range(repeats + 1):
        for label, opt in (("muonlab", ours), ("torch", theirs)):
            sync(device)
            t = time.perf_counter()
            opt.step()
            sync(device)
            if i > 0:  # the first step allocates state
                times[label].append(time.perf_counter() - t)
    t_ours, t_torch = statistics.median(times["muonlab"]), statistics.median(times["torch"])
    standard = sum(ns_flops(min(s), max(s), 5, "standard") for s in shapes)
    executed = executed_ns_flops(shapes)
    print(f"\n[{name}] {len(shapes)} matrices, {sum(a * b for a, b in shapes) / 1e6:.1f}M parameters, "
          f"{repeats} interleaved steps, median:")
    print(f"  torch.optim.Muon  {t_torch * 1e3:9.1f} ms   NS {standard / 1e9:7.1f} GFLOP "
          f"-> {standard / t_torch / 1e9:6.0f} GFLOP/s ({standard / t_torch / 1e9 / peak:.0%} of peak)")
    print(f"  muonlab Muon      {t_ours * 1e3:9.1f} ms   NS {executed / 1e9:7.1f} GFLOP "
          f"-> {executed / t_ours / 1e9:6.0f} GFLOP/s ({executed / t_ours / 1e9 / peak:.0%} of peak)")
    ratios = sorted(o / t for o, t in zip(times["muonlab"], times["torch"]))
    print(f"  ratio muonlab / torch step time: {t_ours / t_torch:.3f} (ratio of medians); per-step pairs: "
          f"median {statistics.median(ratios):.3f}, range {ratios[0]:.3f}–{ratios[-1]:.3f}")
    adamw = torch.optim.AdamW(make_params(shapes, device), lr=1e-3)
    adamw.step()
    print(f"  optimizer state: muonlab {state_bytes(ours) / 2**20:.1f} MiB, torch.optim.Muon "
          f"{state_bytes(theirs) / 2**20:.1f} MiB, AdamW {state_bytes(adamw) / 2**20:.1f} MiB "
          f"(fp32 params: {sum(a * b for a, b in shapes) * 4 / 2**20:.1f} MiB)")
    return t_ours / t_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    ensure_fast_allocator([os.path.abspath(__file__), *sys.argv[1:]])
    device = torch.device(args.device)
    peak = matmul_peak_gflops(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"allocator {os.environ.get('MUONLAB_ALLOCATOR', 'default')}, measured bf16 matmul peak {peak:.0f} GFLOP/s")
    for name in args.sets:
        bench_set(name, device, args.repeats, peak)


if __name__ == "__main__":
    main()
