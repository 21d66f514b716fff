"""Moonlight-shaped MoE vs a dense model with the same active parameters: training tokens/s, side by side.

Both models come from one preset (default ``moe-demo``): the MoE model, and its dense twin with
``n_routed_experts=0`` — every block a dense SwiGLU of width ``ffn_hidden`` = (top_k + n_shared) ×
expert width, the same MLA attention, embeddings and head — so a token uses the same parameters in
both, up to the router (E·d per MoE block). One step is forward + backward under bf16 autocast
(``--optimizer adamw|muon`` adds the optimizer step). Steps alternate MoE / dense for ``--rounds``
rounds in this one process; the figures are medians.

Every step takes another batch (a pool of ``--rounds`` random batches), so routing — and with it
every expert's row count — changes from step to step as in training; with one repeated batch the
per-expert GEMM shapes would never change and CPU kernel creation (see
``muonlab.models.moe.bucketed_group_sizes``) would go unmeasured. One warm-up pass over the pool
builds the kernels the pool needs, as the first steps of a training run do; ``--no_bucket`` shows
what unbucketed groups cost.

Then the MoE layer is taken apart on the very inputs it sees inside the model (one per batch),
each piece timed forward + backward on its own (medians): the router (fp32 logits, sigmoid, top-k,
gate weights), the permutation (``expert_layout``: argsort by expert, bincount, group padding;
the gather of every (token, expert) row and the ``index_add`` back per token), the expert
GEMMs (SwiGLU through the dispatch backend) and the shared experts. "Routing/permutation"
is the router plus the permutation, given in ms per layer and as a share of the MoE model's step.

Threads: ``--threads 1`` by default. The development machine has 2 cores shared with other
jobs; OpenMP hand-offs to a descheduled second thread make every small op up to 10x slower there,
which hits the MoE's many small per-expert GEMMs much harder than the dense model's few large ones.

    python benchmarks/moe_throughput.py                              # moe-demo, batch 16×256, 1 thread
    python benchmarks/moe_throughput.py --threads 2 --optimizer muon
    python benchmarks/moe_throughput.py --device cuda --batch_size 64 --seq_len 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from muonlab.allocator import ensure_fast_allocator
from muonlab.models import MoE, Transformer, preset
from muonlab.models.moe import (
    _experts_grouped_mm,
    _experts_padded_bmm,
    compute_dtype,
    expert_layout,
    grouped_mm_supported,
    route,
)
from muonlab.optim import Muon, param_groups

sys.path.insert(0, str(Path(__file__).parent))
from optim_step import sync  # noqa: E402


def dense_twin(config):
    """The same model with every block dense: FFN width ffn_hidden = (top_k + n_shared) * expert width."""
    return dataclasses.replace(config, n_routed_experts=0, n_shared_experts=0, top_k=0, expert_ffn_hidden=None)


def make_step(model, batches, args, device):
    """A closure running one training step on the next batch of ``batches`` (cycled)."""
    optimizer = None
    if args.optimizer != "none":
        groups = param_groups(model)
        if args.optimizer == "adamw":
            for group in groups:
                group["algorithm"] = "adamw"
        optimizer = Muon(groups, lr=1e-3)
    turn = iter(range(10**9))

    def step():
        x = batches[next(turn) % len(batches)]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(x, x.roll(-1, dims=1))
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            model.after_optimizer_step()
        model.zero_grad(set_to_none=True)

    return step


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def fwd_bwd(fn, device, leaves):
    """fn() -> output under autocast; backward with a fixed random (contiguous) output gradient into
    fresh ``.grad`` of ``leaves`` (reset first, as a training step's zero_grad(set_to_none) does)."""
    probe = {}

    def run():
        for leaf in leaves:
            leaf.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = fn()
        if "g" not in probe:
            probe["g"] = torch.randn_like(out)
        out.backward(probe["g"])

    return run


def moe_pieces(moe: MoE, x: torch.Tensor, device) -> dict[str, callable]:
    """Forward+backward closures for the pieces of one MoE layer on its input x [B, T, d]."""
    flat = x.reshape(-1, x.shape[-1]).detach().requires_grad_()
    N, d = flat.shape
    with torch.no_grad():
        routing = route(F.linear(flat.float(), moe.router.float()), moe.balance_bias, moe.top_k, moe.scale)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        dtype = compute_dtype(flat)
    k, E = moe.top_k, moe.n_experts
    bucket = device.type == "cpu" if moe.bucket is None else moe.bucket
    slot_of_row, sizes = expert_layout(routing.experts, E, bucket)
    token_of_row = slot_of_row // k
    x_ext = torch.cat([flat.detach().to(dtype), flat.new_zeros(1, d, dtype=dtype)])
    xs = x_ext.index_select(0, token_of_row).requires_grad_()
    gate = torch.cat([routing.weights.reshape(-1), routing.weights.new_zeros(1)]).index_select(0, slot_of_row).to(dtype)
    backend = moe.backend
    if backend == "auto":
        backend = "grouped_mm" if grouped_mm_supported(device.type, dtype, d, moe.w_gate.shape[1]) else "padded_bmm"
    experts_fn = _experts_grouped_mm if backend == "grouped_mm" else _experts_padded_bmm

    def router():
        with torch.autocast(device.type, enabled=False):
            logits = F.linear(flat.float(), moe.router.float())
        return route(logits, moe.balance_bias, k, moe.scale).weights

    def permutation():  # what moe_experts does around the GEMMs: layout, gather rows, sum back, identity experts
        slot_of_row, _ = expert_layout(routing.experts, E, bucket)
        token_of_row = slot_of_row // k
        rows = torch.cat([flat.to(dtype), flat.new_zeros(1, d, dtype=dtype)]).index_select(0, token_of_row)
        return rows.new_zeros(N + 1, d).index_add(0, token_of_row, rows)[:N]

    def gemms():
        return experts_fn(xs, sizes, gate, moe.w_gate.to(dtype), moe.w_up.to(dtype), moe.w_down.to(dtype))

    pieces = {"router": router, "permutation": permutation, f"expert GEMMs ({backend})": gemms}
    if moe.shared is not None:
        pieces["shared experts"] = lambda: moe.shared(flat)
    pieces["whole MoE layer"] = lambda: moe(flat.view_as(x))
    leaves = [flat, xs, *moe.parameters()]
    return {name: fwd_bwd(fn, device, leaves) for name, fn in pieces.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="moe-demo", help="an MoE preset (see `muonlab presets`)")
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; see the docstring)")
    parser.add_argument("--optimizer", default="none", choices=["none", "adamw", "muon"],
                        help="also time the optimizer step (default: forward + backward only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no_bucket", action="store_true",
                        help="do not pad expert groups to few sizes "
                             "(the GPU layout; shows the CPU kernel-creation cost)")
    args = parser.parse_args()
    ensure_fast_allocator([str(Path(__file__).resolve()), *sys.argv[1:]])
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    moe_config = preset(args.model, args.vocab_size, args.seq_len, tie_embeddings=False)
    if not moe_config.is_moe:
        raise SystemExit(f"--model {args.model} is not an MoE preset; choose one of moe-tiny, moe-demo")
    configs = {"MoE": moe_config, "dense": dense_twin(moe_config)}
    torch.manual_seed(0)
    models = {name: Transformer(c).to(device) for name, c in configs.items()}
    for module in models["MoE"].modules():
        if isinstance(module, MoE) and args.no_bucket:
            module.bucket = False
    # Fresh batches, as in training: routing, and so every expert's row count, changes each step.
    batches = [torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), device=device)
               for _ in range(args.rounds)]
    steps = {name: make_step(m, batches, args, device) for name, m in models.items()}
    tokens = args.batch_size * args.seq_len
    print(f"torch {torch.__version__}, {device}, {args.threads} thread(s); batch {args.batch_size}×{args.seq_len}, "
          f"bf16 autocast, forward+backward{'' if args.optimizer == 'none' else ' + ' + args.optimizer + ' step'}; "
          f"{args.rounds} interleaved rounds, medians{'; expert groups not bucketed' if args.no_bucket else ''}")
    for name, c in configs.items():
        print(f"  {name:5s}: {c.num_active_params() / 1e6:6.2f}M active / {c.num_params() / 1e6:6.2f}M total params "
              f"({c.num_active_params(False) / 1e6:.2f}M / {c.num_params(False) / 1e6:.2f}M without embeddings), "
              f"{c.flops_per_token(args.seq_len) / 1e6:.1f} MFLOP/token")

    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in batches:  # warm-up over every batch: CPU GEMM kernels for the shapes they need are built once
        for step in steps.values():
            step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, device))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in models:
        print(f"  {name:5s}: {median[name] * 1e3:7.1f} ms/step  {tokens / median[name]:9,.0f} tokens/s")
    ratio = median["dense"] / median["MoE"]
    print(f"  MoE / dense throughput: {ratio:.3f}  (target >= 0.6)")

    moe_model = models["MoE"]
    layer = moe_model.layers[moe_config.first_k_dense].mlp
    inputs = []  # the layer's input for every batch, so the pieces, too, see routing change
    handle = layer.register_forward_pre_hook(lambda module, args_: inputs.append(args_[0].detach().float()))
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for x in batches:
            moe_model(x)
    handle.remove()
    piece_sets = [moe_pieces(layer, x, device) for x in inputs]
    piece_times: dict[str, list[float]] = {name: [] for name in piece_sets[0]}
    for pieces in piece_sets:  # warm-up: every GEMM shape these inputs need gets its CPU kernel built once
        for run in pieces.values():
            run()
    for pieces in piece_sets:
        for name, run in pieces.items():
            piece_times[name].append(timed(run, device))
    moe_model.zero_grad(set_to_none=True)
    n_moe = sum(isinstance(b.mlp, MoE) for b in moe_model.layers)
    print(f"MoE layer pieces, forward+backward on the layer's own input ({n_moe} MoE layers per step):")
    per_piece = {name: statistics.median(t) for name, t in piece_times.items()}
    for name, t in per_piece.items():
        print(f"  {name:28s} {t * 1e3:7.2f} ms/layer   {n_moe * t / median['MoE']:6.1%} of the MoE step")
    routing = per_piece["router"] + per_piece["permutation"]
    share = n_moe * routing / median["MoE"]
    print(f"  routing + permutation: {routing * 1e3:.2f} ms/layer, {share:.1%} of the MoE step")


if __name__ == "__main__":
    main()
