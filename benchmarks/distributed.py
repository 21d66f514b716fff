"""Distributed Muon on 1, 2 and 4 gloo processes: state per rank, bytes per collective, NS FLOPs per rank, step time.

For each world size and mode (``none`` on one process; ``ddp``, ``zero1``, ``fsdp`` and device meshes
such as ``tp=2``, ``dp_shard=2,tp=2`` or ``ep=2,dp_shard=2`` — FSDP2 × tensor × expert parallelism,
``muonlab.parallel.mesh``, the last for an MoE preset — on several) the same model trains a few steps
with muonlab's Muon and, under the same mode, with AdamW (the same class with every group on AdamW).
Measured per rank and step:

- optimizer state bytes (``Muon.state_bytes()``: what this rank holds);
- every collective this rank calls during a step, forward and backward included: the
  ``torch.distributed`` functions are wrapped (DDP's all-reduce is routed through them with its
  default Python comm hook, FSDP2 calls them from Python), and so are the functional collectives
  that DTensor's redistribution calls; those of the optimizer step are listed apart
  (``optimizer.<name>``), so that the expert-parallel token all-to-all of forward and backward
  is not mistaken for Muon's. Per collective: payload bytes given to
  it and bytes this rank *sends* under the standard algorithms — ring all-reduce 2(N−1)/N of the
  buffer, ring reduce-scatter / all-gather (N−1)/N of the full buffer, all-to-all exactly what goes
  to other ranks;
- Newton–Schulz FLOPs this rank executes (``orthogonalize`` is wrapped and each call's FLOPs taken
  from ``ns_flops`` for the shapes it saw), and how many matrices it orthogonalizes;
- median wall time of the whole step (forward, backward, optimizer) and of the optimizer step.

Also run, under FSDP2: ``torch.optim.Muon`` applied to the DTensor parameters, i.e. plain Muon math
through DTensor's dispatch. It is numerically right but every rank gathers every whole matrix and
repeats its Newton–Schulz; the table shows what muonlab avoids.

Checked against targets (printed PASS/FAIL):

- state per rank ≤ single-process state / N + one largest matrix (fp32 momentum of it);
- NS FLOPs per rank ≤ single-process NS FLOPs / N + one largest matrix's NS FLOPs;
- on a mesh: NS FLOPs per rank ≤ 1.25 × single-process NS FLOPs / N, and the matrices orthogonalized
  over all ranks = the single-process count (no matrix twice; each expert of a stack counts as one);
  Muon's all-to-all bytes (all ranks) against the lower bound for bf16 Newton–Schulz: per matrix,
  every distinct piece but the largest travels to the owner (2·(numel − largest piece)) and every
  holder but one gets its piece of the result (2·(Σ_holders piece − largest piece)) — 2·2·numel·(h−1)/h
  for h disjoint equal pieces; per run of whole experts held by c ranks, 2·numel·(c − 1) (orthogonalized
  at one holder, sent to the others; 0 when each expert lives on one rank, as under expert parallelism);
- ZeRO-1 Muon bytes sent per rank ≤ Moonlight's bound for Distributed Muon (arXiv 2502.16982 §2.3):
  (4 + 4 + 2)·Ψ·(N−1)/N bytes — fp32 reduce-scatter of the gradients, fp32 all-gather of the
  parameters, bf16 gather of the Muon matrices — i.e. 1.25 × ZeRO-1 AdamW's 8·Ψ·(N−1)/N, with Ψ the
  number of parameters; the measured ZeRO-1 AdamW bytes are shown beside it.

    python benchmarks/distributed.py                       # worlds 1 2 4, the "demo" preset
    python benchmarks/distributed.py --worlds 1 2 --steps 4 --model tiny
    python benchmarks/distributed.py --worlds 1 4 --modes fsdp tp=4 dp_shard=2,tp=2
    python benchmarks/distributed.py --worlds 1 4 --modes ep=2,dp_shard=2 ep=4 --model moe-tiny --no-naive
    python benchmarks/distributed.py --worlds 1 2 --modes tp=2 --per-head   # per-head blocks' bytes beside whole
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from muonlab.models import Transformer, preset
from muonlab.optim import Muon, ns_flops, param_groups
from muonlab.optim.newton_schulz import choose_method
from muonlab.parallel import data_parallel_rank, data_parallel_size, init_mesh, parallelize

VOCAB, SEQ = 256, 64

sys.path.insert(0, str(Path(__file__).parent))
from distributed_counters import Counter, install_collective_counters, install_ns_counter  # noqa: E402

# ---- one configuration -----------------------------------------------------------------------------


def _optimizers(model, name: str, lr: float = 3e-3):
    groups = param_groups(model, orthogonalize="per_head" if name == "muon/per_head" else "matrix")
    if name == "torch.optim.Muon":
        muon = [p for g in groups if g["algorithm"] == "muon" for p in g["params"]]
        rest = [p for g in groups if g["algorithm"] != "muon" for p in g["params"]]
        return [torch.optim.Muon(muon, lr=lr, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
                torch.optim.AdamW(rest, lr=lr, weight_decay=0.1, betas=(0.9, 0.95))]
    if name == "adamw":
        for g in groups:
            g["algorithm"] = "adamw"
    return [Muon(groups, lr=lr, weight_decay=0.1, max_grad_norm=1.0)]


def _state_bytes(optimizers) -> int:
    total = 0
    for opt in optimizers:
        if isinstance(opt, Muon):
            total += opt.state_bytes()
        else:
            total += sum((v._local_tensor if hasattr(v, "_local_tensor") else v).numel() * v.element_size()
                         for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    return total


def _parallelize(model, mode: str, rank: int, world: int):
    """``(forward, data shard, data shards)`` under ``mode``: a name, or mesh sizes like ``dp_shard=2,tp=2``."""
    if "=" not in mode:
        return parallelize(model, mode), rank, world
    mesh = init_mesh("cpu", **{k: int(v) for k, v in (item.split("=") for item in mode.split(","))})
    return parallelize(model, mesh), data_parallel_rank(mesh), data_parallel_size(mesh)


def _piece_numel(piece, matrix_numel: int) -> int:
    """Elements of a held piece: a Block of the matrix, or an expert range (first, end) of a stack."""
    if isinstance(piece, tuple) and len(piece) == 2 and isinstance(piece[0], int):
        return (piece[1] - piece[0]) * matrix_numel
    return (piece.rows[1] - piece.rows[0]) * (piece.cols[1] - piece.cols[0])


def _exchange_bound(optimizers) -> float:
    """Bytes (all ranks) an exact owner-compute must move for bf16 Newton–Schulz (see the module docstring)."""
    engine = getattr(optimizers[0], "_engine", None)
    if not hasattr(engine, "held"):
        return 0.0
    total = 0.0
    for k, pieces in engine.held.items():
        m = engine.matrix_param(k)
        held = [p for p in pieces if p is not None]
        sizes = {p: _piece_numel(p, m.rows * m.cols) for p in held}
        if isinstance(held[0], tuple) and isinstance(held[0][0], int):  # expert ranges: replicas get the result
            total += sum(2 * sizes[p] * (held.count(p) - 1) for p in sizes)
            continue
        largest = max(sizes.values())
        total += 2 * (sum(sizes.values()) - largest) + 2 * (sum(sizes[p] for p in held) - largest)
    return total


def _attention_exchange(optimizers) -> float:
    """Bytes (all ranks, one step) the owner-compute plan moves for the attention matrices (``.attn.`` in their
    name): every piece sent to an owner and every result sent back, in the exchange dtypes. 0 on one process."""
    from muonlab.optim.distributed.shards import sharded_units

    engine = getattr(optimizers[0], "_engine", None)
    if not hasattr(engine, "held"):
        return 0.0
    ks = [k for k in engine.held if ".attn." in engine.slots[k].name]
    if not ks:
        return 0.0
    units, where = sharded_units([engine.matrix_param(k) for k in ks], [engine.held[k] for k in ks],
                                 [engine.regions[k] for k in ks], engine.world_size)
    total = 0.0
    for u in units:
        size_in, size_out = (torch.empty((), dtype=d).element_size() for d in (u.key.in_dtype, u.key.out_dtype))
        total += sum(u.size(i) * size_in + u.size(o) * size_out
                     for r, (i, o) in enumerate(zip(u.inputs, u.outputs)) if r != u.owner)
    return total


def run_config(rank: int, world: int, mode: str, optimizer: str, args, counter: Counter) -> dict:
    torch.manual_seed(0)
    model = Transformer(preset(args.model, vocab_size=VOCAB, max_seq_len=SEQ))
    forward, shard, shards = _parallelize(model, mode, rank, world)
    if mode == "ddp":
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        forward.register_comm_hook(None, allreduce_hook)  # DDP's all-reduce through dist.all_reduce
    optimizers = _optimizers(model, optimizer)
    largest = max((tuple(p.shape[-2:]) for g in param_groups(model) if g["algorithm"] == "muon" for p in g["params"]),
                  key=math.prod)  # an expert stack [E, A, B] is E matrices [A, B]
    step_ms, optim_ms = [], []
    for step in range(args.warmup + args.steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, VOCAB, (shards * args.batch, SEQ + 1), generator=g)
        x = x[shard * args.batch : (shard + 1) * args.batch]
        measured = step >= args.warmup
        counter.active = measured
        try:
            started = time.perf_counter()
            forward(x[:, :-1], x[:, 1:]).backward()
            opt_started = time.perf_counter()
            counter.phase = "optimizer."
            for opt in optimizers:
                opt.step()
            counter.phase = ""
            done = time.perf_counter()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        finally:
            counter.active = False
        if measured:
            step_ms.append((done - started) * 1e3)
            optim_ms.append((done - opt_started) * 1e3)
    stats = {op: [v / args.steps for v in values] for op, values in counter.stats.items()}
    result = {
        "world": world, "mode": mode, "optimizer": optimizer, "rank": rank,
        "params": sum(p.numel() for p in model.parameters()),
        "largest_matrix": list(largest),
        "state_bytes": _state_bytes(optimizers),
        "collectives": stats,
        "sent_bytes": sum(v[2] for v in stats.values()),
        "ns_flops": counter.ns_flops / args.steps,
        "ns_matrices": counter.ns_matrices / args.steps,
        "exchange_bound": _exchange_bound(optimizers) if optimizer == "muon" else 0.0,
        "attention_exchange": _attention_exchange(optimizers) if optimizer.startswith("muon") else 0.0,
        "step_ms": statistics.median(step_ms),
        "optim_ms": statistics.median(optim_ms),
    }
    counter.reset()
    return result


def worker(rank: int, world: int, port: int, args, out_dir: str) -> None:
    torch.set_num_threads(1)
    counter = Counter()
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        install_collective_counters(counter)
    install_ns_counter(counter)
    results = []
    fits = [m for m in args.modes if "=" not in m or math.prod(int(kv.split("=")[1]) for kv in m.split(",")) == world]
    modes = ["none"] if world == 1 else fits  # a mesh runs on the world size its dims multiply to
    for mode in modes:
        for optimizer in (("muon", "adamw") + (("muon/per_head",) if args.per_head else ())
                          + (("torch.optim.Muon",) if mode == "fsdp" and args.naive else ())):
            results.append(run_config(rank, world, mode, optimizer, args, counter))
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, args) -> list[dict]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        if world == 1:
            worker(0, 1, port, args, out)
        else:
            mp.spawn(worker, args=(world, port, args, out), nprocs=world)
        return [r for rank in range(world) for r in torch.load(Path(out) / f"rank{rank}.pt", weights_only=False)]


# ---- report ----------------------------------------------------------------------------------------


def report(results: list[dict]) -> list[str]:
    by = defaultdict(list)
    for r in results:
        by[(r["world"], r["mode"], r["optimizer"])].append(r)
    single = by[(1, "none", "muon")][0]
    m, n = sorted(single["largest_matrix"])
    largest, ns_largest = m * n, ns_flops(m, n, 5, choose_method("auto", m, n, 5, torch.bfloat16))
    lines = [
        f"model: {single['params']:,} parameters; largest Muon matrix {m}x{n} ({ns_largest / 1e9:.4f} NS GFLOP)",
        "",
        "| N | mode | optimizer | state / rank (max) | sent / rank / step (max) | NS GFLOP / rank (max) "
        "| step ms | optim ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (world, mode, opt), rs in by.items():
        lines.append(f"| {world} | {mode} | {opt} | {max(r['state_bytes'] for r in rs) / 1e6:.3f} MB | "
                     f"{max(r['sent_bytes'] for r in rs) / 1e6:.3f} MB | {max(r['ns_flops'] for r in rs) / 1e9:.3f} | "
                     f"{statistics.median(r['step_ms'] for r in rs):.1f} | "
                     f"{statistics.median(r['optim_ms'] for r in rs):.1f} |")
    lines += ["", "Bytes per collective (rank 0, per step): calls, payload MB, sent MB", ""]
    for (world, mode, opt), rs in by.items():
        if world > 1:
            collectives = sorted(rs[0]["collectives"].items())
            parts = [f"{op} {v[0]:.0f}x {v[1] / 1e6:.3f}/{v[2] / 1e6:.3f}" for op, v in collectives]
            lines.append(f"- N={world} {mode} {opt}: " + "; ".join(parts))
    lines += ["", "Targets:", ""]
    psi = single["params"]
    for (world, mode, opt), rs in by.items():
        if world == 1 or opt != "muon":
            continue
        state = max(r["state_bytes"] for r in rs)
        bound = single["state_bytes"] / world + 4 * largest
        flops = max(r["ns_flops"] for r in rs)
        fbound = single["ns_flops"] / world + ns_largest
        verdict = ("n/a (DDP replicates optimizer state, as for AdamW)" if mode == "ddp"
                   else "PASS" if state <= bound else "FAIL")
        lines.append(f"- N={world} {mode}: state/rank {state / 1e6:.3f} MB vs ≤ {bound / 1e6:.3f} MB "
                     f"(1/N + one largest matrix): {verdict}; "
                     f"NS FLOPs/rank {flops / 1e9:.3f} G ≤ {fbound / 1e9:.3f} G: "
                     f"{'PASS' if flops <= fbound else 'FAIL'}")
        if "=" in mode:
            lines.append(_mesh_targets(world, mode, rs, single))
        if mode == "zero1":
            sent = max(r["sent_bytes"] for r in rs)
            paper = 10 * psi * (world - 1) / world
            adamw = max(r["sent_bytes"] for r in by[(world, "zero1", "adamw")])
            lines.append(f"  ZeRO-1 bytes sent/rank/step {sent / 1e6:.3f} MB ≤ Moonlight's bound (4+4+2)·Ψ·(N−1)/N = "
                         f"{paper / 1e6:.3f} MB: {'PASS' if sent <= paper else 'FAIL'}; ratio to measured ZeRO-1 AdamW "
                         f"({adamw / 1e6:.3f} MB) = {sent / adamw:.3f} (paper: (1, 1.25])")
    return lines + _per_head_lines(by)


def _per_head_lines(by) -> list[str]:
    """Per-head blocks beside whole matrices on each multi-process layout: the attention matrices' exchange from the
    plan, the optimizer's measured all-to-all bytes and NS FLOPs; on a tensor-parallel mesh alone (every head whole
    on its rank) the attention matrices' exchange must be zero."""
    def moved(rs):
        return sum(r["collectives"].get("optimizer.all_to_all_single", [0, 0, 0])[2] for r in rs)

    lines = []
    for (world, mode, opt), heads in by.items():
        if opt != "muon/per_head" or world == 1:
            continue
        whole = by[(world, mode, "muon")]
        plan_w, plan_h = whole[0]["attention_exchange"], heads[0]["attention_exchange"]
        target = ""
        if "=" in mode and all(item.split("=")[0] == "tp" for item in mode.split(",")):
            target = f" (heads whole on every rank: must be 0: {'PASS' if plan_h == 0 else 'FAIL'})"
        lines.append(f"- N={world} {mode}: attention matrices' Muon exchange (plan, all ranks, per step): whole "
                     f"matrices {plan_w / 1e6:.4f} MB, per-head {plan_h / 1e6:.4f} MB{target}; Muon all-to-all "
                     f"measured (all ranks): whole {moved(whole) / 1e6:.4f} MB, per-head {moved(heads) / 1e6:.4f} MB "
                     f"(saved {(moved(whole) - moved(heads)) / 1e6:.4f} MB vs the plan's attention difference "
                     f"{(plan_w - plan_h) / 1e6:.4f} MB); NS GFLOP/rank (max): whole "
                     f"{max(r['ns_flops'] for r in whole) / 1e9:.4f}, per-head "
                     f"{max(r['ns_flops'] for r in heads) / 1e9:.4f}")
    return ["", "Per-head blocks beside whole matrices:", "", *lines] if lines else []


def _mesh_targets(world: int, mode: str, rs: list[dict], single: dict) -> str:
    """The mesh targets: NS balance within 1.25 × the ideal, each matrix once, all-to-all bytes vs their bound."""
    flops, ideal = max(r["ns_flops"] for r in rs), single["ns_flops"] / world
    matrices = sum(r["ns_matrices"] for r in rs)
    moved = sum(r["collectives"].get("optimizer.all_to_all_single", [0, 0, 0])[2] for r in rs)
    bound = rs[0]["exchange_bound"]
    return (f"  mesh {mode}: NS FLOPs/rank {flops / 1e9:.3f} G = {flops / ideal:.3f} × total/N (≤ 1.25: "
            f"{'PASS' if flops <= 1.25 * ideal else 'FAIL'}); matrices orthogonalized {matrices:.0f} over all ranks "
            f"vs {single['ns_matrices']:.0f} on one process: {'PASS' if matrices == single['ns_matrices'] else 'FAIL'}"
            f"; Muon all-to-all {moved / 1e6:.3f} MB (all ranks) vs lower bound {bound / 1e6:.3f} MB"
            + (f" = {moved / bound:.3f}×" if bound else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", default=["ddp", "zero1", "fsdp"],
                        help="parallel modes, or device meshes such as tp=2, dp_shard=2,tp=2 or ep=2,dp_shard=2 "
                        "(sizes multiply to N; ep needs an MoE --model such as moe-tiny)")
    parser.add_argument("--model", default="demo", help="muonlab model preset (byte vocab, seq 64)")
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-naive", dest="naive", action="store_false", help="skip torch.optim.Muon on DTensors")
    parser.add_argument("--per-head", dest="per_head", action="store_true",
                        help="also Muon with per-head blocks (muon/per_head), beside whole matrices")
    parser.add_argument("--json", help="also write the raw per-rank results here")
    args = parser.parse_args()
    results = [r for world in args.worlds for r in measure(world, args)]
    print("\n".join(report(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
