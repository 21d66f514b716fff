"""What ``benchmarks/distributed.py`` measures inside each process: every collective's calls, payload and bytes
sent (``torch.distributed`` and the functional collectives DTensor calls, wrapped), and the Newton–Schulz FLOPs
of muonlab's and torch.optim.Muon's orthogonalizations (see that script's docstring for the accounting)."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist

from muonlab.optim import ns_flops
from muonlab.optim.newton_schulz import choose_method, get_coefficient_set

__all__ = ["Counter", "install_collective_counters", "install_ns_counter"]


_WRAPPED = ("all_reduce", "reduce_scatter_single", "reduce_scatter_tensor", "all_gather_single",
            "all_gather_into_tensor", "all_to_all_single", "broadcast", "all_gather", "reduce_scatter")


def _nbytes(t) -> int:
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(x) for x in t)
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class Counter:
    """Per collective: calls, payload bytes, bytes this rank sends (while ``active``)."""

    def __init__(self) -> None:
        self.active = False
        self.phase = ""  # "optimizer." during the optimizer step: its collectives are listed apart
        self.depth = 0  # torch's deprecated names call the new ones: count the outermost call only
        self.stats: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0])
        self.ns_flops = 0.0
        self.ns_matrices = 0

    def add(self, op: str, payload: int, sent: float) -> None:
        if self.active:
            entry = self.stats[self.phase + op]
            entry[0] += 1
            entry[1] += payload
            entry[2] += sent

    def reset(self) -> None:
        self.stats.clear()
        self.ns_flops = 0.0
        self.ns_matrices = 0


def _sent(op: str, args, kwargs, world: int, rank: int) -> tuple[int, float]:
    """(payload bytes, bytes sent by this rank) of one c10d call under ring / pairwise algorithms."""
    first = args[0] if args else next(iter(kwargs.values()))
    if op == "all_reduce":
        b = _nbytes(first)
        return b, 2 * b * (world - 1) / world
    if op in ("reduce_scatter_single", "reduce_scatter_tensor"):  # (output, input)
        b = _nbytes(args[1] if len(args) > 1 else kwargs["input"])
        return b, b * (world - 1) / world
    if op in ("all_gather_single", "all_gather_into_tensor"):  # (output, input)
        b = _nbytes(first)
        return b, b * (world - 1) / world
    if op == "all_to_all_single":  # (output, input, output_splits, input_splits)
        inp = args[1]
        splits = args[3] if len(args) > 3 else kwargs.get("input_split_sizes")
        per = inp.numel() // world if not splits else None
        sizes = splits or [per] * world
        row = inp.element_size() * (inp[0].numel() if inp.ndim > 1 else 1)
        return _nbytes(inp), sum(s for r, s in enumerate(sizes) if r != rank) * row
    if op == "broadcast":
        b = _nbytes(first)
        return b, b if rank == 0 else 0
    b = _nbytes(first)
    return b, b * (world - 1) / world


def _funcol_sent(op: str, args, kwargs, world: int, rank: int) -> tuple[int, float]:
    """(payload bytes, bytes sent) of one functional collective: its first argument is the local input."""
    b = _nbytes(args[0])
    if "all_reduce" in op:
        return b, 2 * b * (world - 1) / world
    if "all_gather" in op:
        return b, b * (world - 1)
    return b, b * (world - 1) / world


def _wrap(module, names, counter: Counter, sent, prefix: str = "") -> None:
    """Replace ``module.<name>`` by a counting wrapper (outermost call only)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    for op in names:
        real = getattr(module, op, None)
        if real is None:
            continue

        def wrapper(*args, _real=real, _op=op, **kwargs):
            outer = counter.depth == 0
            counter.depth += 1
            try:
                if outer:
                    counter.add(prefix + _op, *sent(_op, args, kwargs, world, rank))
                return _real(*args, **kwargs)
            finally:
                counter.depth -= 1

        setattr(module, op, wrapper)


def install_collective_counters(counter: Counter) -> None:
    """Count c10d collectives (Muon, DDP's Python comm hook, FSDP2) and functional ones (DTensor)."""
    import torch.distributed._functional_collectives as funcol

    _wrap(dist, _WRAPPED, counter, _sent)
    _wrap(funcol, ("all_gather_single", "all_gather_tensor", "all_reduce", "reduce_scatter_single",
                   "reduce_scatter_tensor", "all_to_all_single"), counter, _funcol_sent, prefix="functional.")


def install_ns_counter(counter: Counter) -> None:
    """Count Newton–Schulz FLOPs in muonlab (both paths) and in torch.optim.Muon."""
    import torch.optim._muon as torch_muon

    import muonlab.optim.engines.base as engine_base

    def counted(real):
        def orthogonalize(G, coefficients="jordan", steps=5, dtype=torch.bfloat16, eps=1e-7, method="auto"):
            rows, cols = G.shape[-2:]
            m, n = min(rows, cols), max(rows, cols)
            cset = get_coefficient_set(coefficients)
            chosen = choose_method(method, m, n, steps, dtype, cset)
            if counter.active:
                method_counted = chosen if chosen != "svd" else "standard"
                counter.ns_flops += math.prod(G.shape[:-2]) * ns_flops(m, n, steps, method_counted,
                                                                      cset)
                counter.ns_matrices += math.prod(G.shape[:-2])
            return real(G, coefficients, steps, dtype, eps, method)
        return orthogonalize

    engine_base.orthogonalize = counted(engine_base.orthogonalize)
    real_torch = torch_muon._zeropower_via_newtonschulz

    def torch_ns(grad, ns_coefficients, ns_steps, eps):
        m, n = min(grad.shape), max(grad.shape)
        if counter.active:
            counter.ns_flops += ns_flops(m, n, ns_steps, "standard")
            counter.ns_matrices += 1
        return real_torch(grad, ns_coefficients, ns_steps, eps)

    torch_muon._zeropower_via_newtonschulz = torch_ns
