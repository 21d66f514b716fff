"""Time one optimizer step of muonlab's Muon against torch.optim.Muon, side by side.

Both run the same Newton–Schulz polynomial (Jordan's (3.4445, −4.7750, 2.0315), 5 steps) in the
same dtype (bf16) on the same matrices with the same gradients; the steps are interleaved so
machine noise hits both alike, and the median of each is reported with their ratio.

Matrix sets:
  gpt2   12 × [2304×768 (fused QKV), 768×768, 3072×768, 768×3072]   (GPT-2 small's hidden matrices)
  d256   4 × [256×256 ×4, 704×256 ×2, 256×704]                     (muonlab's 4-layer d=256 "demo" model)
  1.3b   24 × [6144×2048 (fused QKV), 2048×2048, 8192×2048, 2048×8192] (a GPT-3-XL-sized model, 16 heads
         of 128; a GPU set: one CPU step takes minutes)
  gpt2-layer  one block of ``gpt2`` (its 4 shapes once): the same per-matrix work at 1/12 of the time

``--variants`` times, in the same interleaved loop, plain Moonlight Muon against each refinement
(cautious weight decay, NorMuon, per-head blocks — 64-row heads of the fused QKV, 64-column heads of
the attention output — and all three) and prints each one's step time as a ratio to plain Muon's,
side by side, with per-head's Newton–Schulz FLOPs against whole-matrix's. Cautious decay and NorMuon
run as ``Muon`` does by default, their element-wise passes compiled (``muonlab.optim.fused``,
compiled in the untimed first step), and as ``+cautious eager`` / ``+normuon eager`` with
``compile=False``.

Also printed: the bf16 matmul peak measured on this machine, the Newton–Schulz GFLOP/s achieved
(FLOPs actually executed, from ``ns_flops``), and the optimizer-state bytes per algorithm.

Like the ``muonlab`` command, the script re-executes itself once under the fastest allocator
available (``muonlab.allocator``), so both optimizers' large temporaries are recycled instead of
page-faulted in afresh every step (without it, muonlab's batched 100 MB buffers pay that cost and
torch.optim.Muon's per-matrix ones mostly do not).

    python benchmarks/optim_step.py                 # both sets, CPU
    python benchmarks/optim_step.py --device cuda   # on a GPU
    python benchmarks/optim_step.py --sets gpt2 --variants   # the refinements' overheads, side by side
    OMP_NUM_THREADS=1 python benchmarks/optim_step.py --sets gpt2-layer --variants --clock cpu   # on a busy CPU

``--clock cpu`` times each step by this process's CPU time instead of the wall clock: on a CPU that other
jobs share, the wall time of a step includes whatever ran beside it, its CPU time mostly does not (with one
thread, so that no thread spins waiting for another).
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
    "1.3b": [(6144, 2048), (2048, 2048), (8192, 2048), (2048, 8192)] * 24,
    "gpt2-layer": [(2304, 768), (768, 768), (3072, 768), (768, 3072)],
}
HEADS = {  # per-head blocks of each set's attention matrices: fused QKV rows, output-projection columns
    "gpt2": {(2304, 768): {"blocks": 36}, (768, 768): {"col_blocks": 12}},
    "d256": {(256, 256): {"blocks": 4}},
    "1.3b": {(6144, 2048): {"blocks": 48}, (2048, 2048): {"col_blocks": 16}},
    "gpt2-layer": {(2304, 768): {"blocks": 36}, (768, 768): {"col_blocks": 12}},
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
VARIANTS = {
    "moonlight": ({}, False),
    "+cautious": ({"cautious_wd": True}, False),
    "+cautious eager": ({"cautious_wd": True, "compile": False}, False),
    "+normuon": ({"normuon": True}, False),
    "+normuon eager": ({"normuon": True, "compile": False}, False),
    "+per_head": ({}, True),
    "all three": ({"cautious_wd": True, "normuon": True}, True),
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


def bench_set(name: str, device: torch.device, repeats: int, peak: float, clock=time.perf_counter) -> float:
    shapes = SETS[name]
    ours_params, torch_params = make_params(shapes, device), make_params(shapes, device)
    ours = Muon(ours_params, algorithm="muon", lr=1e-3, weight_decay=0.1, scale="moonlight")
    theirs = torch.optim.Muon(torch_params, lr=1e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    times = {"muonlab": [], "torch": []}
    for i in range(repeats + 1):
        for label, opt in (("muonlab", ours), ("torch", theirs)):
            sync(device)
            t = clock()
            opt.step()
            sync(device)
            if i > 0:  # the first step allocates state
                times[label].append(clock() - t)
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


def _groups(name: str, params, per_head: bool) -> list[dict]:
    """One Muon group per matrix shape, with that shape's per-head blocks when asked."""
    groups: dict[tuple, dict] = {}
    for p in params:
        shape = tuple(p.shape)
        blocks = HEADS[name].get(shape, {}) if per_head else {}
        groups.setdefault(shape, {"params": [], "algorithm": "muon", **blocks})["params"].append(p)
    return list(groups.values())


def _block_ns_flops(name: str, per_head: bool, steps: int = 5) -> int:
    from muonlab.optim.blocks import parse_blocks

    cset, total = get_coefficient_set("jordan"), 0
    for shape in SETS[name]:
        spec = HEADS[name].get(shape, {}) if per_head else {}
        for _, _, r, c in parse_blocks(*shape, spec.get("blocks", 1), spec.get("col_blocks", 1)).grid():
            m, n = sorted((r[1] - r[0], c[1] - c[0]))
            total += ns_flops(m, n, steps, choose_method("auto", m, n, steps, torch.bfloat16, cset), cset)
    return total


def bench_variants(name: str, device: torch.device, repeats: int, clock=time.perf_counter) -> dict[str, float]:
    """Step time of each refinement against plain Moonlight Muon, interleaved; returns the ratios."""
    opts = {}
    for label, (options, per_head) in VARIANTS.items():
        params = make_params(SETS[name], device)
        opts[label] = Muon(_groups(name, params, per_head), lr=1e-3, weight_decay=0.1, **options)
    times: dict[str, list[float]] = {label: [] for label in opts}
    for i in range(repeats + 1):
        for label, opt in opts.items():
            sync(device)
            t = clock()
            opt.step()
            sync(device)
            if i > 0:
                times[label].append(clock() - t)
    base = statistics.median(times["moonlight"])
    fastest = min(times["moonlight"])
    print(f"\n[{name}] variants, {repeats} interleaved steps, median step time and ratio to plain Moonlight Muon "
          "(per-step pairs: median, range; fastest step: the ratio least disturbed by other work on the machine):")
    ratios = {}
    for label, ts in times.items():
        pairs = sorted(t / b for t, b in zip(ts, times["moonlight"]))
        ratios[label] = statistics.median(ts) / base
        print(f"  {label:15s} {statistics.median(ts) * 1e3:9.1f} ms   x{ratios[label]:.3f}   "
              f"pairs {statistics.median(pairs):.3f} ({pairs[0]:.3f}-{pairs[-1]:.3f})   "
              f"fastest x{min(ts) / fastest:.3f}")
    whole, heads = _block_ns_flops(name, False), _block_ns_flops(name, True)
    print(f"  Newton-Schulz FLOPs: whole matrices {whole / 1e9:.1f} GFLOP, per-head {heads / 1e9:.1f} GFLOP "
          f"(x{heads / whole:.3f}); measured step-time ratio per-head / whole x{ratios['+per_head']:.3f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["gpt2", "d256"], choices=list(SETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", action="store_true", help="also time the refinements against plain Muon")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="time steps by the wall clock or by this process's CPU time (a shared CPU)")
    args = parser.parse_args()
    ensure_fast_allocator([os.path.abspath(__file__), *sys.argv[1:]])
    device = torch.device(args.device)
    peak = matmul_peak_gflops(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, clock {args.clock}, "
          f"allocator {os.environ.get('MUONLAB_ALLOCATOR', 'default')}, measured bf16 matmul peak {peak:.0f} GFLOP/s")
    for name in args.sets:
        bench_set(name, device, args.repeats, peak, CLOCKS[args.clock])
        if args.variants:
            bench_variants(name, device, args.repeats, CLOCKS[args.clock])


if __name__ == "__main__":
    main()
