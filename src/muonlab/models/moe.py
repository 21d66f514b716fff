"""DeepSeek-V3 / Moonlight-style mixture-of-experts feed-forward layer.

Moonlight (arXiv 2502.16982 §3.3, App. C) is a DeepSeek-V3-small-like MoE: 64 fine-grained routed
experts (SwiGLU, width 1408 = dense width / 8), 2 shared experts, top-6 routing with sigmoid
scores, the auxiliary-loss-free load balancing of Wang et al. (arXiv 2408.15664, as in
DeepSeek-V3 arXiv 2412.19437 §2.1.2) and a gate scaling factor of 2.446. For a token x::

    s_i   = sigmoid(r_i · x)                              router scores, i = 1 … E (router [E, d])
    T     = top-k of (s_i + b_i)                          the bias b steers *selection* only
    g_i   = γ · s_i / Σ_{j ∈ T} s_j   for i ∈ T           normalised top-k gate weights, γ = routed_scaling_factor
    y     = Σ_{i ∈ T} g_i · FFN_i(x) + FFN_shared(x)      FFN_i(x) = W2_i (silu(W1_i x) ⊙ W3_i x)

After every optimizer step the balance bias moves toward equal load (Moonlight App. C)::

    e_i = (mean_j c_j − c_i) / mean_j c_j                 c_i = tokens routed to expert i in that step
    b_i ← b_i + u · (sign(e_i) − mean_j sign(e_j))        u = moe_bias_update_rate

Subtracting the mean keeps Σ b_i from drifting and does not change the top-k selection. An
optional sequence-wise balance loss (DeepSeek-V3 Eqs. 17–20) is added to the training loss when
``moe_aux_loss_coef`` > 0. The layer is dropless: every token reaches all of its k experts.

Expert weights are 3-D stacks (``w_gate``, ``w_up`` [E, f, d]; ``w_down`` [E, d, f], each
expert stored like an ``nn.Linear`` weight, [out, in]) declared as role ``expert`` in
``muon_roles``, so Muon orthogonalizes each expert's matrix on its own in one batched call; the
router [E, d] is role ``router`` (Muon); the shared experts are one ``SwiGLU`` of width
n_shared * f (DeepSeek's layout), whose matrices are ordinary ``hidden`` weights. The balance
bias is a buffer, not a parameter: no optimizer ever sees it.

Dispatch has no Python loop over experts: the k·N (token, expert) pairs are sorted by expert and
run through a grouped GEMM (``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm``, where the
installed torch runs it on this device and dtype) or, as the portable fallback, one padded
``bmm`` over experts with capacity = the largest expert load. On CPU the groups are padded to a
few distinct sizes, since oneDNN builds a kernel per new GEMM shape (``bucketed_group_sizes``).
The layer calls its ``experts_fn`` (``moe_experts``); expert parallelism (``muonlab.parallel.experts``)
replaces it with an all-to-all dispatch to experts held by other ranks, leaving this module unaware
of torch.distributed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .layers import SwiGLU
from .mup import init_std, output_multiplier

__all__ = [
    "DISPATCH_BACKENDS",
    "MoE",
    "Routing",
    "balance_bias_update",
    "bucketed_group_sizes",
    "compute_dtype",
    "expert_layout",
    "grouped_expert_ffn",
    "grouped_mm_supported",
    "moe_experts",
    "route",
    "routed_scaling_factor",
    "sequence_balance_loss",
]

DISPATCH_BACKENDS = ("auto", "grouped_mm", "padded_bmm")
"""How routed tokens meet their experts: "grouped_mm" (torch's grouped GEMM), "padded_bmm"
(a bmm over [E, max load, d]), or "auto" (grouped_mm where it runs, else padded_bmm)."""


# ---- routing: pure functions ----------------------------------------------------------------------


def routed_scaling_factor(n_experts: int, top_k: int, samples: int = 100_000, seed: int = 0) -> float:
    """Moonlight's gate scaling factor γ by Monte Carlo (arXiv 2502.16982 App. C, Figure 6).

    With logits z ~ N(0, I_E), p = the top_k largest of sigmoid(z), renormalised to sum 1::

        γ = E[ 1 / sqrt(Σ_i p_i²) ]

    If the k experts' outputs were independent with equal RMS, Σ p_i y_i would have RMS
    sqrt(Σ p_i²) · RMS(y); γ restores a dense layer's output RMS. E = 64, k = 6 gives 2.446
    (Moonlight's value); k = 1 gives exactly 1.
    """
    if not (isinstance(n_experts, int) and isinstance(top_k, int) and 1 <= top_k <= n_experts):
        raise ValueError(
            "routed_scaling_factor needs integers 1 <= top_k <= n_experts, "
            f"got n_experts={n_experts!r}, top_k={top_k!r}"
        )
    g = torch.Generator().manual_seed(seed)
    p = torch.sigmoid(torch.randn(samples, n_experts, generator=g, dtype=torch.float64)).topk(top_k, dim=-1).values
    p = p / p.sum(-1, keepdim=True)
    return float(p.square().sum(-1).rsqrt().mean())


@dataclass
class Routing:
    """The router's decision for N tokens: ``scores`` [N, E] (fp32 sigmoid scores), ``experts``
    [N, k] (int64 chosen experts) and ``weights`` [N, k] (fp32 gate weights g)."""

    scores: Tensor
    experts: Tensor
    weights: Tensor


def route(logits: Tensor, bias: Tensor, top_k: int, scale: float) -> Routing:
    """DeepSeek-V3's "noaux_tc" routing: s = sigmoid(logits); the top_k of s + bias are chosen; their
    *unbiased* scores, normalised to sum 1, times ``scale``, are the gate weights.

    logits: [N, E] (computed in fp32); bias: [E]. Gradients flow through the weights into the
    logits; selection is not differentiable.
    """
    scores = torch.sigmoid(logits.float())
    experts = (scores.detach() + bias.float()).topk(top_k, dim=-1).indices
    chosen = scores.gather(1, experts)
    weights = chosen / (chosen.sum(-1, keepdim=True) + 1e-20) * scale
    return Routing(scores, experts, weights)


def balance_bias_update(bias: Tensor, load: Tensor, rate: float) -> Tensor:
    """The aux-loss-free bias step of Moonlight App. C: b + u · (sign(e) − mean(sign(e))).

    ``load`` [E] counts the tokens routed to each expert since the last update; e_i = (mean load −
    load_i) / mean load is positive for an under-loaded expert, whose bias then rises. A step with
    no tokens (all loads zero) leaves the bias unchanged.
    """
    load = load.float()
    violation = (load.mean() - load) / load.mean().clamp_min(1e-12)
    direction = violation.sign()
    return bias + rate * (direction - direction.mean())


def sequence_balance_loss(scores: Tensor, experts: Tensor, batch: int, seq_len: int) -> Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (arXiv 2412.19437 Eqs. 17–20), without α.

    Per sequence of T tokens, with s' = s / Σ_j s_j the scores normalised over all E experts::

        f_i = E / (k T) · #{t : i ∈ TopK_t}      P_i = (1/T) Σ_t s'_{i,t}      L = Σ_i f_i P_i

    averaged over the batch's sequences. scores: [B*T, E]; experts: [B*T, k]. Equals 1 under
    perfectly uniform routing; only P carries a gradient.
    """
    E, k = scores.shape[-1], experts.shape[-1]
    normalised = (scores / scores.sum(-1, keepdim=True)).view(batch, seq_len, E)
    P = normalised.mean(1)  # [B, E]
    hits = torch.zeros(batch, E, device=scores.device, dtype=scores.dtype)
    hits.scatter_add_(1, experts.view(batch, seq_len * k), torch.ones_like(experts, dtype=scores.dtype).view(batch, -1))
    f = hits * (E / (k * seq_len))
    return (f * P).sum(-1).mean()


# ---- expert computation: sort by expert, grouped GEMM ---------------------------------------------


def _grouped_mm() -> Callable[..., Tensor] | None:
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@torch.compiler.disable
@functools.cache
def grouped_mm_supported(device_type: str, dtype: torch.dtype, d_model: int, hidden: int) -> bool:
    """Whether the installed torch runs a grouped GEMM (forward and backward) on this device type and
    dtype for experts of shape [hidden, d_model]. Probed once with a tiny eager call, then cached.

    torch 2.13 runs it on CPU in fp32 and bf16; CUDA builds need bf16 on recent GPUs and aligned
    widths; torch < 2.8 has none.
    """
    mm = _grouped_mm()
    if mm is None:
        return False
    try:
        x = torch.randn(4, d_model, device=device_type, dtype=dtype, requires_grad=True)
        w = torch.randn(2, hidden, d_model, device=device_type, dtype=dtype, requires_grad=True)
        offs = torch.tensor([1, 4], device=device_type, dtype=torch.int32)
        mm(x, w.mT, offs=offs).square().sum().backward()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    return True


def bucketed_group_sizes(counts: Tensor) -> Tensor:
    """Expert row counts rounded up to a multiple of 2^⌊log2(c / 8)⌋ clamped to [8, 64] (0 stays 0).

    oneDNN, behind CPU matmuls, builds a kernel for every new GEMM shape: with per-expert row counts
    that change every step, each per-expert GEMM cost ~650 µs of kernel creation instead of ~40 µs
    (measured, bf16 [M, 256] x [256, 88]). Rounded counts give a few hundred shapes over all steps
    — the kernel cache holds them — for at most 12.5% extra (zero) rows once c ≥ 64.
    """
    step = torch.exp2(torch.floor(torch.log2(counts.clamp_min(8).double() / 8))).long().clamp(8, 64)
    return (counts + step - 1) // step * step


def expert_layout(experts: Tensor, n_experts: int, bucket: bool) -> tuple[Tensor, Tensor]:
    """The expert-grouped row layout of the (token, slot) pairs: ``(slot_of_row, group_sizes)``.

    ``experts`` [N, k] -> ``slot_of_row`` [R]: row r of the layout holds slot s = t*k + j (token t,
    its j-th expert); the rows of expert e are contiguous, in expert order, ``group_sizes[e]`` of
    them, slots in order within a group (a stable sort). Without ``bucket``, R = N*k. With it, each
    group is padded to ``bucketed_group_sizes`` rows that hold the sentinel slot N*k (no token).
    """
    flat = experts.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=n_experts)
    if not bucket:
        return order, counts
    sizes = bucketed_group_sizes(counts)
    expert_of = flat.index_select(0, order)
    rank = torch.arange(flat.numel(), device=flat.device) - (counts.cumsum(0) - counts)[expert_of]
    rows = (sizes.cumsum(0) - sizes)[expert_of] + rank  # the padded row of each slot, in sorted order
    slot_of_row = torch.full((int(sizes.sum()),), flat.numel(), device=flat.device, dtype=order.dtype)
    return slot_of_row.index_copy_(0, rows, order), sizes


def _experts_grouped_mm(xs: Tensor, sizes: Tensor, gate: Tensor, w_gate: Tensor, w_up: Tensor,
                        w_down: Tensor) -> Tensor:
    """Rows xs [R, d] grouped by expert (sizes[e] rows for expert e, in order) -> gated outputs [R, d]."""
    mm = _grouped_mm()
    offs = sizes.cumsum(0).to(torch.int32)
    h = F.silu(mm(xs, w_gate.mT, offs=offs)) * mm(xs, w_up.mT, offs=offs)  # [R, f]
    return mm(h * gate[:, None], w_down.mT, offs=offs)


def _experts_padded_bmm(xs: Tensor, sizes: Tensor, gate: Tensor, w_gate: Tensor, w_up: Tensor,
                        w_down: Tensor) -> Tensor:
    """As ``_experts_grouped_mm``, via one bmm over [E, capacity, d] with capacity = max(sizes)."""
    E, d = sizes.numel(), xs.shape[1]
    capacity = int(sizes.max())
    expert_of_row = torch.repeat_interleave(torch.arange(E, device=xs.device), sizes, output_size=xs.shape[0])
    starts = sizes.cumsum(0) - sizes
    rows = torch.arange(xs.shape[0], device=xs.device)
    slot = expert_of_row * capacity + (rows - starts[expert_of_row])  # row of each xs row in the padded buffer
    padded = xs.new_zeros(E * capacity, d).index_copy(0, slot, xs).view(E, capacity, d)
    padded_gate = gate.new_zeros(E * capacity).index_copy(0, slot, gate).view(E, capacity, 1)
    h = F.silu(torch.bmm(padded, w_gate.mT)) * torch.bmm(padded, w_up.mT)  # [E, capacity, f]
    y = torch.bmm(h * padded_gate, w_down.mT)  # [E, capacity, d]
    return y.view(E * capacity, d).index_select(0, slot)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype expert GEMMs run in for input ``x``: autocast's where it is on, else ``x.dtype`` (torch's
    grouped GEMM is not on autocast's lists, so this follows autocast by hand, as nn.Linear would)."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


def grouped_expert_ffn(xs: Tensor, sizes: Tensor, gate: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                       backend: str = "auto") -> Tensor:
    """Rows ``xs`` [R, d] grouped by expert (``sizes[e]`` rows for expert e, in order), their gate weights
    ``gate`` [R] -> ``gate_r · w_down[e] (silu(w_gate[e] x_r) ⊙ w_up[e] x_r)`` [R, d], in ``xs.dtype``.

    The weights are cast to ``xs.dtype``; ``backend`` is one of ``DISPATCH_BACKENDS`` ("auto": the
    grouped GEMM where it runs on this device and dtype, else the padded bmm).
    """
    if backend not in DISPATCH_BACKENDS:
        raise ValueError(f"unknown MoE dispatch backend {backend!r}; valid: {', '.join(DISPATCH_BACKENDS)}")
    dtype, (_, f, d) = xs.dtype, w_gate.shape
    if backend == "auto":
        # Under torch.compile the compiler's rules for grouped_mm are CUDA's (bf16 only), even on CPU.
        usable = (dtype == torch.bfloat16 or not torch.compiler.is_compiling()) and xs.shape[0] > 0
        backend = "grouped_mm" if usable and grouped_mm_supported(xs.device.type, dtype, d, f) else "padded_bmm"
    experts_fn = _experts_grouped_mm if backend == "grouped_mm" else _experts_padded_bmm
    return experts_fn(xs, sizes, gate.to(dtype), w_gate.to(dtype), w_up.to(dtype), w_down.to(dtype))


def moe_experts(
    x: Tensor, experts: Tensor, weights: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
    backend: str = "auto", bucket: bool | None = None,
) -> Tensor:
    """y_t = Σ_j weights[t, j] · w_down[e] (silu(w_gate[e] x_t) ⊙ w_up[e] x_t), e = experts[t, j].

    x: [N, d]; experts, weights: [N, k]; w_gate, w_up: [E, f, d]; w_down: [E, d, f] -> [N, d]. The
    N·k (token, expert) pairs are laid out by expert (``expert_layout``), their token rows gathered,
    pushed through the ``backend`` (see ``DISPATCH_BACKENDS``) and summed back per token with
    ``index_add``. The gate weight multiplies the hidden activation before w_down (the same by
    linearity; f-wide, not d-wide). ``bucket`` pads the groups to few distinct sizes (default: on
    CPU, see ``bucketed_group_sizes``); padding rows read a zero row appended to x, carry a zero
    gate, and add their zero output into that extra row, which is dropped.
    """
    if backend not in DISPATCH_BACKENDS:
        raise ValueError(f"unknown MoE dispatch backend {backend!r}; valid: {', '.join(DISPATCH_BACKENDS)}")
    N, d = x.shape
    k = experts.shape[1]
    dtype = compute_dtype(x)
    slot_of_row, sizes = expert_layout(experts, w_gate.shape[0], x.device.type == "cpu" if bucket is None else bucket)
    token_of_row = slot_of_row // k  # the sentinel slot N*k maps to token N: the zero row
    xs = torch.cat([x.to(dtype), x.new_zeros(1, d, dtype=dtype)]).index_select(0, token_of_row)
    gate = torch.cat([weights.reshape(-1), weights.new_zeros(1)]).index_select(0, slot_of_row)
    ys = grouped_expert_ffn(xs, sizes, gate, w_gate, w_up, w_down, backend)  # [R, d]
    return ys.new_zeros(N + 1, d).index_add(0, token_of_row, ys)[:N]


# ---- the layer ------------------------------------------------------------------------------------


class MoE(nn.Module):
    """Shared + routed experts with sigmoid top-k routing and aux-loss-free balancing (see the module docstring).

    Hooks used by ``Transformer``: ``init_weights(normal_, std, out_std)``, ``update_balance_bias()``
    (after every optimizer step), ``telemetry()`` (read and reset), and ``aux_loss`` (the weighted
    sequence balance loss of the last training forward, or None).
    """

    muon_roles = {"w_gate": "expert", "w_up": "expert", "w_down": "expert", "router": "router"}
    # Summed over data-parallel ranks before update_balance_bias (muonlab.parallel.sum_step_statistics),
    # so every rank applies the same bias step, computed from the global batch's load.
    data_parallel_sum_buffers = ("step_load",)
    # Summed over ranks right before telemetry() (TELEMETRY_STATISTICS_ATTR), which then describes the global batch.
    data_parallel_sum_telemetry_buffers = ("_seen_load", "_seen_entropy", "_seen_tokens")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.is_moe:
            raise ValueError(f"MoE needs a config with n_routed_experts > 0, got {config.n_routed_experts}")
        E, d, f = config.n_routed_experts, config.d_model, config.expert_ffn_hidden
        assert f is not None
        self.n_experts, self.top_k = E, config.top_k
        self.scale = config.routed_scaling_factor
        self.bias_update_rate = config.moe_bias_update_rate
        self.aux_loss_coef = config.moe_aux_loss_coef
        self.router_multiplier = output_multiplier(config)  # muP: the router is an output weight (models/mup.py)
        self.backend = "auto"  # one of DISPATCH_BACKENDS; tests and benchmarks pin one
        self.bucket: bool | None = None  # pad expert groups to few sizes; None: on CPU only (moe_experts)
        # How routed tokens meet the experts, called like moe_experts; expert parallelism
        # (muonlab.parallel.experts) swaps in an all-to-all dispatch to experts on other ranks.
        self.experts_fn: Callable[..., Tensor] = moe_experts
        self.router = nn.Parameter(torch.empty(E, d))
        self.w_gate = nn.Parameter(torch.empty(E, f, d))
        self.w_up = nn.Parameter(torch.empty(E, f, d))
        self.w_down = nn.Parameter(torch.empty(E, d, f))
        self.shared = SwiGLU(d, config.n_shared_experts * f) if config.n_shared_experts else None
        self.register_buffer("balance_bias", torch.zeros(E))  # persistent: checkpoints resume it
        # Load since the last bias update, and routing statistics since the last telemetry() call.
        # Integer counts, so that model.to(torch.bfloat16) cannot round them.
        self.register_buffer("step_load", torch.zeros(E, dtype=torch.long), persistent=False)
        self.register_buffer("_seen_load", torch.zeros(E, dtype=torch.long), persistent=False)
        self.register_buffer("_seen_tokens", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("_seen_entropy", torch.zeros((), dtype=torch.float64), persistent=False)
        self.aux_loss: Tensor | None = None
        std = init_std(config)
        self.init_weights(lambda w, s: nn.init.normal_(w, 0.0, s), std, std / math.sqrt(2 * config.n_layers))

    @torch.no_grad()
    def init_weights(self, normal_: Callable[[Tensor, float], None], std: float, out_std: float) -> None:
        """Normal(0, std) router and w_gate, w_up; Normal(0, out_std) w_down (it writes into the
        residual stream); zero balance bias and statistics. The shared SwiGLU's Linear layers are
        initialised by their owner (``Transformer.init_weights``) or by nn.Linear's default."""
        normal_(self.router, std)
        normal_(self.w_gate, std)
        normal_(self.w_up, std)
        normal_(self.w_down, out_std)
        for buffer in (self.balance_bias, self.step_load, self._seen_load, self._seen_entropy, self._seen_tokens):
            if not buffer.is_meta:
                buffer.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, T, d_model] -> [B, T, d_model]."""
        B, T, d = x.shape
        flat = x.reshape(B * T, d)
        with torch.autocast(x.device.type, enabled=False):  # router logits in fp32, as DeepSeek-V3
            logits = F.linear(flat.float(), self.router.float())
            if self.router_multiplier != 1.0:
                logits = logits * self.router_multiplier
        routing = route(logits, self.balance_bias, self.top_k, self.scale)
        out = self.experts_fn(flat, routing.experts, routing.weights, self.w_gate, self.w_up, self.w_down,
                              self.backend, self.bucket)
        if self.shared is not None:
            out = out + self.shared(flat)
        self.aux_loss = None
        if self.training:
            self._record(routing)
            if self.aux_loss_coef > 0:
                self.aux_loss = self.aux_loss_coef * sequence_balance_loss(routing.scores, routing.experts, B, T)
        return out.view(B, T, d)

    @torch.no_grad()
    def _record(self, routing: Routing) -> None:
        load = torch.bincount(routing.experts.reshape(-1), minlength=self.n_experts)
        self.step_load += load
        self._seen_load += load
        p = routing.scores / routing.scores.sum(-1, keepdim=True)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1) / math.log(self.n_experts)
        self._seen_entropy += entropy.sum()
        self._seen_tokens += entropy.numel()

    @torch.no_grad()
    def update_balance_bias(self) -> None:
        """Apply ``balance_bias_update`` with the load counted since the last call, then reset the count."""
        self.balance_bias.copy_(balance_bias_update(self.balance_bias, self.step_load, self.bias_update_rate))
        self.step_load.zero_()

    @torch.no_grad()
    def telemetry(self) -> dict[str, float]:
        """Routing statistics over the training forwards since the last call, then reset:

        ``load_max_over_mean`` (max_i c_i / mean_i c_i of the accumulated loads; 1 = balanced, E/k =
        everything on k experts), ``router_entropy`` (mean over tokens of the entropy of s / Σ s,
        divided by log E; 1 = indifferent router), ``bias_abs_mean`` (mean |b_i| now), and
        ``aux_loss`` (the last weighted balance loss) when that loss is on.
        """
        stats = {"bias_abs_mean": float(self.balance_bias.abs().mean())}
        tokens = float(self._seen_tokens)
        if tokens > 0:
            load = self._seen_load.double()
            stats["load_max_over_mean"] = float(load.max() / load.mean())
            stats["router_entropy"] = float(self._seen_entropy) / tokens
        if self.aux_loss is not None:
            stats["aux_loss"] = float(self.aux_loss)
        for buffer in (self._seen_load, self._seen_entropy, self._seen_tokens):
            buffer.zero_()
        return stats
